//! The safetensors reader: any bytes give a file or an error, and every
//! tensor of a file that opens can be read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_t5::safetensors::SafeTensors;

fuzz_target!(|data: &[u8]| {
    let path = tessera_fuzz::scratch("model.safetensors", data);
    if let Ok(file) = SafeTensors::open(&path) {
        let names: Vec<String> = file.names().map(str::to_owned).collect();
        for name in &names {
            let _ = file.read_f32(name);
            let _ = file.read_i64(name);
        }
    }
});
