//! Export of a training checkpoint as a Hugging Face model folder that
//! `transformers` loads with `AutoModelForSeq2SeqLM` and `AutoTokenizer`.
//!
//! A checkpoint folder holds `config.json` and the weights (written by
//! [`T5Model::save`]), `tokenizer.json` (and `spiece.model` when the source
//! model had one), and the trainer's own files (`optimizer.safetensors`,
//! `trainer_state.json`, …), which are not exported. The export holds:
//! - `config.json`, `generation_config.json` and `model.safetensors` (shards
//!   and an index above 5 GB): the weights are loaded, checked (names, shapes,
//!   finite values) and written again, so the peak memory is the model's f32
//!   size;
//! - `tokenizer.json` and `spiece.model` (if present), copied;
//! - `tokenizer_config.json` and `special_tokens_map.json`, written for
//!   `transformers`' `T5Tokenizer`: `<pad>`/`</s>`/`<unk>`, the
//!   `<extra_id_N>` sentinels the vocabulary has, `model_max_length` 512.
//!
//! A LoRA checkpoint exports as a PEFT adapter folder instead
//! (`adapter_config.json` naming the base, `adapter_model.safetensors`, the
//! tokenizer files), which `PeftModel.from_pretrained(base, folder)` loads;
//! or, merged, as a whole model folder as above.
//!
//! A checkpoint with a manifest is verified against it first. The folder is
//! built under a staging name beside `output`, fsynced and renamed into
//! place ([`tessera_t5::folder`]), so a reader never sees half an export. An existing `output`
//! is replaced only if it is empty or a previous export (it holds nothing but
//! the files an export writes); any other folder is refused, so an export
//! never deletes a checkpoint or unrelated files.

use crate::checkpoint::CheckpointKind;
use crate::error::{Result, TrainError};
use crate::model_source::load_adapted;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use tessera_glue::TextTokenizer;
use tessera_t5::folder::{self, Staging};
use tessera_t5::safetensors::StoredDType;
use tessera_t5::{
    T5Model, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, DEFAULT_MAX_SHARD_BYTES, INDEX_FILE,
    WEIGHTS_FILE,
};

/// The tokenizer file a checkpoint must hold.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The SentencePiece model, exported when the checkpoint has one.
pub const SPIECE_FILE: &str = "spiece.model";
/// The longest input `transformers` should feed the model (T5's 512).
pub const MODEL_MAX_LENGTH: usize = 512;

