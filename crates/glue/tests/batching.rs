//! Tokenization, labels and truncation, the samplers and the checkpointable
//! cursor, on a tokenizer the tests build.

mod common;

use common::{id, tiny_tokenizer};
use tessera_glue::loader::epoch_plan;
use tessera_glue::{
    encode_dataset, Cursor, Dataset, EncodedDataset, Example, Label, Lengths, Loader, LoaderConfig,
    Order, Source, Split, Task, TextTokenizer,
};

fn dataset(rows: &[(&str, &str, Label)]) -> Dataset {
    let mut data = Source::NliSynthetic
        .load(Task::mnli(), Split::Validation, Default::default())
        .expect("synthetic data");
    data.examples = rows
        .iter()
        .enumerate()
        .map(|(i, (h, p, l))| Example {
            line: i + 1,
            idx: Some(i as i64),
            texts: vec![h.to_string(), p.to_string()],
            label: l.clone(),
        })
        .collect();
    data
}

#[test]
fn prompt_ids_are_the_pieces_plus_eos() {
    let tk = tiny_tokenizer();
    let ids = tk
        .encode(
            "mnli hypothesis: A man sleeps. premise: A man is awake.",
            512,
        )
        .unwrap();
    let want: Vec<u32> = [
        "▁mnli",
        "▁hypothesis",
        ":",
        "▁A",
        "▁man",
        "▁sleeps",
        ".",
        "▁premise",
        ":",
        "▁A",
        "▁man",
        "▁is",
        "▁awake",
        ".",
    ]
    .iter()
    .map(|p| id(p))
    .chain([1])
    .collect();
    assert_eq!(ids, want);
    // Unknown words are spelled out by character pieces.
    assert_eq!(
        tk.encode("cab", 8).unwrap(),
        vec![id("▁"), id("c"), id("a"), id("b"), 1]
    );
    assert_eq!((tk.pad_id(), tk.eos_id()), (0, 1));
    assert_eq!(
        tk.decode(&ids, true).unwrap(),
        "mnli hypothesis: A man sleeps. premise: A man is awake."
    );
}

#[test]
fn tokenizer_json_round_trip_gives_the_same_ids() {
    let tk = tiny_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tk.inner().save(&path, false).unwrap();
    let loaded = TextTokenizer::from_file(dir.path()).unwrap();
    let text = "mnli hypothesis: A  man   sleeps. premise: cab";
    assert_eq!(
        loaded.encode(text, 64).unwrap(),
        tk.encode(text, 64).unwrap()
    );
    // The regex normalizer folds runs of spaces.
    assert_eq!(
        tk.encode("A  man", 8).unwrap(),
        tk.encode("A man", 8).unwrap()
    );
    let e = TextTokenizer::from_file(&dir.path().join("nope.json")).unwrap_err();
    assert!(e.to_string().contains("nope.json: file not found"), "{e}");
    std::fs::write(&path, "{}").unwrap();
    let e = TextTokenizer::from_file(&path).unwrap_err().to_string();
    assert!(
        e.starts_with("tokenizer ") && e.contains("cannot load"),
        "{e}"
    );
}

/// The error of loading the built-in tokenizer with `damage` done to its JSON.
fn damaged_tokenizer_error(damage: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_str(tessera_glue::OWN_TOKENIZER_JSON)
        .expect("the built-in tokenizer is JSON");
    damage(&mut json);
    std::fs::write(&path, json.to_string()).expect("write the damaged tokenizer");
    let e = TextTokenizer::from_file(&path)
        .expect_err("a damaged tokenizer is refused")
        .to_string();
    assert!(e.contains("tokenizer.json") && e.contains("damaged"), "{e}");
    e
}

/// Regression (found by the mutation pass, tests/mutations.rs in train):
/// `tokenizers` 0.22 panics on a `precompiled_charsmap` whose base64 has a
/// 6-bit remainder; loading such a file is an error naming it, not a panic.
#[test]
fn damaged_precompiled_charsmap_is_an_error_not_a_panic() {
    damaged_tokenizer_error(|json| {
        json["normalizer"] =
            serde_json::json!({"type": "Precompiled", "precompiled_charsmap": "ALwCA"});
    });
}

/// Regression (found by `cargo fuzz run tokenizer_json`): `tokenizers` 0.22
/// loads a post-processor whose template names a special token it does
/// not define, then panics at the first encode; tessera refuses the file
/// when it loads, naming it, instead of panicking mid-run.
#[test]
fn a_template_naming_an_undefined_special_token_is_refused_at_load() {
    damaged_tokenizer_error(|json| {
        json["post_processor"]["single"][1]["SpecialToken"]["id"] = "</r>".into();
    });
}

/// Regression (found by `cargo fuzz run tokenizer_json`): `tokenizers`
/// builds a trie one node per byte of each Unigram piece and frees it
/// recursively, so a damaged file with a piece of 100 kB overflowed the
/// stack (a crash, not even a panic); tessera refuses it first.
#[test]
fn an_overlong_vocabulary_piece_is_refused_before_it_can_overflow_the_stack() {
    let e = damaged_tokenizer_error(|json| {
        json["model"]["vocab"][5][0] = "a".repeat(100_000).into();
    });
    assert!(e.contains("100000 bytes"), "{e}");
}

#[test]
fn truncation_keeps_eos_and_rejects_impossible_lengths() {
    let tk = tiny_tokenizer();
    let ids = tk.encode("mnli hypothesis: A man sleeps.", 4).unwrap();
    assert_eq!(ids, vec![id("▁mnli"), id("▁hypothesis"), id(":"), 1]);
    let e = tk.encode("A", 1).unwrap_err().to_string();
    assert!(e.contains("maximum length of 1 leaves no room"), "{e}");
}

