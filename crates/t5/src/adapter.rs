//! LoRA adapter folders in Hugging Face PEFT's format, in and out.
//!
//! A PEFT LoRA folder is `adapter_config.json` (`peft_type` `LORA`, `r`,
//! `lora_alpha`, `target_modules`, …) and `adapter_model.safetensors`
//! holding `base_model.model.<module>.lora_A.weight` and `.lora_B.weight`
//! for every adapted module: the names [`crate::lora::Lora`] stores them
//! under, so loading is a lookup by name and saving writes the store.
//!
//! Loading accepts what tessera computes and refuses, naming the field,
//! what it does not: DoRA, rank-stabilised scaling, per-module ranks or
//! alphas, trained biases, extra saved modules, regular-expression targets.

use crate::checkpoint::{check_finite, check_tensor, CheckpointError};
use crate::folder::{self, Staging};
use crate::lora::LoraConfig;
use crate::model::T5Model;
use crate::safetensors::{write_as, SafeTensors, StoredDType, TensorToWrite};
use serde_json::{json, Value};
use std::path::Path;

/// PEFT's adapter configuration file.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's adapter weights file.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Fields of `adapter_config.json` that change the computation and must
/// hold their "off" value for tessera to load the adapter as plain LoRA.
const MUST_BE_OFF: [&str; 8] = [
    "use_dora",
    "use_rslora",
    "fan_in_fan_out",
    "modules_to_save",
    "layers_to_transform",
    "rank_pattern",
    "alpha_pattern",
    "lora_bias",
];

fn adapter_err(path: &Path, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Adapter {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Whether a JSON value means "off": absent, null, false, empty.
fn is_off(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The LoRA settings of a PEFT `adapter_config.json`, and the base model it
/// names (`base_model_name_or_path`, if any).
pub fn read_adapter_config(path: &Path) -> Result<(LoraConfig, Option<String>), CheckpointError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| adapter_err(path, format!("cannot be read: {e}")))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| adapter_err(path, format!("is not valid JSON: {e}")))?;
    let field = |name: &str| v.get(name).unwrap_or(&Value::Null);
    if field("peft_type").as_str() != Some("LORA") {
        return Err(adapter_err(
            path,
            format!("peft_type is {}, not \"LORA\"", field("peft_type")),
        ));
    }
    if let Some(name) = MUST_BE_OFF.iter().find(|n| !is_off(field(n))) {
        let value = field(name);
        return Err(adapter_err(
            path,
            format!("sets {name} to {value}, which tessera does not compute"),
        ));
    }
    if !matches!(field("bias").as_str(), None | Some("none")) {
        return Err(adapter_err(
            path,
            format!("trains biases (bias = {}); T5 has none", field("bias")),
        ));
    }
    let rank = field("r")
        .as_u64()
        .and_then(|r| usize::try_from(r).ok())
        .ok_or_else(|| adapter_err(path, format!("r is {}, not a positive integer", field("r"))))?;
    let number = |name: &str, default: f64| match field(name) {
        Value::Null => Ok(default),
        v => v
            .as_f64()
            .ok_or_else(|| adapter_err(path, format!("{name} is {v}, not a number"))),
    };
    let targets = match field("target_modules") {
        Value::Array(items) => items
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| adapter_err(path, "target_modules holds something other than names"))?,
        other => {
            return Err(adapter_err(
                path,
                format!("target_modules is {other}; tessera takes a list of module names"),
            ))
        }
    };
    let config = LoraConfig {
        rank,
        alpha: number("lora_alpha", 8.0)? as f32,
        dropout: number("lora_dropout", 0.0)? as f32,
        targets,
    };
    config
        .validate()
        .map_err(|e| adapter_err(path, e.to_string()))?;
    let base = field("base_model_name_or_path")
        .as_str()
        .map(str::to_string);
    Ok((config, base))
}

impl T5Model {
    /// Loads a LoRA adapter folder in PEFT's format onto this model
    /// (replacing any adapters): every adapter its config implies must be
    /// in the weights file with its shape and finite values, and the file
    /// may hold nothing else.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<(), CheckpointError> {
        let (config, _) = read_adapter_config(&dir.join(ADAPTER_CONFIG_FILE))?;
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        self.add_lora(config, 0)
            .map_err(|e| adapter_err(&config_path, e.to_string()))?;
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        let file = SafeTensors::open(&path)?;
        let lora = self.lora_mut().expect("adapters were just added");
        let store = lora.adapters_mut();
        if let Some(name) = file.names().find(|n| store.find(n).is_none()) {
            return Err(CheckpointError::Unexpected {
                name: name.to_string(),
                path,
            });
        }
        for id in store.ids().collect::<Vec<_>>() {
            let entry = store.entry(id).clone();
            if file.info(&entry.name).is_err() {
                return Err(CheckpointError::Missing {
                    name: entry.name,
                    path,
                });
            }
            check_tensor(&file, &entry.name, &entry.shape)?;
            let dst = store.get_mut(id);
            file.read_f32_into(&entry.name, dst)?;
            check_finite(dst, &entry.name, &path)?;
        }
        Ok(())
    }

    /// Writes this model's LoRA adapters in PEFT's format into a folder
    /// being built: `adapter_config.json` naming `base` as the base model,
    /// and `adapter_model.safetensors` (f32). An error if the model has no
    /// adapters or an adapter holds a non-finite value.
    pub fn write_adapter_into(
        &self,
        staging: &mut Staging,
        base: &str,
    ) -> Result<(), CheckpointError> {
        let lora = self
            .lora()
            .ok_or_else(|| adapter_err(staging.path(), "the model has no LoRA adapters to save"))?;
        let store = lora.adapters();
        if let Some((id, index)) = store.first_non_finite() {
            return Err(CheckpointError::NonFiniteWeight {
                name: store.entry(id).name.clone(),
                index,
                value: store.widened(id)[index],
            });
        }
        let c = lora.config();
        let config = json!({
            "peft_type": "LORA",
            "task_type": "SEQ_2_SEQ_LM",
            "base_model_name_or_path": base,
            "r": c.rank,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "target_modules": c.targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "use_dora": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
        });
        let text = serde_json::to_string_pretty(&config).expect("JSON values serialise");
        staging.write_bytes(ADAPTER_CONFIG_FILE, text.as_bytes())?;
        let tensors: Vec<TensorToWrite<'_>> = store
            .views()
            .map(|(entry, data)| TensorToWrite {
                name: &entry.name,
                shape: &entry.shape,
                data,
            })
            .collect();
        staging.write(ADAPTER_WEIGHTS_FILE, |w| {
            write_as(w, &tensors, StoredDType::F32, &[])
        })?;
        Ok(())
    }

    /// Saves this model's LoRA adapters as a PEFT folder at `dir` (built
    /// under a staging name and renamed into place).
    pub fn save_adapter(&self, dir: &Path, base: &str) -> Result<(), CheckpointError> {
        folder::build(dir, |staging| self.write_adapter_into(staging, base)).map(drop)
    }
}
