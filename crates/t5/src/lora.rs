//! LoRA: low-rank adapters beside frozen linear weights, as Hugging Face
//! PEFT makes them.
//!
//! An adapted projection computes `Y = X·Wᵀ + s·(X·Aᵀ)·Bᵀ` with `A: [r, in]`,
//! `B: [out, r]` and `s = alpha / r`. Only `A` and `B` train: the backward
//! of an adapted layer computes the input gradient through `W` and the
//! adapter, and no gradient of `W` at all (nor of any other base weight), so
//! a LoRA step skips the weight-gradient half of the backward's matmuls and
//! keeps gradients and optimizer state for the adapters alone.
//!
//! Targets name modules as PEFT's `target_modules` do: `q` adapts every
//! `SelfAttention.q` *and* `EncDecAttention.q` of both stacks, `wo` every
//! `DenseReluDense.wo`. The adapters live in their own f32 [`ParamStore`]
//! under PEFT's saved names (`base_model.model.<module>.lora_A.weight`), so
//! a PEFT `adapter_model.safetensors` maps onto it name for name.

use crate::params::{ParamId, ParamStore};
use tessera_tensor::rng::{self, SplitMix64};

/// The module names a LoRA target may be (PEFT's names for T5's linears).
pub const LORA_TARGETS: [&str; 8] = ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"];

/// PEFT's default targets for T5.
pub const DEFAULT_LORA_TARGETS: [&str; 2] = ["q", "v"];

/// How a model is adapted: PEFT's `LoraConfig` fields that change the
/// computation.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` of every adapter.
    pub rank: usize,
    /// `lora_alpha`: the adapters' output is scaled by `alpha / rank`.
    pub alpha: f32,
    /// `lora_dropout`: the drop probability of the adapters' input while
    /// training, its masks keyed per token as every dropout of tessera.
    pub dropout: f32,
    /// Module names to adapt, each one of [`LORA_TARGETS`].
    pub targets: Vec<String>,
}

/// A LoRA setting that cannot be used, named with the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoraError {
    /// A setting outside its range.
    #[error("LoRA {setting}: {reason}")]
    Setting {
        /// The setting (`rank`, `alpha`, `targets`).
        setting: &'static str,
        /// Why it cannot be used.
        reason: String,
    },
}

fn setting(setting: &'static str, reason: impl Into<String>) -> LoraError {
    LoraError::Setting {
        setting,
        reason: reason.into(),
    }
}

