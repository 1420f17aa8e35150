//! Evaluation on the real MNLI samples of `../shared/data` holds to
//! committed reference outputs: the generated answers of every row must be
//! identical and the loss within 1e-5.
//!
//! The references (`tests/data/mnli_eval_reference.json`) were written by
//! the padded model that came before padding-free execution
//! (`TESSERA_BLESS=1 cargo test -p tessera-train --test real_eval -- --ignored`),
//! so the test pins the change of layout to "no change in results". The
//! model is flan-t5-small's shape initialised from seed 0: no download, and
//! its answers are arbitrary words, which makes a wrong attention mask or a
//! row mixed with another visible at once.

use std::path::{Path, PathBuf};
use tessera_fixtures::shared_data;
use tessera_glue::{read_file, ReadOptions, Task, TextTokenizer};
use tessera_t5::{T5Config, T5Model};
use tessera_train::eval::{EvalOptions, Evaluator};

fn reference_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mnli_eval_reference.json")
}

/// What one split's evaluation gave.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SplitReference {
    split: String,
    loss: f64,
    target_tokens: usize,
    generations: Vec<String>,
}

fn evaluate_split(model: &T5Model, tokenizer: &TextTokenizer, split: &str) -> SplitReference {
    let data = read_file(
        &shared_data(&format!("mnli-sample/{split}.jsonl")),
        Task::mnli(),
        ReadOptions::default(),
    )
    .expect("the shared MNLI sample reads");
    let options = EvalOptions {
        batch_size: 16,
        ..EvalOptions::default()
    };
    let report = Evaluator::new(tokenizer, &data, options)
        .expect("the sample tokenizes")
        .run(model)
        .expect("evaluation runs");
    SplitReference {
        split: split.to_string(),
        loss: report.loss.expect("every sample row is labelled"),
        target_tokens: report.target_tokens,
        generations: report.generations,
    }
}

#[test]
#[ignore = "needs ../shared/data"]
fn evaluation_matches_the_padded_reference_on_real_mnli() {
    let tokenizer = TextTokenizer::from_file(&shared_data("t5-tokenizer/tokenizer.json"))
        .expect("the shared T5 tokenizer loads");
    let config = T5Config::preset("flan-t5-small").expect("a known preset");
    let model = T5Model::init(config, 0);
    let got: Vec<SplitReference> = ["validation_mismatched", "validation_matched"]
        .iter()
        .map(|split| evaluate_split(&model, &tokenizer, split))
        .collect();
    if std::env::var_os("TESSERA_BLESS").is_some() {
        let json = serde_json::to_string_pretty(&got).expect("serialises");
        std::fs::write(reference_file(), json + "\n").expect("reference written");
        return;
    }
    let text = std::fs::read_to_string(reference_file()).expect("the reference is committed");
    let want: Vec<SplitReference> = serde_json::from_str(&text).expect("the reference parses");
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.split, w.split);
        assert_eq!(g.target_tokens, w.target_tokens, "{}", g.split);
        let rel = (g.loss - w.loss).abs() / w.loss;
        assert!(rel <= 1e-5, "{}: loss {} vs {}", g.split, g.loss, w.loss);
        let differing: Vec<usize> = (0..w.generations.len())
            .filter(|&i| g.generations.get(i) != w.generations.get(i))
            .collect();
        assert!(
            differing.is_empty() && g.generations.len() == w.generations.len(),
            "{}: rows {differing:?} generate differently",
            g.split
        );
    }
}
