//! [`T5Model`]: the weights, the forward pass as Hugging Face's
//! `T5ForConditionalGeneration` computes it, and its hand-written backward.

use crate::attention::{offset_buckets, position_bias_forward, Seqs};
use crate::layers::{token_ids, DropoutPlan, EncoderView, ParamGrads, StackContext, Weights};
use crate::lora::{Lora, LoraConfig, LoraError};
use crate::params::{layout, layout_as, ModelIds, ParamId, ParamStore};
use crate::precision::{Operand, OperandRef, Precision};
use crate::stack::{stack_backward, stack_forward, Keep, StackCache, StackRef};
use tessera_t5_config::T5Config;
use tessera_tensor::ops::crossentropy::{
    cross_entropy_backward_inplace, cross_entropy_forward, CrossEntropy, IGNORE_INDEX,
};
use tessera_tensor::ops::residual::scale_inplace;
use tessera_tensor::{DType, TensorError};

/// Why a batch could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The batch is malformed (lengths, token ids, mask values).
    #[error("invalid batch: {0}")]
    Batch(String),
    /// A tensor operation rejected its inputs (an internal shape bug).
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// A weight does not fit the 16-bit type the model was asked to keep
    /// its weights in.
    #[error("weight {name} holds {value} at element {index}, beyond the range of {dtype}")]
    WeightRange {
        /// The parameter.
        name: String,
        /// Position within it.
        index: usize,
        /// The f32 value.
        value: f32,
        /// The storage type.
        dtype: DType,
    },
}

/// A batch of examples as their real tokens only: the source tokens of all
/// rows back to back, and their targets likewise, with each row's lengths.
/// No pad token is stored or computed on (see [`Seqs`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// Every row's source token ids, row after row.
    pub input_ids: Vec<u32>,
    /// Source tokens of each row (at least 1).
    pub src_lens: Vec<usize>,
    /// Every row's target ids, row after row; `-100` where no loss is wanted.
    pub labels: Vec<i64>,
    /// Target tokens of each row (0 for a row with nothing to score).
    pub tgt_lens: Vec<usize>,
    /// Each row's example id, which keys its dropout masks (so that a row
    /// draws the same masks in any batch).
    pub examples: Vec<u64>,
}

