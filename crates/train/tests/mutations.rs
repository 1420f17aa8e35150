//! Damaged input never panics: every parser of a user's files (checkpoint
//! files, `config.json`, `tokenizer.json`, PEFT adapter folders, the
//! dataset readers) is given
//! real files with random bytes flipped, inserted or cut off, and must
//! return a value or an error. A short run of what `fuzz/` does for hours
//! (docs/reliability.md).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions unwrap too

use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;
use tessera_glue::{read_file, ReadOptions, Task, TextTokenizer};
use tessera_t5::safetensors::SafeTensors;
use tessera_t5::{T5Config, T5Model};
use tessera_train::checkpoint::{self, MANIFEST_FILE, OPTIMIZER_FILE, STATE_FILE};
use tessera_train::config::RunConfig;
use tessera_train::optim::Optimizer;
use tessera_train::trainer::Trainer;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A checkpoint written by a two-step run of a tiny model.
fn checkpoint_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let layer = format!(
            "steps = 2\nbatch_size = 4\nwarmup_steps = 0\neval_every = 0\noutput = {:?}",
            dir.path().display().to_string()
        );
        let config = RunConfig::resolve(&[layer.parse().unwrap()]).unwrap();
        let train = tessera_train::data::load(&config).unwrap().0;
        let mut t = tessera_train::fresh_trainer(config, &train, None).unwrap();
        t.run(&AtomicBool::new(false), |_| {}).unwrap();
        dir
    })
    .path()
}

fn step_2() -> PathBuf {
    checkpoint::step_dir(&checkpoint_dir().join("checkpoints"), 2)
}

/// Damage done to a file: bytes replaced at (position, byte), one byte
/// inserted, then up to three bytes cut off the end.
#[derive(Debug, Clone)]
struct Mutation {
    edits: Vec<(usize, u8)>,
    insert: Option<(usize, u8)>,
    cut: usize,
}

impl Mutation {
    fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for &(at, b) in &self.edits {
            if !out.is_empty() {
                let i = at % out.len();
                out[i] = b;
            }
        }
        if let Some((at, b)) = self.insert {
            out.insert(at % (out.len() + 1), b);
        }
        out.truncate(out.len().saturating_sub(self.cut % 4));
        out
    }
}

fn mutations() -> impl Strategy<Value = Mutation> {
    (
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        prop::option::of((any::<usize>(), any::<u8>())),
        any::<usize>(),
    )
        .prop_map(|(edits, insert, cut)| Mutation { edits, insert, cut })
}

/// Writes the mutated `original` as `name` in a fresh folder and returns it.
fn damaged(original: &Path, name: &str, m: &Mutation) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(original).unwrap();
    std::fs::write(dir.path().join(name), m.apply(&bytes)).unwrap();
    dir
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn damaged_weights_and_optimizer_state_give_errors(m in mutations()) {
        let weights = repo().join("fixtures/data/models/t5-gated-untied/model.safetensors");
        let dir = damaged(&weights, "model.safetensors", &m);
        if let Ok(file) = SafeTensors::open(&dir.path().join("model.safetensors")) {
            let names: Vec<String> = file.names().map(str::to_owned).collect();
            for n in &names {
                let _ = file.read_f32(n);
            }
        }
        let dir = damaged(&step_2().join(OPTIMIZER_FILE), OPTIMIZER_FILE, &m);
        let state = checkpoint::read_state(&step_2()).unwrap();
        let model = T5Model::load(&step_2()).unwrap();
        let _ = Optimizer::load(&state.config.optimizer_config(), model.params(), &dir.path().join(OPTIMIZER_FILE));
    }

    #[test]
    fn damaged_trainer_state_and_manifest_give_errors(m in mutations()) {
        let dir = damaged(&step_2().join(STATE_FILE), STATE_FILE, &m);
        if let Ok(state) = checkpoint::read_state(dir.path()) {
            let _ = state.config.validate();
        }
        let dir = damaged(&step_2().join(MANIFEST_FILE), MANIFEST_FILE, &m);
        prop_assert!(checkpoint::verify(dir.path()).is_err(), "the other files are missing");
    }

    #[test]
    fn damaged_config_and_tokenizer_give_errors(m in mutations()) {
        let config = repo().join("fixtures/data/models/t5-gated-untied/config.json");
        let dir = damaged(&config, "config.json", &m);
        if let Ok(c) = T5Config::from_file(&dir.path().join("config.json")) {
            let _ = c.num_parameters();
        }
        let tokenizer = repo().join("fixtures/data/tokenizer/tokenizer.json");
        let dir = damaged(&tokenizer, "tokenizer.json", &m);
        if let Ok(t) = TextTokenizer::from_file(&dir.path().join("tokenizer.json")) {
            let _ = t.encode("mnli hypothesis: a premise: b", 16);
        }
    }

    #[test]
    fn damaged_peft_adapter_files_give_errors(m in mutations()) {
        let adapter = repo().join("fixtures/data/lora/gated-all");
        let base = T5Model::load(&repo().join("fixtures/data/models/t5-gated-untied-hf-init")).unwrap();
        for name in [tessera_t5::ADAPTER_CONFIG_FILE, tessera_t5::ADAPTER_WEIGHTS_FILE] {
            let dir = damaged(&adapter.join(name), name, &m);
            let other = if name == tessera_t5::ADAPTER_CONFIG_FILE {
                tessera_t5::ADAPTER_WEIGHTS_FILE
            } else {
                tessera_t5::ADAPTER_CONFIG_FILE
            };
            std::fs::copy(adapter.join(other), dir.path().join(other)).unwrap();
            let mut model = base.clone();
            if model.load_adapter(dir.path()).is_ok() {
                let _ = model.generate(&[&[5, 9, 1]], 2);
            }
        }
    }

    #[test]
    fn damaged_tsv_and_jsonl_give_errors(m in mutations()) {
        let src = tempfile::tempdir().unwrap();
        let tsv = src.path().join("dev.tsv");
        std::fs::write(&tsv, "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n\
            0\t1\t1e\tfiction\t-\t-\t-\t-\tA cat sat.\tA cat rests.\tentailment\tentailment\n").unwrap();
        let jsonl = src.path().join("dev.jsonl");
        std::fs::write(&jsonl, "{\"premise\": \"A cat sat.\", \"hypothesis\": \"It rests.\", \"label\": 0, \"idx\": 0}\n").unwrap();
        for (file, name) in [(&tsv, "dev.tsv"), (&jsonl, "dev.jsonl")] {
            let dir = damaged(file, name, &m);
            let _ = read_file(&dir.path().join(name), Task::mnli(), ReadOptions::default());
        }
    }
}

/// The resume path as a whole: a checkpoint with any one file damaged is
/// refused with the file's name, never resumed from.
#[test]
fn a_checkpoint_with_any_damaged_file_is_refused_by_name() {
    let manifest = checkpoint::read_manifest(&step_2()).unwrap();
    let train = tessera_train::data::load(&checkpoint::read_state(&step_2()).unwrap().config)
        .unwrap()
        .0;
    for file in &manifest.files {
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(step_2()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
        let path = copy.path().join(&file.name);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        let config = checkpoint::read_state(&step_2()).unwrap().config;
        let e = Trainer::resume(copy.path(), config, &train, None, false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(&file.name), "{}: {e}", file.name);
    }
}
