//! `config.json`: any text gives a validated config or an error, and what
//! a valid config computes (sizes, FLOPs, its JSON) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_t5::T5Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = T5Config::from_json(text, "config.json") {
        let _ = config.num_parameters();
        let _ = config.forward_flops(&[7, 1], &[2, 2]);
        let again = T5Config::from_json(&config.to_json(), "again");
        assert!(again.is_ok(), "a valid config's JSON reads back");
    }
});
