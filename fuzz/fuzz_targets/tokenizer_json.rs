//! `tokenizer.json` loading: any bytes give a tokenizer (which then
//! encodes and decodes a prompt) or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_glue::TextTokenizer;

fuzz_target!(|data: &[u8]| {
    let path = tessera_fuzz::scratch("tokenizer.json", data);
    if let Ok(tokenizer) = TextTokenizer::from_file(&path) {
        let prompt = "mnli hypothesis: The cat sat. premise: A cat sat on the mat.";
        if let Ok(ids) = tokenizer.encode(prompt, 64) {
            let _ = tokenizer.decode(&ids, true);
        }
    }
});
