//! Where a model and its tokenizer come from: `--model DIR|PRESET|HUB_ID` and `--tokenizer FILE`.
//!
//! # `--model`
//! A spec is read by the first rule that applies ([`ModelSpec::parse`]):
//! 1. **An existing local folder** always wins: a Hugging Face folder with
//!    `config.json` and `model.safetensors` (or `model.safetensors.index.json`
//!    and its shards).
//! 2. **A bare preset name**, `flan-t5-small`, `-base`, `-large`, `-xl` or
//!    `-xxl` (no `google/` prefix), or `tessera-tiny` (the quickstart's model,
//!    sized for the built-in tokenizer): that architecture, randomly
//!    initialised from `--seed` ([`T5Model::init`]).
//! 3. **Anything else shaped like a Hub id** (`owner/name`, or a bare legacy
//!    name that is no preset): the Hugging Face Hub. So `google/flan-t5-small`
//!    is the published checkpoint, while `flan-t5-small` is the same shape
//!    with random weights. Files already in the local Hub cache (`HF_HOME/hub`,
//!    else `~/.cache/huggingface/hub`) are used without network; otherwise
//!    `config.json`, the weights, `tokenizer.json` and `spiece.model` (when the
//!    repository has them) are downloaded into that cache (cargo feature
//!    `hub`, on by default). `HF_ENDPOINT` points at a mirror.
//!
//! A spec that looks like a path (starts with `/`, `.` or `~`, or has more
//! than one `/`) but is no folder is an error, never a Hub request.
//!
//! # `--tokenizer`
//! [`load_tokenizer`]: the `--tokenizer` file wins; else the model folder's
//! `tokenizer.json`; else (a preset) the project's own tokenizer
//! ([`OWN_TOKENIZER_JSON`], built into the binary), but only for a model whose
//! vocabulary has exactly its size: the Flan-T5 presets (32,128 tokens) need
//! `--tokenizer`. A tokenizer with more tokens than the model is rejected.

use crate::checkpoint::{self, BaseModel, CheckpointKind};
use crate::error::{Result, TrainError};
use std::fmt;
use std::path::{Path, PathBuf};
use tessera_glue::{TextTokenizer, OWN_TOKENIZER_JSON};
use tessera_t5::{T5Config, T5Model};
use tessera_tensor::DType;

/// How the built-in tokenizer is named in messages.
pub const OWN_TOKENIZER_NAME: &str = "the built-in tokenizer";

/// The preset names `--model` accepts (bare: a `google/` prefix means the Hub).
pub const PRESETS: [&str; 6] = [
    tessera_t5::TINY_PRESET,
    "flan-t5-small",
    "flan-t5-base",
    "flan-t5-large",
    "flan-t5-xl",
    "flan-t5-xxl",
];

/// A parsed `--model` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A local Hugging Face model folder.
    Folder(PathBuf),
    /// A preset architecture, randomly initialised from a seed.
    Preset(String),
    /// A Hugging Face Hub model id.
    Hub(String),
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSpec::Folder(dir) => write!(f, "folder {}", dir.display()),
            ModelSpec::Preset(name) => write!(f, "preset {name} (random initialisation)"),
            ModelSpec::Hub(id) => write!(f, "Hugging Face Hub model {id}"),
        }
    }
}

impl ModelSpec {
    /// Reads a `--model` value by the rules of the module documentation.
    pub fn parse(spec: &str) -> Result<ModelSpec> {
        let bad = |reason: String| Err(TrainError::setting("--model", reason));
        if spec.trim().is_empty() {
            return bad("the value is empty".into());
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSpec::Folder(path.to_path_buf()));
        }
        if path.exists() {
            return bad(format!(
                "{spec} is a file; pass the folder that holds config.json and the weights"
            ));
        }
        if PRESETS.contains(&spec) {
            return Ok(ModelSpec::Preset(spec.to_string()));
        }
        let looks_like_path = spec.starts_with(['/', '.', '~'])
            || spec.contains('\\')
            || spec.matches('/').count() > 1;
        if looks_like_path {
            return bad(format!("the folder {spec} does not exist"));
        }
        let valid_id = spec.split('/').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        });
        if !valid_id {
            return bad(format!(
                "{spec} is neither an existing folder, a preset ({}) nor a Hugging Face Hub id",
                PRESETS.join(", ")
            ));
        }
        Ok(ModelSpec::Hub(spec.to_string()))
    }
}

