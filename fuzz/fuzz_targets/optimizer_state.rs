//! `optimizer.safetensors`: any bytes give an AdamW state that fits a small
//! model or an error naming what does not fit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tessera_t5::{ParamStore, T5Config, T5Model};
use tessera_train::optim::{Optimizer, OptimizerConfig};

/// A one-layer T5 small enough that its state file is a few kilobytes.
fn params() -> &'static ParamStore {
    static PARAMS: OnceLock<ParamStore> = OnceLock::new();
    PARAMS.get_or_init(|| {
        let mut c = T5Config::preset("flan-t5-small").expect("a known preset");
        c.vocab_size = 32;
        c.d_model = 8;
        c.d_kv = 4;
        c.d_ff = 8;
        c.num_heads = 2;
        c.num_layers = 1;
        c.num_decoder_layers = Some(1);
        T5Model::zeros(c).params().clone()
    })
}

fuzz_target!(|data: &[u8]| {
    let path = tessera_fuzz::scratch("optimizer.safetensors", data);
    let _ = Optimizer::load(&OptimizerConfig::default(), params(), &path);
});