impl Batch {
    /// A batch of `(example id, source ids, labels)` rows.
    pub fn new<'r>(rows: impl IntoIterator<Item = (u64, &'r [u32], &'r [i64])>) -> Batch {
        let mut batch = Batch::default();
        for (example, source, labels) in rows {
            batch.examples.push(example);
            batch.src_lens.push(source.len());
            batch.input_ids.extend_from_slice(source);
            batch.tgt_lens.push(labels.len());
            batch.labels.extend_from_slice(labels);
        }
        batch
    }

    /// The batch of a right-padded layout (`[rows, src_len]` ids with a
    /// 1/0 attention mask, `[rows, tgt_len]` labels padded with `-100`), as
    /// Hugging Face feeds it: the padding is dropped, and each row's target
    /// ends at its last label that is not `-100`. Rows are examples
    /// `0..rows`.
    pub fn from_padded(
        input_ids: &[u32],
        attention_mask: &[u8],
        labels: &[i64],
        rows: usize,
    ) -> Result<Batch, ModelError> {
        let bad = |m: String| Err(ModelError::Batch(m));
        if rows == 0 || !input_ids.len().is_multiple_of(rows) || !labels.len().is_multiple_of(rows)
        {
            return bad(format!(
                "{} input ids and {} labels do not split into {rows} rows",
                input_ids.len(),
                labels.len()
            ));
        }
        if attention_mask.len() != input_ids.len() {
            return bad(format!(
                "attention_mask has {} entries for {} input ids",
                attention_mask.len(),
                input_ids.len()
            ));
        }
        let (s, t) = (input_ids.len() / rows, labels.len() / rows);
        let mut out = Vec::with_capacity(rows);
        for r in 0..rows {
            let mask = &attention_mask[r * s..(r + 1) * s];
            let len = mask.iter().take_while(|&&m| m == 1).count();
            if mask[len..].iter().any(|&m| m != 0) {
                return bad(format!(
                    "attention_mask row {r} is not ones followed by zeros (only right padding is supported)"
                ));
            }
            let row_labels = &labels[r * t..(r + 1) * t];
            let tgt = row_labels
                .iter()
                .rposition(|&l| l != IGNORE_INDEX)
                .map_or(0, |last| last + 1);
            out.push((r as u64, &input_ids[r * s..r * s + len], &row_labels[..tgt]));
        }
        Ok(Batch::new(out))
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.src_lens.len()
    }

    /// Each row's source token ids.
    pub fn source_rows(&self) -> Vec<&[u32]> {
        let seqs = self.sources();
        (0..self.rows())
            .map(|b| &self.input_ids[seqs.range(b)])
            .collect()
    }

    /// The source sequences.
    pub fn sources(&self) -> Seqs {
        Seqs::new(self.src_lens.clone())
    }

    /// The target sequences.
    pub fn targets(&self) -> Seqs {
        Seqs::new(self.tgt_lens.clone())
    }

    /// Checks lengths, ids and labels against a config.
    pub fn validate(&self, config: &T5Config) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Batch(m));
        let rows = self.rows();
        if rows == 0 {
            return bad("a batch needs at least one row".into());
        }
        for (name, len) in [
            ("tgt_lens", self.tgt_lens.len()),
            ("examples", self.examples.len()),
        ] {
            if len != rows {
                return bad(format!("{name} has {len} entries for {rows} rows"));
            }
        }
        if let Some(r) = self.src_lens.iter().position(|&l| l == 0) {
            return bad(format!("row {r} has an empty source"));
        }
        for (name, len, want) in [
            (
                "input_ids",
                self.input_ids.len(),
                self.src_lens.iter().sum(),
            ),
            (
                "labels",
                self.labels.len(),
                self.tgt_lens.iter().sum::<usize>(),
            ),
        ] {
            if len != want {
                return bad(format!(
                    "{name} has {len} entries, the row lengths add up to {want}"
                ));
            }
        }
        let vocab = config.vocab_size;
        if let Some(id) = self.input_ids.iter().find(|&&id| id as usize >= vocab) {
            return bad(format!(
                "input id {id} is outside the vocabulary of {vocab}"
            ));
        }
        if let Some(l) = self
            .labels
            .iter()
            .find(|&&l| l != IGNORE_INDEX && !(0..vocab as i64).contains(&l))
        {
            return bad(format!(
                "label {l} is neither -100 nor inside the vocabulary of {vocab}"
            ));
        }
        Ok(())
    }

    /// Decoder inputs: each row's labels shifted right behind
    /// `decoder_start_token_id`, with `-100` replaced by the pad id
    /// (Hugging Face's `_shift_right`).
    pub fn decoder_input_ids(&self, config: &T5Config) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.labels.len());
        let targets = self.targets();
        for b in 0..targets.count() {
            let row = &self.labels[targets.range(b)];
            if row.is_empty() {
                continue;
            }
            out.push(config.decoder_start_token_id);
            out.extend(row[..row.len() - 1].iter().map(|&l| {
                if l == IGNORE_INDEX {
                    config.pad_token_id
                } else {
                    l as u32
                }
            }));
        }
        out
    }
}

/// Results of an evaluation forward pass.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// `[source tokens, d_model]`, the encoder's final normed states.
    pub encoder_output: Vec<f32>,
    /// `[target tokens, d_model]`, the decoder's final normed states (before any head scaling).
    pub decoder_output: Vec<f32>,
    /// `[target tokens, vocab]`.
    pub logits: Vec<f32>,
    /// Summed loss and counted tokens (`loss.mean()` is Hugging Face's loss).
    pub loss: CrossEntropy,
}

/// Settings of a training forward/backward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainOptions {
    /// Dropout probability (the config's `dropout_rate` by default).
    pub dropout: f32,
    /// Seed of the dropout masks; vary it per step.
    pub seed: u64,
    /// Recompute each block in the backward instead of storing its activations.
    pub recompute_blocks: bool,
    /// Divide the summed loss by this for the gradient (gradient accumulation
    /// over a global batch); `None` uses this batch's target count (Hugging Face's mean).
    pub loss_divisor: Option<f32>,
    /// Multiply the loss by this before differentiating (fp16 loss scaling;
    /// the caller divides the gradients by it again). 1 otherwise.
    pub loss_scale: f32,
}