#[test]
fn labels_are_target_plus_eos_and_sources_are_cut_keeping_eos() {
    let data = dataset(&[
        ("A man sleeps.", "A man is awake.", Label::Class(2)),
        ("A man.", "A man.", Label::Missing),
    ]);
    let tk = tiny_tokenizer();
    let enc = encode_dataset(&tk, &data, Lengths::default()).unwrap();
    assert_eq!(enc.examples[0].labels, vec![id("▁contradiction"), 1]);
    // The unlabelled row has no target.
    assert!(enc.examples[1].labels.is_empty());
    let short = encode_dataset(
        &tk,
        &data,
        Lengths {
            source: 4,
            target: 4,
        },
    )
    .unwrap();
    assert_eq!(short.sources.truncated, 2);
    assert!(short
        .examples
        .iter()
        .all(|e| e.input_ids.len() == 4 && e.input_ids[3] == 1));
}

fn synthetic(split: Split, rows: usize) -> EncodedDataset {
    let mut data = Source::NliSynthetic
        .load(Task::mnli(), split, Default::default())
        .expect("synthetic data");
    data.examples.truncate(rows);
    encode_dataset(&tiny_tokenizer(), &data, Lengths::default()).expect("encodes")
}

fn config(order: Order, batch_size: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        order,
        seed: 17,
        drop_last: false,
    }
}

#[test]
fn parallel_encoding_equals_one_by_one() {
    let data = Source::NliSynthetic
        .load(Task::mnli(), Split::Validation, Default::default())
        .unwrap();
    let tk = tiny_tokenizer();
    let enc = encode_dataset(&tk, &data, Lengths::default()).unwrap();
    for (ex, got) in data.examples.iter().zip(&enc.examples).step_by(37) {
        assert_eq!(
            got.input_ids,
            tk.encode(&Task::mnli().source_text(ex), 512).unwrap()
        );
    }
}

#[test]
fn sequential_order_is_file_order() {
    let enc = synthetic(Split::Validation, 10);
    let plan = epoch_plan(&enc, &config(Order::Sequential, 4), 3);
    assert_eq!(plan, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
    let mut drop = config(Order::Sequential, 4);
    drop.drop_last = true;
    assert_eq!(epoch_plan(&enc, &drop, 0).len(), 2);
}

#[test]
fn shuffling_is_seeded_and_covers_every_row_once() {
    let enc = synthetic(Split::Validation, 100);
    for order in [Order::Shuffled, Order::LengthBucketed] {
        let cfg = config(order, 8);
        let a = epoch_plan(&enc, &cfg, 0);
        assert_eq!(a, epoch_plan(&enc, &cfg, 0), "{order:?}");
        assert_ne!(a, epoch_plan(&enc, &cfg, 1), "{order:?}");
        assert_ne!(
            a,
            epoch_plan(&enc, &LoaderConfig { seed: 18, ..cfg }, 0),
            "{order:?}"
        );
        let mut rows: Vec<usize> = a.concat();
        rows.sort_unstable();
        assert_eq!(rows, (0..100).collect::<Vec<_>>(), "{order:?}");
    }
}

#[test]
fn length_bucketing_batches_rows_of_similar_length() {
    let enc = synthetic(Split::Train, 2000);
    // The pad tokens a batch padded to its longest source would hold.
    let padded = |order| -> usize {
        epoch_plan(&enc, &config(order, 16), 0)
            .iter()
            .map(|rows| {
                let lens: Vec<usize> = rows
                    .iter()
                    .map(|&r| enc.examples[r].input_ids.len())
                    .collect();
                lens.iter().max().unwrap_or(&0) * lens.len() - lens.iter().sum::<usize>()
            })
            .sum()
    };
    let (shuffled, bucketed) = (padded(Order::Shuffled), padded(Order::LengthBucketed));
    assert!(
        bucketed * 3 < shuffled,
        "bucketed {bucketed} vs shuffled {shuffled}"
    );
}

#[test]
fn a_restored_cursor_continues_the_same_stream() {
    let enc = synthetic(Split::Validation, 50);
    let cfg = config(Order::Shuffled, 8); // 7 batches per epoch
    let mut straight = Loader::new(enc.clone(), cfg).unwrap();
    let all: Vec<Vec<usize>> = (0..20).map(|_| straight.next_batch()).collect();
    assert_eq!(straight.cursor(), Cursor { epoch: 2, batch: 6 });

    let mut first = Loader::new(enc.clone(), cfg).unwrap();
    for _ in 0..9 {
        first.next_batch();
    }
    let saved = serde_json::to_string(&first.cursor()).unwrap();
    assert_eq!(saved, r#"{"epoch":1,"batch":2}"#);
    let mut resumed = Loader::new(enc.clone(), cfg).unwrap();
    resumed.seek(serde_json::from_str(&saved).unwrap()).unwrap();
    let rest: Vec<Vec<usize>> = (9..20).map(|_| resumed.next_batch()).collect();
    assert_eq!(rest, all[9..]);
    let e = resumed
        .seek(Cursor {
            epoch: 0,
            batch: 99,
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("batch 99 but an epoch has only 7 batches"),
        "{e}"
    );
}

#[test]
fn loader_rejects_bad_settings() {
    let enc = synthetic(Split::Validation, 5);
    assert!(Loader::new(enc.clone(), config(Order::Sequential, 0)).is_err());
    let mut cfg = config(Order::Sequential, 8);
    cfg.drop_last = true;
    let e = Loader::new(enc, cfg).unwrap_err().to_string();
    assert!(e.contains("5 rows, too few for one batch of 8"), "{e}");
}