/// A model ready to use, and the folder it was read from (none for a preset).
#[derive(Debug)]
pub struct LoadedModel {
    /// The weights.
    pub model: T5Model,
    /// The folder holding `config.json` (and perhaps the tokenizer): the local
    /// folder, or the Hub cache's snapshot folder.
    pub folder: Option<PathBuf>,
}

/// Loads (or, for a preset, initialises from `seed`) the model `spec` names.
/// A model whose f32 weights alone exceed the machine's memory is refused
/// before anything is allocated; a tessera checkpoint is verified against
/// its manifest first.
pub fn load_model(spec: &ModelSpec, seed: u64) -> Result<LoadedModel> {
    load_model_as(spec, seed, DType::F32)
}

/// [`load_model`] with the weights kept as `dtype` from the start (a bf16
/// LoRA base never has an f32 copy; see [`T5Model::load_as`]). A LoRA
/// folder's adapters stay f32.
pub fn load_model_as(spec: &ModelSpec, seed: u64, dtype: DType) -> Result<LoadedModel> {
    let folder = match spec {
        ModelSpec::Preset(name) => {
            let config = preset_config(name)?;
            check_memory(spec, &config, dtype, tessera_tensor::memory::total_memory())?;
            return Ok(LoadedModel {
                model: T5Model::init_as(config, seed, dtype),
                folder: None,
            });
        }
        ModelSpec::Folder(dir) => dir.clone(),
        ModelSpec::Hub(id) => fetch_from_hub(id)?,
    };
    if let Some(loaded) = load_adapter_folder(&folder, seed)? {
        return Ok(loaded);
    }
    let config = T5Config::from_file(&folder.join("config.json"))
        .map_err(tessera_t5::CheckpointError::from)?;
    check_memory(spec, &config, dtype, tessera_tensor::memory::total_memory())?;
    crate::checkpoint::verify_if_manifest(&folder)?;
    Ok(LoadedModel {
        model: T5Model::load_as(&folder, dtype)?,
        folder: Some(folder),
    })
}

/// A LoRA folder with its base: a tessera LoRA checkpoint (the base its
/// manifest names, fingerprint checked) or a PEFT adapter folder (the base
/// its `base_model_name_or_path` names; a preset from `seed`). `None` for
/// any other folder. The tokenizer is looked for in the adapter's folder,
/// then the base's.
fn load_adapter_folder(dir: &Path, seed: u64) -> Result<Option<LoadedModel>> {
    let own_tokenizer = dir.join(crate::export::TOKENIZER_FILE).is_file();
    let (model, base_folder) = if dir.join(checkpoint::MANIFEST_FILE).is_file() {
        let manifest = checkpoint::verify(dir)?;
        if manifest.kind != CheckpointKind::Adapter {
            return Ok(None);
        }
        (load_adapted(dir, manifest.base)?.0, None)
    } else if dir.join(tessera_t5::ADAPTER_CONFIG_FILE).is_file()
        && !dir.join("config.json").is_file()
    {
        let config_path = dir.join(tessera_t5::ADAPTER_CONFIG_FILE);
        let (_, base) = tessera_t5::read_adapter_config(&config_path)?;
        let base = base.ok_or_else(|| {
            TrainError::setting(
                "--model",
                format!("{} names no base model (base_model_name_or_path); pass the base as --model and this folder as --adapter", config_path.display()),
            )
        })?;
        let base = load_model(&ModelSpec::parse(&base)?, seed)?;
        let mut model = base.model;
        model.load_adapter(dir)?;
        (model, base.folder)
    } else {
        return Ok(None);
    };
    let folder = match own_tokenizer {
        true => Some(dir.to_path_buf()),
        false => base_folder,
    };
    Ok(Some(LoadedModel { model, folder }))
}

