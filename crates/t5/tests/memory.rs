//! Loading does not double the resident size: each tensor is mapped,
//! converted into the model's single f32 buffer and unmapped, so the peak
//! is the model plus one tensor, not the model plus the whole file.
//! (Its own test binary, so no other test shares the process's peak RSS;
//! Linux only, where /proc gives the peak.)
#![cfg(target_os = "linux")]

use tessera_t5::{T5Config, T5Model};

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
    // A kernel that cannot reset or report the peak fails the test: it must
    // not pass without measuring.
    let (loaded, growth) = tessera_tensor::memory::peak_growth(|| T5Model::load(&dir))
        .expect("the peak resident size is measured");
    let loaded = loaded.expect("load");
    eprintln!("model {model_bytes} bytes, peak growth while loading {growth} bytes");
    assert!(
        growth < model_bytes + model_bytes / 4,
        "loading grew the peak by {growth} bytes for a {model_bytes}-byte model"
    );
    assert_eq!(loaded.params().flat().len() as u64 * 4, model_bytes);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