impl LoraConfig {
    /// The factor on the adapters' output, `alpha / rank`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Checks the rank, alpha and targets.
    pub fn validate(&self) -> Result<(), LoraError> {
        if self.rank == 0 {
            return Err(setting("rank", "must be at least 1"));
        }
        if !self.alpha.is_finite() {
            return Err(setting("alpha", format!("{} is not finite", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            let p = self.dropout;
            return Err(setting("dropout", format!("{p} is not in [0, 1)")));
        }
        if self.targets.is_empty() {
            return Err(setting("targets", "name at least one module"));
        }
        if let Some(bad) = self
            .targets
            .iter()
            .find(|t| !LORA_TARGETS.contains(&t.as_str()))
        {
            let known = LORA_TARGETS.join(", ");
            return Err(setting("targets", format!("{bad:?} is not one of {known}")));
        }
        Ok(())
    }
}

/// The adapters of one model: an f32 store of every `A` and `B`, and which
/// base weight each pair adapts.
#[derive(Debug, Clone, PartialEq)]
pub struct Lora {
    config: LoraConfig,
    adapters: ParamStore,
    /// `(A, B)` by base parameter index; `None` for weights not adapted.
    pairs: Vec<Option<(ParamId, ParamId)>>,
}

impl Lora {
    /// Adapters for every linear weight of `base` that `config` targets,
    /// initialised as PEFT does: `A` Kaiming-uniform (bound `1/√in`), `B`
    /// zero, so the adapted model starts as the base. `A` is drawn from
    /// `seed`, each adapter from its own stream.
    pub fn new(config: LoraConfig, base: &ParamStore, seed: u64) -> Result<Self, LoraError> {
        config.validate()?;
        let mut adapters = ParamStore::new();
        let mut pairs = vec![None; base.entries().len()];
        for id in base.ids() {
            let entry = base.entry(id);
            let Some(module) = targeted_module(&entry.name, &config.targets) else {
                continue;
            };
            let (out, inp) = (entry.shape[0], entry.shape[1]);
            if config.rank > out.min(inp) {
                let reason = format!(
                    "{} exceeds the {out}×{inp} weight {} adapts (B·A has rank at most {})",
                    config.rank,
                    entry.name,
                    out.min(inp)
                );
                return Err(setting("rank", reason));
            }
            let name = |which: &str| format!("base_model.model.{module}.lora_{which}.weight");
            let a = adapters.push(name("A"), vec![config.rank, inp]);
            let b = adapters.push(name("B"), vec![out, config.rank]);
            pairs[id.index()] = Some((a, b));
        }
        if adapters.is_empty() {
            let targets = config.targets.join(",");
            return Err(setting(
                "targets",
                format!("{targets} match no weight of this model"),
            ));
        }
        for (stream, a) in adapters.ids().step_by(2).enumerate() {
            let bound = 1.0 / (adapters.entry(a).shape[1] as f32).sqrt();
            let mut draw = SplitMix64::new(rng::key(seed, &[stream as u64]));
            for v in adapters.get_mut(a) {
                *v = draw.symmetric() * bound;
            }
        }
        Ok(Lora {
            config,
            adapters,
            pairs,
        })
    }

    /// The settings.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Every `A` and `B`, f32, under PEFT's names.
    pub fn adapters(&self) -> &ParamStore {
        &self.adapters
    }

    /// The adapters, to load or update them.
    pub fn adapters_mut(&mut self) -> &mut ParamStore {
        &mut self.adapters
    }

    /// The `(A, B)` pair adapting base weight `id`, if it is adapted.
    pub fn pair(&self, id: ParamId) -> Option<(ParamId, ParamId)> {
        self.pairs.get(id.index()).copied().flatten()
    }
}

impl crate::T5Model {
    /// Folds the LoRA adapters into the weights they adapt, `W += s·B·A`
    /// (in f32, then stored back in the weights' own type), and removes
    /// them: the result is a plain model that computes what the adapted
    /// one did, up to the rounding of the sum. Nothing changes when the
    /// model has no adapters.
    pub fn merge_lora(&mut self) -> Result<(), crate::ModelError> {
        let Some(lora) = self.lora().cloned() else {
            return Ok(());
        };
        let (r, s) = (lora.config.rank, lora.config.scale());
        let mut merged = self.params().converted(tessera_tensor::DType::F32);
        for id in merged.ids().collect::<Vec<_>>() {
            let Some((a, b)) = lora.pair(id) else {
                continue;
            };
            let (out, inp) = (merged.entry(id).shape[0], merged.entry(id).shape[1]);
            let (a, b) = (lora.adapters.get(a), lora.adapters.get(b));
            let w = tessera_tensor::MatMut::dense(merged.get_mut(id), out, inp)?;
            let a = tessera_tensor::MatRef::dense(a, r, inp)?;
            let b = tessera_tensor::MatRef::dense(b, out, r)?;
            tessera_tensor::gemm(
                s,
                b,
                tessera_tensor::Op::N,
                a,
                tessera_tensor::Op::N,
                1.0,
                w,
            )?;
        }
        self.replace_weights(merged.converted(self.params().dtype()))?;
        self.drop_lora();
        Ok(())
    }
}

/// The module of a `<module>.weight` parameter whose last name is one of
/// `targets` (PEFT's suffix match on module names).
fn targeted_module<'a>(name: &'a str, targets: &[String]) -> Option<&'a str> {
    let module = name.strip_suffix(".weight")?;
    let last = module.rsplit('.').next()?;
    targets.iter().any(|t| t == last).then_some(module)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::T5Model;
    use tessera_t5_config::{T5Config, TINY_PRESET};

    fn config(targets: &[&str]) -> LoraConfig {
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn q_and_v_adapt_self_and_cross_attention_of_both_stacks() {
        let model = T5Model::init(T5Config::preset(TINY_PRESET).expect("tiny"), 1);
        let lora = Lora::new(config(&DEFAULT_LORA_TARGETS), model.params(), 5).expect("lora");
        let names: Vec<&str> = lora
            .adapters()
            .entries()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        let c = model.config();
        let modules = 2 * (c.num_layers + 2 * c.decoder_layers());
        assert_eq!(names.len(), 2 * modules, "{names:?}");
        assert!(names
            .contains(&"base_model.model.decoder.block.0.layer.1.EncDecAttention.v.lora_B.weight"));
        assert!(names
            .contains(&"base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"));
        assert!(!names.iter().any(|n| n.contains(".k.") || n.contains(".o.")));
        let q = model.ids().encoder.blocks[0][0].kind;
        let crate::SublayerKind::SelfAttention(a) = q else {
            panic!("block 0 starts with self-attention")
        };
        let (la, lb) = lora.pair(a.q).expect("q is adapted");
        assert_eq!(lora.adapters().entry(la).shape, [4, c.d_model]);
        assert_eq!(lora.adapters().entry(lb).shape, [c.inner_dim(), 4]);
        assert!(lora.pair(a.k).is_none());
        let bound = 1.0 / (c.d_model as f32).sqrt();
        let av = lora.adapters().get(la);
        assert!(av.iter().all(|v| v.abs() <= bound) && av.iter().any(|v| v.abs() > bound / 2.0));
        assert!(lora.adapters().get(lb).iter().all(|&v| v == 0.0));
        let again = Lora::new(config(&DEFAULT_LORA_TARGETS), model.params(), 5).expect("lora");
        assert_eq!(again, lora);
    }

    #[test]
    fn bad_settings_are_named() {
        let model = T5Model::init(T5Config::preset(TINY_PRESET).expect("tiny"), 1);
        let err = |c: LoraConfig| {
            Lora::new(c, model.params(), 0)
                .expect_err("bad")
                .to_string()
        };
        assert!(err(config(&["q", "query"])).contains("\"query\" is not one of q, k"));
        assert!(err(LoraConfig {
            rank: 0,
            ..config(&["q"])
        })
        .contains("rank"));
        assert!(err(config(&[])).contains("targets"));
        // The tiny model's feed-forward is gated: it has wi_0 and wi_1, no wi.
        assert!(err(config(&["wi"])).contains("match no weight"));
    }
}