/// The model of a LoRA checkpoint `dir`: the base its manifest names, with
/// the checkpoint's adapters ([`put_adapter`]).
pub fn load_adapted(dir: &Path, base: Option<BaseModel>) -> Result<(T5Model, Option<BaseModel>)> {
    let base = base.ok_or_else(|| TrainError::Damaged {
        dir: dir.to_path_buf(),
        reason: "its manifest is of a LoRA checkpoint but names no base model".into(),
    })?;
    let spec = ModelSpec::parse(&base.model)?;
    let mut model = load_model_as(&spec, base.seed, base.precision.dtype())?.model;
    put_adapter(&mut model, dir)?;
    Ok((model, Some(base)))
}

/// Loads the LoRA adapters of folder `dir` onto `model` (PEFT's format). A
/// tessera checkpoint is verified against its manifest first, and its base
/// must be `model`'s weights: their fingerprints must agree.
pub fn put_adapter(model: &mut T5Model, dir: &Path) -> Result<()> {
    if dir.join(checkpoint::MANIFEST_FILE).is_file() {
        let manifest = checkpoint::verify(dir)?;
        if let Some(base) = manifest.base {
            // The base was fingerprinted as the run kept it (16-bit for a
            // bf16/fp16 LoRA run); rounding f32 weights gives the same values.
            let kept = base.precision.dtype();
            let found = match model.params().dtype() == kept {
                true => model.params().fingerprint(),
                false => model.params().converted(kept).fingerprint(),
            };
            if found != base.fingerprint {
                return Err(TrainError::setting(
                    "--model",
                    format!(
                        "the LoRA checkpoint {} was trained on {} (weights fingerprint {}), not on these weights (fingerprint {found})",
                        dir.display(),
                        base.model,
                        base.fingerprint
                    ),
                ));
            }
        }
    }
    Ok(model.load_adapter(dir)?)
}

/// Fails, with the estimate and the machine's memory in the sentence, when
/// `config`'s weights as `dtype` need more than `memory` bytes (the
/// optimizer and activations need more again; this catches what cannot
/// work at all).
fn check_memory(
    spec: &ModelSpec,
    config: &T5Config,
    dtype: DType,
    memory: Option<u64>,
) -> Result<()> {
    let Some(memory) = memory else {
        return Ok(());
    };
    let need = config.num_parameters() as f64 * dtype.size() as f64;
    if need <= memory as f64 {
        return Ok(());
    }
    Err(TrainError::setting(
        "--model",
        format!(
            "{spec} has {} parameters, whose {dtype} weights alone need {:.1} GB, more than this machine's {:.1} GB of memory",
            config.num_parameters(),
            need / 1e9,
            memory as f64 / 1e9
        ),
    ))
}

/// Loads the model `spec` names and its tokenizer ([`load_model`], then
/// [`load_tokenizer`] with `tokenizer` as the `--tokenizer` flag). For a
/// preset the tokenizer is resolved first, so a mismatch is reported before
/// the weights are initialised.
pub fn load_model_and_tokenizer(
    spec: &ModelSpec,
    tokenizer: Option<&Path>,
    seed: u64,
) -> Result<(LoadedModel, TextTokenizer)> {
    if let ModelSpec::Preset(name) = spec {
        load_tokenizer(tokenizer, None, preset_config(name)?.vocab_size)?;
    }
    let loaded = load_model(spec, seed)?;
    let vocab_size = loaded.model.config().vocab_size;
    let tokenizer = load_tokenizer(tokenizer, loaded.folder.as_deref(), vocab_size)?;
    Ok((loaded, tokenizer))
}

/// The shapes of preset `name` (one of [`PRESETS`]).
fn preset_config(name: &str) -> Result<T5Config> {
    Ok(T5Config::preset(name).map_err(tessera_t5::CheckpointError::from)?)
}

#[cfg(feature = "hub")]
fn fetch_from_hub(id: &str) -> Result<PathBuf> {
    crate::hub::Hub::from_env().fetch(id)
}

