//! Real-data checks against `../shared/data` (the real T5 tokenizer and
//! 1,000-row MNLI validation samples). `#[ignore]`: CI runs them with
//! `--ignored` when the folder exists; nothing from it is in the repository.

use tessera_fixtures::shared_data;
use tessera_glue::{
    encode_dataset, read_file, Dataset, Label, Lengths, ReadOptions, Task, TextTokenizer,
};

fn t5() -> TextTokenizer {
    TextTokenizer::from_file(&shared_data("t5-tokenizer/tokenizer.json"))
        .expect("the shared T5 tokenizer loads")
}

fn read(rel: &str) -> Dataset {
    read_file(&shared_data(rel), Task::mnli(), ReadOptions::default())
        .expect("the shared MNLI sample reads")
}

#[test]
#[ignore = "needs ../shared/data"]
fn t5_token_ids_match_python_tokenizers() {
    // Expected ids from Python `tokenizers` 0.23.3:
    //   Tokenizer.from_file(".../t5-tokenizer/tokenizer.json").encode(text).ids
    // (and with enable_truncation(8) for the truncated case).
    let tk = t5();
    let prompt = "mnli hypothesis: You are not able to bring it with you . premise: \
                  You ca n't take it with you -- neither can I , unfortunately .";
    let cases: [(&str, usize, &[u32]); 6] = [
        (
            prompt,
            512,
            &[
                3, 51, 29, 40, 23, 22455, 10, 148, 33, 59, 3, 179, 12, 830, 34, 28, 25, 3, 5, 3,
                17398, 10, 148, 212, 3, 29, 31, 17, 240, 34, 28, 25, 1636, 7598, 54, 27, 3, 6,
                12050, 3, 5, 1,
            ],
        ),
        (prompt, 8, &[3, 51, 29, 40, 23, 22455, 10, 1]),
        ("entailment", 128, &[3, 35, 5756, 297, 1]),
        ("neutral", 128, &[7163, 1]),
        ("contradiction", 128, &[27252, 1]),
        (
            "Héllo  wörld — “quotes” ½",
            128,
            &[
                454, 154, 195, 32, 3, 210, 4446, 40, 26, 3, 318, 105, 8270, 15, 7, 153, 209, 2,
                357, 1,
            ],
        ),
    ];
    for (text, max_len, want) in cases {
        assert_eq!(tk.encode(text, max_len).unwrap(), want, "{text}");
    }
    assert_eq!((tk.pad_id(), tk.eos_id(), tk.vocab_size()), (0, 1, 32100));
}

#[test]
#[ignore = "needs ../shared/data"]
fn mnli_sample_tsv_and_jsonl_agree() {
    for split in ["validation_matched", "validation_mismatched"] {
        let tsv = read(&format!("mnli-sample/{split}.tsv"));
        let jsonl = read(&format!("mnli-sample/{split}.jsonl"));
        assert_eq!((tsv.len(), jsonl.len()), (1000, 1000), "{split}");
        assert_eq!((tsv.skipped_unlabeled, jsonl.skipped_unlabeled), (0, 0));
        for (a, b) in tsv.examples.iter().zip(&jsonl.examples) {
            assert_eq!(
                (&a.texts, &a.label),
                (&b.texts, &b.label),
                "{split} line {}",
                a.line
            );
        }
    }
    let mismatched = read("mnli-sample/validation_mismatched.jsonl");
    let count = |c| {
        mismatched
            .examples
            .iter()
            .filter(|e| e.label == Label::Class(c))
            .count()
    };
    assert_eq!((count(0), count(1), count(2)), (346, 319, 335));
}

#[test]
#[ignore = "needs ../shared/data"]
fn mnli_sample_prompts_tokenize_like_python() {
    // Python `tokenizers` 0.23.3 with enable_truncation(512), prompts
    // f"mnli hypothesis: {hypothesis} premise: {premise}" of all 1,000 rows of
    // validation_mismatched.jsonl: 57,649 tokens, id sum 136,202,415, longest
    // 274, and the rolling hash h = (h*31 + id) mod (2^61 - 1) over all ids.
    let data = read("mnli-sample/validation_mismatched.jsonl");
    let enc = encode_dataset(&t5(), &data, Lengths::default()).unwrap();
    let ids = || {
        enc.examples
            .iter()
            .flat_map(|e| e.input_ids.iter().map(|&i| u64::from(i)))
    };
    assert_eq!(ids().count(), 57_649);
    assert_eq!(ids().sum::<u64>(), 136_202_415);
    assert_eq!(
        enc.examples.iter().map(|e| e.input_ids.len()).max(),
        Some(274)
    );
    let modulus = (1u64 << 61) - 1;
    let hash = ids().fold(0u64, |h, id| {
        ((u128::from(h) * 31 + u128::from(id)) % u128::from(modulus)) as u64
    });
    assert_eq!(hash, 1_870_836_276_192_994_103);
    assert_eq!(enc.sources.truncated, 0);
}