/// The files an export writes, besides weight shards `model-NNNNN-of-NNNNN.safetensors`.
const EXPORT_FILES: [&str; 10] = [
    "config.json",
    "generation_config.json",
    WEIGHTS_FILE,
    INDEX_FILE,
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    TOKENIZER_FILE,
    SPIECE_FILE,
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Writes the Hugging Face export of `checkpoint` to `output` (see the module docs).
pub fn export(checkpoint: &Path, output: &Path) -> Result<()> {
    export_as(checkpoint, output, StoredDType::F32, false)
}

/// [`export`] with the weights stored as `dtype` (F32, F16 or BF16): half
/// the file size in 16 bits, which `transformers` loads as it loads the
/// Hub's bf16/fp16 checkpoints. A LoRA checkpoint exports as a PEFT adapter
/// folder (its base named in `adapter_config.json`), or with `merge` as a
/// whole model with the adapters merged into the weights (in f32, then
/// stored as `dtype`).
pub fn export_as(checkpoint: &Path, output: &Path, dtype: StoredDType, merge: bool) -> Result<()> {
    if !checkpoint.is_dir() {
        return Err(TrainError::setting(
            "--checkpoint",
            format!("{} is not a folder", checkpoint.display()),
        ));
    }
    check_output(checkpoint, output)?;
    let tokenizer_file = checkpoint.join(TOKENIZER_FILE);
    if !tokenizer_file.is_file() {
        return Err(TrainError::setting(
            "--checkpoint",
            format!("{} has no {TOKENIZER_FILE}", checkpoint.display()),
        ));
    }
    let manifest = match checkpoint.join(crate::checkpoint::MANIFEST_FILE).is_file() {
        true => Some(crate::checkpoint::verify(checkpoint)?),
        false => None,
    };
    let tokenizer = TextTokenizer::from_file(&tokenizer_file)?;
    let (mut model, base) = match manifest {
        Some(m) if m.kind == CheckpointKind::Adapter => load_adapted(checkpoint, m.base)?,
        _ => (T5Model::load(checkpoint)?, None),
    };
    if merge {
        model.merge_lora()?;
    }
    folder::build(output, |staging| {
        match (&base, merge) {
            (Some(base), false) => model.write_adapter_into(staging, &base.model)?,
            _ => model.write_into(staging, DEFAULT_MAX_SHARD_BYTES, dtype)?,
        }
        build(&tokenizer, checkpoint, staging)
    })
    .map(drop)
}

/// Writes the export's other files into the folder being built.
fn build(tokenizer: &TextTokenizer, checkpoint: &Path, staging: &mut Staging) -> Result<()> {
    staging.copy(&checkpoint.join(TOKENIZER_FILE), TOKENIZER_FILE)?;
    let spiece = checkpoint.join(SPIECE_FILE);
    if spiece.is_file() {
        staging.copy(&spiece, SPIECE_FILE)?;
    }
    let (config, special) = tokenizer_configs(tokenizer);
    write_json(staging, "tokenizer_config.json", &config)?;
    write_json(staging, "special_tokens_map.json", &special)
}

/// `tokenizer_config.json` and `special_tokens_map.json` for `tokenizer`.
pub fn tokenizer_configs(tokenizer: &TextTokenizer) -> (Value, Value) {
    let inner = tokenizer.inner();
    let sentinels: Vec<String> = (0..)
        .map(|i| format!("<extra_id_{i}>"))
        .take_while(|t| inner.token_to_id(t).is_some())
        .collect();
    let mut special = json!({"eos_token": "</s>", "pad_token": "<pad>"});
    if inner.token_to_id("<unk>").is_some() {
        special["unk_token"] = "<unk>".into();
    }
    special["additional_special_tokens"] = json!(sentinels);
    let mut config = special.clone();
    config["tokenizer_class"] = "T5Tokenizer".into();
    config["extra_ids"] = sentinels.len().into();
    config["model_max_length"] = MODEL_MAX_LENGTH.into();
    config["clean_up_tokenization_spaces"] = false.into();
    (config, special)
}

/// Refuses an `output` that is the checkpoint, a file, or a folder with
/// anything but export files in it.
fn check_output(checkpoint: &Path, output: &Path) -> Result<()> {
    let refuse = |reason: String| Err(TrainError::setting("--output", reason));
    if !output.exists() {
        return Ok(());
    }
    if !output.is_dir() {
        return refuse(format!("{} is a file, not a folder", output.display()));
    }
    let same = fs::canonicalize(output).ok() == fs::canonicalize(checkpoint).ok();
    if same {
        return refuse(format!("{} is the checkpoint itself", output.display()));
    }
    let entries = fs::read_dir(output).map_err(|e| TrainError::io("cannot read", output, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io("cannot read", output, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_export_file(&name) || entry.path().is_dir() {
            return refuse(format!(
                "{} already holds {name}, which is not part of an export; choose another folder or empty it",
                output.display()
            ));
        }
    }
    Ok(())
}

fn is_export_file(name: &str) -> bool {
    let shard = name
        .strip_prefix("model-")
        .and_then(|n| n.strip_suffix(".safetensors"))
        .is_some_and(|n| {
            n.split_once("-of-").is_some_and(|(a, b)| {
                [a, b]
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
            })
        });
    shard || EXPORT_FILES.contains(&name)
}

fn write_json(staging: &mut Staging, name: &str, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    text.push('\n');
    Ok(staging.write_bytes(name, text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_model;
    use tessera_glue::OWN_TOKENIZER_JSON;

    /// A checkpoint as the trainer writes it: model, tokenizer, trainer files.
    fn checkpoint(dir: &Path) -> T5Model {
        let model = tiny_model(740);
        model.save(dir).unwrap();
        fs::write(dir.join(TOKENIZER_FILE), OWN_TOKENIZER_JSON).unwrap();
        fs::write(dir.join("optimizer.safetensors"), b"not exported").unwrap();
        fs::write(dir.join("trainer_state.json"), "{}").unwrap();
        model
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_export_reloads_bit_exactly_without_trainer_files() {
        let tmp = tempfile::tempdir().unwrap();
        let ckpt = tmp.path().join("step-3");
        let model = checkpoint(&ckpt);
        let out = tmp.path().join("hf");
        export(&ckpt, &out).unwrap();
        assert_eq!(
            names(&out),
            [
                "config.json",
                "generation_config.json",
                "model.safetensors",
                "special_tokens_map.json",
                "tokenizer.json",
                "tokenizer_config.json"
            ]
        );
        let back = T5Model::load(&out).unwrap();
        assert_eq!(back.params().flat(), model.params().flat());
        assert_eq!(back.config(), model.config());
        let generation: Value =
            serde_json::from_str(&fs::read_to_string(out.join("generation_config.json")).unwrap())
                .unwrap();
        assert_eq!(generation["decoder_start_token_id"], 0);
        assert_eq!(generation["eos_token_id"], 1);
        let config: Value =
            serde_json::from_str(&fs::read_to_string(out.join("tokenizer_config.json")).unwrap())
                .unwrap();
        assert_eq!(config["extra_ids"], 100);
        assert_eq!(config["additional_special_tokens"][99], "<extra_id_99>");
        // Nothing is left behind beside the export.
        assert_eq!(names(tmp.path()), ["hf", "step-3"]);
    }

    #[test]
    fn a_previous_export_is_replaced_and_other_folders_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ckpt = tmp.path().join("ckpt");
        checkpoint(&ckpt);
        fs::write(ckpt.join(SPIECE_FILE), b"spm").unwrap();
        let out = tmp.path().join("hf");
        fs::create_dir(&out).unwrap();
        export(&ckpt, &out).unwrap();
        assert!(out.join(SPIECE_FILE).is_file());
        export(&ckpt, &out).unwrap();
        fs::write(out.join("notes.txt"), "mine").unwrap();
        let err = export(&ckpt, &out).unwrap_err().to_string();
        assert!(
            err.contains("notes.txt") && err.contains("--output"),
            "{err}"
        );
        assert!(out.join("notes.txt").is_file());
        let err = export(&ckpt, &ckpt).unwrap_err().to_string();
        assert!(err.contains("checkpoint itself"), "{err}");
        let err = export(&ckpt, &ckpt.join(TOKENIZER_FILE)).unwrap_err();
        assert!(err.to_string().contains("is a file"), "{err}");
    }

    #[test]
    fn broken_checkpoints_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("hf");
        let err = export(&tmp.path().join("missing"), &out).unwrap_err();
        assert!(err.to_string().contains("is not a folder"), "{err}");
        let ckpt = tmp.path().join("ckpt");
        checkpoint(&ckpt);
        fs::remove_file(ckpt.join(TOKENIZER_FILE)).unwrap();
        let err = export(&ckpt, &out).unwrap_err();
        assert!(err.to_string().contains("has no tokenizer.json"), "{err}");
        fs::write(ckpt.join(TOKENIZER_FILE), OWN_TOKENIZER_JSON).unwrap();
        fs::remove_file(ckpt.join(WEIGHTS_FILE)).unwrap();
        let err = export(&ckpt, &out).unwrap_err();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn shard_names_count_as_export_files() {
        assert!(is_export_file("model-00001-of-00003.safetensors"));
        assert!(!is_export_file("model-1-of-x.safetensors"));
        assert!(!is_export_file("optimizer.safetensors"));
    }
}
