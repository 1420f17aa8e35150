//! `cargo xtask train | eval | generate | export` run as a user runs them, on a tiny
//! random model with the built-in tokenizer: outputs, files, and errors as one
//! line with exit code 1.

// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use tessera_glue::OWN_TOKENIZER_JSON;
use tessera_t5::{T5Config, T5Model};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("TESSERA_THREADS", "1")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The single `error: …` line of a failed run.
fn error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// A checkpoint-like folder: a tiny model, the built-in tokenizer, a trainer file.
fn model_folder(dir: &Path) {
    let config = T5Config::tiny_with(|c| (c.vocab_size, c.d_kv, c.d_ff) = (740, 8, 16));
    T5Model::init(config.unwrap(), 5).save(dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), OWN_TOKENIZER_JSON).unwrap();
    std::fs::write(dir.join("trainer_state.json"), "{}").unwrap();
}

/// Train flags of a two-step run with no warm-up and no evaluation.
const SHORT_RUN: [&str; 8] = [
    "--steps",
    "2",
    "--warmup-steps",
    "0",
    "--batch-size",
    "4",
    "--eval-every",
    "0",
];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn train_writes_a_json_summary_with_the_data_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, json) = (tmp.path().join("run"), tmp.path().join("summary.json"));
    let args = ["--output", s(&out), "--json", s(&json)];
    stdout(&xtask(&[&["train"][..], &SHORT_RUN, &args].concat()));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(summary["steps"], 2);
    let data = &summary["data"];
    assert!(data["rows_read"].as_u64().unwrap() > 0, "{data}");
    assert_eq!(data["skipped_unlabeled"], 0);
    assert!(
        data["sources"].is_object() && data["max_source_length"].is_u64(),
        "{data}"
    );
}

#[test]
fn eval_prints_scores_and_writes_the_json_report() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    model_folder(&model);
    let data = tmp.path().join("dev.jsonl");
    std::fs::write(
        &data,
        "{\"premise\": \"A man sleeps.\", \"hypothesis\": \"A man rests.\", \"label\": 0}\n\
         {\"premise\": \"A dog runs.\", \"hypothesis\": \"A cat sits.\", \"label\": 2}\n\
         {\"premise\": \"It rains.\", \"hypothesis\": \"It is wet.\", \"label\": 1}\n",
    )
    .unwrap();
    let json = tmp.path().join("eval.json");
    let out = xtask(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--batch-size",
        "2",
        "--json",
        s(&json),
    ]);
    let text = stdout(&out);
    assert!(text.starts_with("mnli on "), "{text}");
    assert!(
        text.contains("3 examples") && text.contains("accuracy "),
        "{text}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["examples"], 3);
    assert_eq!(report["predictions"].as_array().unwrap().len(), 3);
    assert!(report["loss"].as_f64().unwrap() > 0.0);
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
}

#[test]
fn generate_prints_one_line_per_prompt_and_export_writes_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    model_folder(&model);
    let args = ["generate", "--model", s(&model), "--max-new-tokens", "3"];
    let out = xtask(&[&args[..], &["first prompt", "a second, longer prompt"]].concat());
    assert_eq!(stdout(&out).lines().count(), 2);
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "one\ntwo\nthree\n").unwrap();
    let out = xtask(&[&args[..], &["--input", s(&prompts)]].concat());
    assert_eq!(stdout(&out).lines().count(), 3);

    let hf = tmp.path().join("hf");
    let out = xtask(&["export", "--checkpoint", s(&model), "--output", s(&hf)]);
    assert!(stdout(&out).starts_with("exported "));
    assert!(hf.join("tokenizer_config.json").is_file());
    assert!(!hf.join("trainer_state.json").exists());
}

#[test]
fn user_mistakes_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let err = error_line(&xtask(&[
        "export",
        "--checkpoint",
        s(&missing),
        "--output",
        s(&tmp.path().join("hf")),
    ]));
    assert!(
        err.contains("--checkpoint") && err.contains("missing"),
        "{err}"
    );
    let err = error_line(&xtask(&["generate", "--model", "./missing", "hi"]));
    assert!(
        err.contains("--model") && err.contains("does not exist"),
        "{err}"
    );
    let model = tmp.path().join("model");
    model_folder(&model);
    let err = error_line(&xtask(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&missing),
        "--json",
        s(&tmp.path().join("x.json")),
    ]));
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn an_offline_hub_download_fails_fast_with_advice() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["generate", "--model", "google/flan-t5-small", "hello"])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HOME", tmp.path())
        .output()
        .unwrap();
    let err = error_line(&out);
    assert!(
        err.contains("cannot download google/flan-t5-small from the Hugging Face Hub"),
        "{err}"
    );
    assert!(err.contains("pass --model /path/to/folder"), "{err}");
}

#[test]
fn a_lora_run_exports_for_peft_evaluates_with_its_adapter_and_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, run) = (tmp.path().join("base"), tmp.path().join("run"));
    model_folder(&base);
    std::fs::remove_file(base.join("trainer_state.json")).unwrap();
    let model = ["train", "--recipe", "quickstart", "--model", s(&base)];
    let lora = [
        "--lora-rank",
        "2",
        "--lora-targets",
        "q,v,o",
        "--output",
        s(&run),
    ];
    let text = stdout(&xtask(&[&model[..], &SHORT_RUN, &lora].concat()));
    assert!(text.contains("report: "), "{text}");
    let hf = run.join("hf");
    assert!(hf.join("adapter_config.json").is_file() && !hf.join("model.safetensors").exists());
    assert!(run.join("report.html").is_file());

    let prompt = "mnli hypothesis: Anna is a pilot. premise: Anna works as a pilot.";
    let adapted = stdout(&xtask(&[
        "generate",
        "--model",
        s(&base),
        "--adapter",
        s(&hf),
        prompt,
    ]));
    let merged = tmp.path().join("merged");
    let step = run.join("checkpoints").join("step-2");
    let args = [
        "export",
        "--checkpoint",
        s(&step),
        "--output",
        s(&merged),
        "--merge",
    ];
    stdout(&xtask(&args));
    assert!(merged.join("model.safetensors").is_file());
    assert_eq!(
        stdout(&xtask(&["generate", "--model", s(&merged), prompt])),
        adapted
    );
    // The checkpoint itself is a model, as a full one is.
    assert_eq!(
        stdout(&xtask(&["generate", "--model", s(&step), prompt])),
        adapted
    );

    // Another base under the checkpoint's adapters is refused, naming both.
    let other = tmp.path().join("other");
    T5Model::init(
        T5Config::tiny_with(|c| (c.vocab_size, c.d_kv, c.d_ff) = (740, 8, 16)).unwrap(),
        6,
    )
    .save(&other)
    .unwrap();
    std::fs::write(other.join("tokenizer.json"), OWN_TOKENIZER_JSON).unwrap();
    let err = error_line(&xtask(&[
        "generate",
        "--model",
        s(&other),
        "--adapter",
        s(&step),
        prompt,
    ]));
    assert!(
        err.contains("--model") && err.contains("fingerprint"),
        "{err}"
    );

    let text = stdout(&xtask(&["report", s(&run)]));
    assert!(text.starts_with("report: "), "{text}");
    let err = error_line(&xtask(&["report", s(&tmp.path().join("nothing"))]));
    assert!(err.contains("no metrics.jsonl"), "{err}");
}