impl TrainOptions {
    /// The config's dropout, seed 0, no recomputation, mean loss.
    pub fn from_config(config: &T5Config) -> Self {
        TrainOptions {
            dropout: config.dropout_rate as f32,
            seed: 0,
            recompute_blocks: false,
            loss_divisor: None,
            loss_scale: 1.0,
        }
    }
}

/// A T5 encoder-decoder with a language-model head.
#[derive(Debug, Clone)]
pub struct T5Model {
    config: T5Config,
    params: ParamStore,
    ids: ModelIds,
    precision: Precision,
    /// LoRA adapters: when present, they are what trains and `params` is frozen.
    lora: Option<Lora>,
}

/// Position buckets and the gathered bias of one stack, per offset `j - i`.
pub(crate) struct PositionBias {
    buckets: Vec<usize>,
    bias: Vec<f32>,
}

/// One stack's packed sequences: their layout, each token's identity (for
/// dropout) and the position bias for their longest sequence.
pub(crate) struct Side {
    pub(crate) seqs: Seqs,
    pub(crate) tokens: Vec<u64>,
    bias: PositionBias,
}

/// The decoder's input and the encoder's output, shared by forward and backward.
pub(crate) struct Encoded {
    pub(crate) hidden: Vec<f32>,
    /// `hidden` rounded for the cross-attention matmuls (`None` in f32).
    rounded: Option<Operand>,
    cache: Option<StackCache>,
    pub(crate) side: Side,
}

impl Encoded {
    /// The encoder output as a matmul operand.
    pub(crate) fn operand(&self) -> OperandRef<'_> {
        match &self.rounded {
            Some(r) => r.view(),
            None => OperandRef::F32(&self.hidden),
        }
    }
}

impl T5Model {
    /// A model with every weight zero, in the layout of `config` (for
    /// loading into). Call [`T5Model::init`] for a trainable random model.
    pub fn zeros(config: T5Config) -> Self {
        let (params, ids) = layout(&config);
        Self::from_parts(config, params, ids)
    }

    /// A randomly initialised model, as Hugging Face's `_init_weights` does
    /// (normal with T5's per-weight standard deviations times the config's
    /// `initializer_factor`, norms at 1), deterministic in `seed`.
    pub fn init(config: T5Config, seed: u64) -> Self {
        Self::init_as(config, seed, DType::F32)
    }

    /// [`T5Model::init`] with the weights kept as `dtype` (each drawn in
    /// f32 and rounded to nearest-even; no f32 copy of the model is made).
    /// The f32 draws are [`T5Model::init`]'s.
    pub fn init_as(config: T5Config, seed: u64, dtype: DType) -> Self {
        let (params, ids) = layout_as(&config, dtype);
        let mut model = Self::from_parts(config, params, ids);
        let c = model.config.clone();
        let (d, ff, inner) = (c.d_model as f32, c.d_ff as f32, c.inner_dim() as f32);
        let factor = c
            .extra
            .get("initializer_factor")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(1.0) as f32;
        let ids: Vec<ParamId> = model.params.ids().collect();
        for (index, id) in ids.into_iter().enumerate() {
            let name = model.params.entry(id).name.clone();
            let mut values = vec![0.0; model.params.entry(id).numel()];
            let std = match name.rsplit('.').nth(1).unwrap_or("") {
                _ if name.contains("layer_norm") => {
                    values.fill(1.0);
                    model.params.set_from_f32(id, &values);
                    continue;
                }
                "shared" | "lm_head" => 1.0,
                "q" => (d * c.d_kv as f32).powf(-0.5),
                "k" | "v" | "wi" | "wi_0" | "wi_1" | "relative_attention_bias" => d.powf(-0.5),
                "o" => inner.powf(-0.5),
                "wo" => ff.powf(-0.5),
                _ => unreachable!("every parameter name is covered: {name}"),
            };
            fill_normal(&mut values, factor * std, seed, index as u64);
            // T5's init draws a few standard deviations at most: finite in 16 bits.
            model.params.set_from_f32(id, &values);
        }
        model
    }

