//! A checkpoint's `trainer_state.json` and `manifest.json`: any bytes give
//! a state (whose configuration is then validated) or an error, and a
//! manifest that reads is verified against the folder without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_train::checkpoint::{self, MANIFEST_FILE, STATE_FILE};

fuzz_target!(|data: &[u8]| {
    let dir = tessera_fuzz::scratch_dir();
    tessera_fuzz::scratch(STATE_FILE, data);
    if let Ok(state) = checkpoint::read_state(dir) {
        if state.config.validate().is_ok() {
            let _ = state.config.schedule().lr(state.config.lr, state.step);
        }
    }
    tessera_fuzz::scratch(MANIFEST_FILE, data);
    let _ = checkpoint::verify(dir);
});