#[cfg(not(feature = "hub"))]
fn fetch_from_hub(id: &str) -> Result<PathBuf> {
    Err(TrainError::Hub {
        id: id.to_string(),
        reason: "this build has no Hub support: the cargo feature `hub` of tessera-train is off"
            .to_string(),
    })
}

/// The project's own tokenizer ([`OWN_TOKENIZER_JSON`]).
pub fn own_tokenizer() -> Result<TextTokenizer> {
    let origin = PathBuf::from(OWN_TOKENIZER_NAME);
    let inner: tessera_glue::tokenizers::Tokenizer =
        OWN_TOKENIZER_JSON
            .parse()
            .map_err(|e| tessera_glue::GlueError::Tokenizer {
                path: origin.clone(),
                message: format!("cannot load ({e})"),
            })?;
    Ok(TextTokenizer::new(inner, origin)?)
}

/// Resolves the tokenizer of a model with `vocab_size` tokens: the `flag`
/// file, else `folder/tokenizer.json`, else (no folder: a preset) the
/// built-in tokenizer when its size matches exactly.
pub fn load_tokenizer(
    flag: Option<&Path>,
    folder: Option<&Path>,
    vocab_size: usize,
) -> Result<TextTokenizer> {
    let tokenizer = match (flag, folder) {
        (Some(file), _) => TextTokenizer::from_file(file)?,
        (None, Some(dir)) => {
            let file = dir.join("tokenizer.json");
            if !file.is_file() {
                return Err(TrainError::setting(
                    "--tokenizer",
                    format!(
                        "the model folder {} has no tokenizer.json; pass --tokenizer FILE",
                        dir.display()
                    ),
                ));
            }
            TextTokenizer::from_file(&file)?
        }
        (None, None) => {
            let own = own_tokenizer()?;
            if own.vocab_size() != vocab_size {
                return Err(TrainError::setting(
                    "--tokenizer",
                    format!(
                        "the model has a {vocab_size}-token vocabulary, {OWN_TOKENIZER_NAME} has {} tokens; pass --tokenizer FILE (for a Flan-T5 preset, a Flan-T5 tokenizer.json)",
                        own.vocab_size()
                    ),
                ));
            }
            own
        }
    };
    check_fits(&tokenizer, vocab_size)?;
    Ok(tokenizer)
}