    /// Builds a model from a config and a filled store (used by the loader).
    pub(crate) fn from_parts(config: T5Config, params: ParamStore, ids: ModelIds) -> Self {
        T5Model {
            config,
            params,
            ids,
            precision: Precision::F32,
            lora: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// The weights.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// The weights, mutable (for optimizers).
    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    /// The precision the matmuls read (f32 unless set).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Runs every later pass in `precision`: the weights stay f32, the
    /// matmuls read them (and the activations) in 16 bits (see
    /// [`crate::precision`]).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Keeps the weights themselves in this model's precision from now on:
    /// rounded once to nearest-even into a bf16 or fp16 store, with no f32
    /// copy left (half the memory of the weights). An optimizer then
    /// updates them with stochastic rounding (`tessera_train`), as
    /// Graphcore's Flan-T5 training does with fp16 weights. In f32, 16-bit
    /// weights are widened back (exactly). Fails, naming the weight, if a
    /// value lies beyond fp16's range; the weights are then left as they
    /// were.
    pub fn store_weights_in_precision(&mut self) -> Result<(), ModelError> {
        let dtype = self.precision.dtype();
        if self.params.dtype() == dtype {
            return Ok(());
        }
        let narrowed = self.params.converted(dtype);
        if let Some((id, index)) = narrowed.first_non_finite() {
            return Err(ModelError::WeightRange {
                name: self.params.entry(id).name.clone(),
                index,
                value: self.params.widened(id)[index],
                dtype,
            });
        }
        self.params = narrowed;
        Ok(())
    }

    /// What the matmuls read: the weights in this model's precision, and
    /// the LoRA adapters when there are some.
    pub fn weights(&self) -> Weights<'_> {
        Weights::new(&self.params, self.precision).with_lora(self.lora.as_ref())
    }

    /// Adds LoRA adapters ([`Lora::new`]): from now on they are the
    /// trainable parameters ([`T5Model::trainable`]) and the base weights
    /// are frozen. Replaces any adapters already there.
    pub fn add_lora(&mut self, config: LoraConfig, seed: u64) -> Result<(), LoraError> {
        self.lora = Some(Lora::new(config, &self.params, seed)?);
        Ok(())
    }

    /// Removes the LoRA adapters: every weight trains again.
    pub fn drop_lora(&mut self) {
        self.lora = None;
    }

    /// Replaces every weight with `params` (same layout), refusing a
    /// non-finite value.
    pub(crate) fn replace_weights(&mut self, params: ParamStore) -> Result<(), ModelError> {
        assert_eq!(params.entries(), self.params.entries(), "the same layout");
        if let Some((id, index)) = params.first_non_finite() {
            return Err(ModelError::WeightRange {
                name: params.entry(id).name.clone(),
                index,
                value: params.widened(id)[index],
                dtype: params.dtype(),
            });
        }
        self.params = params;
        Ok(())
    }

    /// The LoRA adapters, if the model has some.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// The LoRA adapters, mutable (to load them).
    pub fn lora_mut(&mut self) -> Option<&mut Lora> {
        self.lora.as_mut()
    }

    /// The parameters a training step updates: the LoRA adapters when the
    /// model has some, else every weight.
    pub fn trainable(&self) -> &ParamStore {
        self.lora.as_ref().map_or(&self.params, Lora::adapters)
    }

    /// [`T5Model::trainable`], mutable (what an optimizer step writes).
    pub fn trainable_mut(&mut self) -> &mut ParamStore {
        match &mut self.lora {
            Some(lora) => lora.adapters_mut(),
            None => &mut self.params,
        }
    }

    /// Parameter ids by role.
    pub fn ids(&self) -> &ModelIds {
        &self.ids
    }

    /// A zeroed gradient store in the layout of the trainable parameters
    /// ([`T5Model::trainable`]).
    pub fn new_gradients(&self) -> ParamStore {
        self.trainable().zeros_like()
    }

    fn stack_ref(&self, decoder: bool) -> StackRef<'_> {
        StackRef {
            ids: if decoder {
                &self.ids.decoder
            } else {
                &self.ids.encoder
            },
            number: u64::from(decoder),
            embedding: self.ids.shared,
        }
    }

