//! `cargo xtask fixtures`: regenerates the PyTorch reference fixtures.
//!
//! Runs `python3 fixtures/generate.py`, which needs PyTorch, `transformers`
//! and friends (pinned in fixtures/requirements.txt). The generator writes
//! to a temporary folder and swaps it in at the end, so an interrupted run
//! leaves the previous fixtures intact. CI never runs this: the generated
//! files are committed.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Python modules the generator imports, with the pip package that provides each.
const MODULES: &[(&str, &str)] = &[
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("tokenizers", "tokenizers"),
    ("safetensors", "safetensors"),
    ("sentencepiece", "sentencepiece"),
    ("google.protobuf", "protobuf"),
    ("numpy", "numpy"),
    ("peft", "peft"),
];

/// Options of `cargo xtask fixtures`.
#[derive(clap::Args)]
pub struct Args {
    /// Folder to write the fixtures to (default: fixtures/data of this repository).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The Python interpreter to run.
    #[arg(long, default_value = "python3", value_name = "PYTHON")]
    python: String,
}

/// Checks the Python environment, then runs the generator.
pub fn run(args: Args) -> Result<()> {
    let root = repo_root();
    let script = root.join("fixtures/generate.py");
    if !script.is_file() {
        bail!("{} is missing", script.display());
    }
    check_python(&args.python)?;
    let mut cmd = Command::new(&args.python);
    cmd.arg(&script);
    if let Some(out) = &args.out {
        cmd.arg("--out").arg(out);
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", args.python))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

/// The repository root (xtask lives one level below it).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Fails with one sentence naming what to install if python or a module is missing.
fn check_python(python: &str) -> Result<()> {
    let probe = MODULES
        .iter()
        .map(|(module, package)| {
            format!("try:\n import {module}\nexcept ImportError:\n missing.append('{package}')\n")
        })
        .collect::<String>();
    let code = format!("missing = []\n{probe}print(' '.join(missing))");
    let output = Command::new(python)
        .arg("-c")
        .arg(code)
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run `{python}` ({e}); install Python 3 and then \
                 `pip install -r fixtures/requirements.txt`"
            )
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("`{python}` does not run: {}", first.trim());
    }
    let missing = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !missing.is_empty() {
        bail!(
            "`{python}` lacks the Python packages {missing}; run \
             `pip install -r fixtures/requirements.txt` (exact versions) or `pip install {missing}`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_python_names_what_to_install() {
        let err = check_python("/nonexistent/python3")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot run `/nonexistent/python3`"),
            "{err}"
        );
        assert!(
            err.contains("pip install -r fixtures/requirements.txt"),
            "{err}"
        );
    }

    #[test]
    fn generator_script_is_where_the_command_looks() {
        assert!(repo_root().join("fixtures/generate.py").is_file());
        assert!(repo_root().join("fixtures/requirements.txt").is_file());
    }
}
