//! The built-in tokenizer is the fixture's, and encodes and decodes as
//! Python `tokenizers` does on the fixture's 16 reference cases.

use tessera_glue::{TextTokenizer, OWN_TOKENIZER_JSON};

fn meta() -> serde_json::Value {
    let path = tessera_fixtures::data_dir().join("tokenizer/meta.json");
    let text = std::fs::read_to_string(&path).expect("the tokenizer fixture's meta.json");
    serde_json::from_str(&text).expect("meta.json is JSON")
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).expect("a list of ids")
}

#[test]
fn the_built_in_tokenizer_is_the_fixture() {
    let fixture = tessera_fixtures::data_dir().join("tokenizer/tokenizer.json");
    let fixture = std::fs::read_to_string(fixture).expect("the fixture's tokenizer.json");
    assert!(
        fixture == OWN_TOKENIZER_JSON,
        "crates/glue/assets/tokenizer.json differs from fixtures/data/tokenizer/tokenizer.json: copy the regenerated fixture over the asset"
    );
}

#[test]
fn the_built_in_tokenizer_matches_python_tokenizers() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, OWN_TOKENIZER_JSON).expect("write the tokenizer");
    let tokenizer = TextTokenizer::from_file(&path).expect("the built-in tokenizer loads");
    let meta = meta();
    let cases = meta["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 16);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        assert_eq!(
            tokenizer.encode(text, 512).expect("encode"),
            want,
            "{text:?}"
        );
        let cut = ids(&case["ids_truncated_8"]);
        assert_eq!(
            tokenizer.encode(text, 8).expect("encode"),
            cut,
            "{text:?} cut at 8"
        );
        let decoded = tokenizer.decode(&want, true).expect("decode");
        assert_eq!(
            decoded,
            case["decoded"].as_str().expect("decoded"),
            "{text:?}"
        );
    }
}
