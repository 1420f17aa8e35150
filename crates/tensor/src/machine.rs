//! What machine a run measured itself on, for its records.

/// The CPU's model name (`model name` of `/proc/cpuinfo`, e.g. "AMD EPYC"),
/// or `None` where that cannot be read.
pub fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("model name"))?;
    let (_, name) = line.split_once(':')?;
    Some(name.trim().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cpu_model_is_read_on_linux() {
        let name = super::cpu_model();
        assert_eq!(name.is_some(), cfg!(target_os = "linux"));
        assert!(name.is_none_or(|n| !n.is_empty() && !n.contains('\n')));
    }
}
