//! Loading does not double the resident size: each tensor is mapped,
//! converted into the model's single f32 buffer and unmapped, so the peak
//! is the model plus one tensor, not the model plus the whole file.
//! (Its own test binary, so no other test shares the process's peak RSS;
//! Linux only, where /proc gives the peak.)
#![cfg(target_os = "linux")]

use tessera_t5::{T5Config, T5Model};

/// A field of /proc/self/status in bytes (Linux).
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn loading_keeps_one_copy_of_the_weights() {
    // flan-t5-small's widths, two layers and a smaller vocabulary: large
    // enough that one tensor is a small part of the model.
    let config = T5Config::tiny_with(|c| {
        (c.vocab_size, c.d_model, c.d_kv, c.d_ff) = (8192, 512, 64, 1024);
        (c.num_heads, c.num_layers) = (6, 2);
    })
    .expect("a valid config");
    let model = T5Model::init(config, 1);
    let model_bytes = model.params().flat().len() as u64 * 4;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("memory-{}", std::process::id()));
    model.save(&dir).expect("save");
    drop(model);
    // Reset the peak-RSS counter (writing 5 to clear_refs). A kernel that
    // refuses it fails the test: it must not pass without measuring.
    std::fs::write("/proc/self/clear_refs", "5")
        .expect("resetting the peak RSS through /proc/self/clear_refs");
    let before = status_bytes("VmRSS:").expect("VmRSS");
    let loaded = T5Model::load(&dir).expect("load");
    let peak = status_bytes("VmHWM:").expect("VmHWM");
    let growth = peak.saturating_sub(before);
    eprintln!("model {model_bytes} bytes, peak growth while loading {growth} bytes");
    assert!(
        growth < model_bytes + model_bytes / 4,
        "loading grew the peak by {growth} bytes for a {model_bytes}-byte model"
    );
    assert_eq!(loaded.params().flat().len() as u64 * 4, model_bytes);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