/// Fails unless every id of `tokenizer` is inside a model vocabulary of `vocab_size`.
pub fn check_fits(tokenizer: &TextTokenizer, vocab_size: usize) -> Result<()> {
    if tokenizer.vocab_size() > vocab_size {
        return Err(TrainError::setting(
            "--tokenizer",
            format!(
                "the tokenizer has {} tokens, more than the model's vocab_size of {vocab_size}",
                tokenizer.vocab_size()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_model;

    #[test]
    fn a_model_larger_than_memory_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = T5Config::preset("flan-t5-small").unwrap();
        config.d_model = 999_999_999;
        std::fs::write(dir.path().join("config.json"), config.to_json()).unwrap();
        let spec = ModelSpec::Folder(dir.path().to_path_buf());
        let err = load_model(&spec, 0).unwrap_err().to_string();
        assert!(
            err.contains("GB of memory") && err.contains("--model"),
            "{err}"
        );
        // The comparison itself, independent of this machine.
        let small = T5Config::preset("flan-t5-small").unwrap();
        let f32 = DType::F32;
        assert!(check_memory(&spec, &small, f32, Some(1 << 30)).is_ok());
        assert!(check_memory(&spec, &small, f32, Some(1 << 20)).is_err());
        assert!(check_memory(&spec, &small, f32, None).is_ok());
        // 77 M parameters: 308 MB in f32, 154 MB in bf16.
        let mb = |n: u64| Some(n << 20);
        assert!(check_memory(&spec, &small, f32, mb(200)).is_err());
        let err = check_memory(&spec, &small, DType::BF16, mb(100)).unwrap_err();
        assert!(err.to_string().contains("bf16 weights"), "{err}");
        assert!(check_memory(&spec, &small, DType::BF16, mb(200)).is_ok());
    }

    #[test]
    fn specs_follow_the_documented_rules() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(ModelSpec::parse(d).unwrap(), ModelSpec::Folder(d.into()));
        assert_eq!(
            ModelSpec::parse("flan-t5-small").unwrap(),
            ModelSpec::Preset("flan-t5-small".into())
        );
        for hub in ["google/flan-t5-small", "t5-small", "org/my_model.v2"] {
            assert_eq!(ModelSpec::parse(hub).unwrap(), ModelSpec::Hub(hub.into()));
        }
        for (bad, why) in [
            ("./no/such/dir", "does not exist"),
            ("a/b/c", "does not exist"),
            ("/nope", "does not exist"),
            ("has space", "neither"),
            ("owner/", "neither"),
            ("", "empty"),
        ] {
            let err = ModelSpec::parse(bad).unwrap_err().to_string();
            assert!(err.contains("--model") && err.contains(why), "{bad}: {err}");
        }
        let file = dir.path().join("config.json");
        std::fs::write(&file, "{}").unwrap();
        let err = ModelSpec::parse(file.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("is a file"), "{err}");
    }

    #[test]
    fn presets_have_their_shapes_and_folders_load() {
        for name in &PRESETS[1..] {
            let config = preset_config(name).unwrap();
            assert_eq!(config.vocab_size, 32128, "{name}");
        }
        let tiny = preset_config(tessera_t5::TINY_PRESET).unwrap();
        assert_eq!(tiny.vocab_size, own_tokenizer().unwrap().vocab_size());
        assert_eq!(preset_config("flan-t5-small").unwrap().d_model, 512);
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_model(740);
        model.save(dir.path()).unwrap();
        let loaded = load_model(&ModelSpec::Folder(dir.path().into()), 0).unwrap();
        assert_eq!(loaded.folder.as_deref(), Some(dir.path()));
        assert_eq!(loaded.model.params().flat(), model.params().flat());
    }

    #[test]
    fn a_preset_without_a_matching_tokenizer_is_refused() {
        let spec = ModelSpec::parse("flan-t5-small").unwrap();
        let err = load_model_and_tokenizer(&spec, None, 0).unwrap_err();
        assert!(err.to_string().contains("32128-token vocabulary"), "{err}");
    }

    #[test]
    fn tokenizers_resolve_in_order_and_sizes_are_checked() {
        let own = load_tokenizer(None, None, 740).unwrap();
        assert_eq!(own.vocab_size(), 740);
        let err = load_tokenizer(None, None, 32128).unwrap_err().to_string();
        assert!(
            err.contains("--tokenizer") && err.contains("32128"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let err = load_tokenizer(None, Some(dir.path()), 740)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no tokenizer.json"), "{err}");
        let file = dir.path().join("tokenizer.json");
        std::fs::write(&file, OWN_TOKENIZER_JSON).unwrap();
        assert!(load_tokenizer(None, Some(dir.path()), 32128).is_ok());
        let err = load_tokenizer(Some(&file), None, 500)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("more than the model's vocab_size of 500"),
            "{err}"
        );
        let missing = dir.path().join("missing.json");
        let err = load_tokenizer(Some(&missing), None, 740).unwrap_err();
        assert!(err.to_string().contains("missing.json"), "{err}");
    }

    /// The built-in tokenizer keeps every word of `nli-synthetic`, and each
    /// MNLI label word, as one piece (`fixtures/corpus.py` reserves them):
    /// the quickstart learns fast only because values are single tokens.
    #[test]
    fn the_own_tokenizer_keeps_synthetic_and_label_words_whole() {
        let tokenizer = own_tokenizer().unwrap();
        let data = tessera_glue::synthetic::generate(500, 3);
        let words = data
            .iter()
            .flat_map(|e| e.texts.iter())
            .flat_map(|text| text.trim_end_matches('.').split(' '))
            .chain(["entailment", "neutral", "contradiction"]);
        for word in words {
            let ids = tokenizer.encode(word, 512).unwrap();
            assert_eq!(ids.len(), 2, "'{word}' is {ids:?} (pieces + </s>)");
        }
    }
}