    /// The offset buckets and relative bias of a stack for sequences of at
    /// most `len` tokens (`[heads, 2·len - 1]`, what the fused attention
    /// reads).
    fn position_bias(&self, decoder: bool, len: usize) -> PositionBias {
        let c = &self.config;
        let buckets = offset_buckets(
            len,
            len,
            0,
            !decoder,
            c.relative_attention_num_buckets,
            c.relative_attention_max_distance,
        );
        let table = self
            .params
            .widened(self.stack_ref(decoder).ids.relative_bias);
        let bias = position_bias_forward(&table, &buckets, c.num_heads);
        PositionBias { buckets, bias }
    }

    /// A stack's view of packed sequences of examples `examples`.
    pub(crate) fn side(&self, decoder: bool, seqs: Seqs, examples: &[u64]) -> Side {
        let tokens = token_ids(examples, &seqs);
        let bias = self.position_bias(decoder, seqs.max_len());
        Side { seqs, tokens, bias }
    }

    fn context<'a>(
        &'a self,
        weights: Weights<'a>,
        side: &'a Side,
        encoder: Option<&'a Encoded>,
    ) -> StackContext<'a> {
        StackContext {
            config: &self.config,
            weights,
            seqs: &side.seqs,
            tokens: &side.tokens,
            causal: encoder.is_some(),
            bias: &side.bias.bias,
            encoder: encoder.map(|enc| EncoderView {
                hidden: enc.operand(),
                seqs: &enc.side.seqs,
                tokens: &enc.side.tokens,
            }),
        }
    }

    /// Runs the encoder on a batch's sources.
    pub(crate) fn encode(
        &self,
        weights: Weights<'_>,
        batch: &Batch,
        keep: Keep,
    ) -> Result<Encoded, ModelError> {
        let side = self.side(false, batch.sources(), &batch.examples);
        let cx = self.context(weights, &side, None);
        let (hidden, cache) = stack_forward(
            &cx,
            self.stack_ref(false),
            &batch.input_ids,
            &side.bias.buckets,
            keep,
        )?;
        let rounded = (self.precision != Precision::F32)
            .then(|| self.precision.keep_activation(hidden.clone()));
        Ok(Encoded {
            hidden,
            rounded,
            cache,
            side,
        })
    }

    /// Runs the decoder on a batch's targets (teacher forcing).
    fn decode_targets(
        &self,
        weights: Weights<'_>,
        batch: &Batch,
        enc: &Encoded,
        keep: Keep,
    ) -> Result<(Side, Vec<f32>, Option<StackCache>), ModelError> {
        let side = self.side(true, batch.targets(), &batch.examples);
        let dec_ids = batch.decoder_input_ids(&self.config);
        let cx = self.context(weights, &side, Some(enc));
        let (out, cache) = stack_forward(
            &cx,
            self.stack_ref(true),
            &dec_ids,
            &side.bias.buckets,
            keep,
        )?;
        Ok((side, out, cache))
    }

    /// Whether the decoder output is scaled by `d_model^-0.5` before the
    /// head: tied models (or `scale_decoder_outputs` in transformers 5 configs).
    pub fn scales_decoder_output(&self) -> bool {
        self.config
            .extra
            .get("scale_decoder_outputs")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(self.config.tie_word_embeddings)
    }

    fn head_scale(&self) -> f32 {
        if self.scales_decoder_output() {
            (self.config.d_model as f32).powf(-0.5)
        } else {
            1.0
        }
    }

    /// The LM head weight: `lm_head.weight`, or `shared.weight` when tied.
    pub(crate) fn head_weight(&self) -> ParamId {
        self.ids.lm_head.unwrap_or(self.ids.shared)
    }

    /// `logits = (scale · hidden) · Wᵀ`; returns the scaled input too, as
    /// the matmul read it.
    pub(crate) fn head_forward(
        &self,
        weights: Weights<'_>,
        hidden: &[f32],
        rows: usize,
    ) -> tessera_tensor::Result<(Vec<f32>, Operand)> {
        let mut scaled = hidden.to_vec();
        scale_inplace(&mut scaled, self.head_scale());
        let scaled = self.precision.keep_activation(scaled);
        let logits = weights.linear(scaled.view(), self.head_weight(), (rows, &[]))?;
        Ok((logits, scaled))
    }

    /// Evaluation forward (no dropout): encoder and decoder states, logits, loss.
    pub fn forward(&self, batch: &Batch) -> Result<ForwardOutput, ModelError> {
        batch.validate(&self.config)?;
        let w = self.weights();
        let enc = self.encode(w, batch, Keep::Nothing)?;
        let (_, decoder_output, _) = self.decode_targets(w, batch, &enc, Keep::Nothing)?;
        let (logits, loss) = self.score(w, &decoder_output, &batch.labels)?;
        Ok(ForwardOutput {
            encoder_output: enc.hidden,
            decoder_output,
            logits,
            loss,
        })
    }

    /// The summed loss of a batch's labels given its encoder output, read
    /// with `weights` (the model's, or a generator's packed ones), and the
    /// cross-attention keys and values of every decoder block, which
    /// generation from the same encoder output reads again. The decoder
    /// keeps its caches to hand those over; with a few target tokens per
    /// row, the rest of them is small.
    pub(crate) fn target_loss(
        &self,
        weights: Weights<'_>,
        batch: &Batch,
        enc: &Encoded,
    ) -> Result<(CrossEntropy, Vec<(Operand, Operand)>), ModelError> {
        let (_, hidden, cache) = self.decode_targets(weights, batch, enc, Keep::Everything)?;
        let loss = self.score(weights, &hidden, &batch.labels)?.1;
        let keys = cache.map_or_else(Vec::new, |c| c.into_cross_keys(&self.ids.decoder));
        Ok((loss, keys))
    }

    /// The logits of decoder states and their summed loss against `labels`.
    pub(crate) fn score(
        &self,
        weights: Weights<'_>,
        hidden: &[f32],
        labels: &[i64],
    ) -> Result<(Vec<f32>, CrossEntropy), ModelError> {
        let rows = labels.len();
        let (logits, _) = self.head_forward(weights, hidden, rows)?;
        let mut lse = vec![0.0; rows];
        let loss = cross_entropy_forward(&mut lse, &logits, labels, self.config.vocab_size)?;
        Ok((logits, loss))
    }

    /// Training step's forward and backward: adds the gradient of
    /// `Σ loss / divisor` into `grads` (from [`T5Model::new_gradients`]) and
    /// returns the loss.
    pub fn forward_backward(
        &self,
        batch: &Batch,
        grads: &mut ParamStore,
        opts: &TrainOptions,
    ) -> Result<CrossEntropy, ModelError> {
        batch.validate(&self.config)?;
        let plan = DropoutPlan {
            p: opts.dropout,
            adapter_p: self.lora.as_ref().map_or(0.0, |l| l.config().dropout),
            seed: opts.seed,
        };
        let keep = if opts.recompute_blocks {
            Keep::BlockInputs
        } else {
            Keep::Everything
        };
        let w = self.weights().with_dropout(plan);
        let enc = self.encode(w, batch, keep)?;
        let (dec_side, dec_out, dec_cache) = self.decode_targets(w, batch, &enc, keep)?;
        let rows = batch.labels.len();
        let (mut logits, scaled) = self.head_forward(self.weights(), &dec_out, rows)?;
        drop(dec_out);
        let vocab = self.config.vocab_size;
        let mut lse = vec![0.0; rows];
        let loss = cross_entropy_forward(&mut lse, &logits, &batch.labels, vocab)?;
        let divisor = opts.loss_divisor.unwrap_or(loss.count as f32);
        let scale = if divisor > 0.0 {
            opts.loss_scale / divisor
        } else {
            0.0
        };
        cross_entropy_backward_inplace(&mut logits, &lse, &batch.labels, vocab, scale)?;
        let mut grads = self.grad_sink(grads)?;
        let mut ddec = self.weights().linear_backward(
            (&logits, scaled.view()),
            (self.head_weight(), (rows, &[])),
            &mut grads,
        )?;
        drop(logits);
        scale_inplace(&mut ddec, self.head_scale());
        let mut denc = vec![0.0; enc.hidden.len()];
        let dec_cache = dec_cache.expect("a training forward keeps its cache");
        let dec_cx = self.context(w, &dec_side, Some(&enc));
        stack_backward(
            &dec_cx,
            self.stack_ref(true),
            &dec_cache,
            ddec,
            grads.reborrow(),
            Some(&mut denc),
        )?;
        let enc_cx = self.context(w, &enc.side, None);
        let enc_cache = enc
            .cache
            .as_ref()
            .expect("a training forward keeps its cache");
        stack_backward(&enc_cx, self.stack_ref(false), enc_cache, denc, grads, None)?;
        Ok(loss)
    }

    /// Where this model's backward adds gradients: `grads` (from
    /// [`T5Model::new_gradients`]) as every weight's, or as the adapters'
    /// when the model has LoRA adapters.
    fn grad_sink<'g>(&self, grads: &'g mut ParamStore) -> Result<ParamGrads<'g>, ModelError> {
        let want = self.trainable();
        if grads.entries() != want.entries() {
            return Err(ModelError::Batch(format!(
                "the gradient store holds {} tensors, not the {} trainable ones of this model \
                 (make it with new_gradients)",
                grads.entries().len(),
                want.entries().len()
            )));
        }
        Ok(match self.lora {
            Some(_) => ParamGrads::Adapters(grads),
            None => ParamGrads::Full(grads),
        })
    }
}

/// Fills `values` with N(0, std²) from a counter-based generator keyed by
/// `(seed, stream)` (Box–Muller on SplitMix64 output).
fn fill_normal(values: &mut [f32], std: f32, seed: u64, stream: u64) {
    let key = tessera_tensor::rng::key(seed, &[stream]);
    let uniform = |i: u64| {
        let h = tessera_tensor::rng::key(key, &[i]);
        ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    for (i, pair) in values.chunks_mut(2).enumerate() {
        let (u1, u2) = (uniform(2 * i as u64), uniform(2 * i as u64 + 1));
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        pair[0] = (r * theta.cos()) as f32 * std;
        if let Some(second) = pair.get_mut(1) {
            *second = (r * theta.sin()) as f32 * std;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn std_of(v: &[f32]) -> f64 {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        (v.iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt()
    }

    #[test]
    fn init_uses_t5_standard_deviations_and_is_seeded() {
        let config = T5Config::tiny_with(|c| {
            (c.vocab_size, c.d_model, c.d_kv, c.d_ff, c.num_heads) = (1000, 512, 64, 1024, 6);
        })
        .unwrap();
        let model = T5Model::init(config.clone(), 9);
        let p = model.params();
        let std = |name: &str| std_of(p.get(p.find(name).unwrap()));
        let close =
            |got: f64, want: f64| assert!((got / want - 1.0).abs() < 0.05, "{got} vs {want}");
        close(std("shared.weight"), 1.0);
        close(std("lm_head.weight"), 1.0);
        close(
            std("encoder.block.0.layer.0.SelfAttention.q.weight"),
            (512.0f64 * 64.0).powf(-0.5),
        );
        close(
            std("encoder.block.0.layer.0.SelfAttention.o.weight"),
            384.0f64.powf(-0.5),
        );
        close(
            std("decoder.block.0.layer.2.DenseReluDense.wo.weight"),
            1024.0f64.powf(-0.5),
        );
        assert!(p
            .get(p.find("encoder.final_layer_norm.weight").unwrap())
            .iter()
            .all(|&v| v == 1.0));
        assert_eq!(T5Model::init(config.clone(), 9).params().flat(), p.flat());
        assert_ne!(T5Model::init(config, 10).params().flat(), p.flat());
    }

    #[test]
    fn init_draws_the_same_bits_as_every_earlier_version() {
        let model = T5Model::init(T5Config::preset(tessera_t5_config::TINY_PRESET).unwrap(), 3);
        let p = model.params();
        let k = p.get(
            p.find("encoder.block.0.layer.0.SelfAttention.k.weight")
                .unwrap(),
        );
        let bits: Vec<u32> = k[..4].iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, [1025495058, 3160518128, 3186100132, 1033512402]);
    }
}
