//! The T5 attention suite: the fused kernels of `tessera_tensor::attention`
//! against the unfused matmul + softmax + matmul path
//! (`tessera_tensor::attention::unfused`).
//!
//! Shapes are Flan-T5 small/base heads (6 or 12 of width 64) over a batch
//! of 16: encoder self-attention (position bias, padded keys) forward and
//! forward + backward at 64 to 512 positions, and decoder cross-attention
//! (no bias, padded encoder keys) with 1 query row (generation) or 5 (a
//! classification target) over 64 to 512 encoder positions.
//!
//! The keys of sequence `b` are a padded batch's: `k_len` rows reserved,
//! the first `k_len - b·k_len/64` real (a cache layout, [`SeqRows`] with a
//! capacity), each sequence with all `q_len` query rows. Both paths get the
//! same bias values: the fused kernels in the relative layout the model
//! uses (`[heads, 2L - 1]`, one entry per offset), the unfused path
//! expanded to the dense `[heads, L, L]`.

use tessera_tensor::attention::{
    backward, decode, forward, unfused, Attention, AttentionGradsMut, Bias, BiasLayout,
    ProbDropout, Qkv, SeqRows, Seqs,
};
use tessera_tensor::Result;

/// What one timed call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The forward only.
    Forward,
    /// The forward, then the backward with every gradient.
    ForwardBackward,
}

impl Pass {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "fwd",
            Pass::ForwardBackward => "fwd+bwd",
        }
    }
}

/// One case of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// `"encoder"` (self-attention with bias) or `"cross"` (decoder onto encoder).
    pub kind: &'static str,
    /// Heads.
    pub heads: usize,
    /// Query rows.
    pub q_len: usize,
    /// Keys.
    pub k_len: usize,
    /// What is timed.
    pub pass: Pass,
}

/// Sequences per batch in every case.
pub const BATCH: usize = 16;
/// Head width of Flan-T5.
pub const D_HEAD: usize = 64;

/// The whole suite, in report order.
pub fn suite() -> Vec<Spec> {
    let mut all = Vec::new();
    for heads in [6, 12] {
        for len in [64, 128, 268, 512] {
            for pass in [Pass::Forward, Pass::ForwardBackward] {
                all.push(Spec {
                    kind: "encoder",
                    heads,
                    q_len: len,
                    k_len: len,
                    pass,
                });
            }
        }
        for (q_len, pass) in [
            (1, Pass::Forward),
            (5, Pass::Forward),
            (5, Pass::ForwardBackward),
        ] {
            for k_len in [64, 268, 512] {
                all.push(Spec {
                    kind: "cross",
                    heads,
                    q_len,
                    k_len,
                    pass,
                });
            }
        }
    }
    all
}

/// Inputs and output buffers of one case.
pub struct Case {
    /// The case.
    pub spec: Spec,
    inputs: Inputs,
    out: Outputs,
}

/// What every implementation reads.
struct Inputs {
    heads: usize,
    queries: Seqs,
    k_starts: Vec<usize>,
    k_lens: Vec<usize>,
    k_capacity: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Relative layout, for the fused kernels.
    bias: Option<Vec<f32>>,
    /// The same values expanded to the dense layout, for the unfused path.
    dense_bias: Option<Vec<f32>>,
    dout: Vec<f32>,
}

/// Where the fused kernels write.
struct Outputs {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    /// Relative layout (fused).
    dbias: Vec<f32>,
    /// Dense layout (unfused).
    dense_dbias: Vec<f32>,
}

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

impl Inputs {
    /// The call, with the bias in the relative layout or (`dense`) expanded.
    fn attention(&self, dense: bool) -> Attention<'_> {
        let bias = if dense {
            self.dense_bias.as_deref().map(Bias::Dense)
        } else {
            self.bias.as_deref().map(Bias::Relative)
        };
        Attention {
            heads: self.heads,
            d_head: D_HEAD,
            queries: self.queries.rows(),
            keys: SeqRows {
                starts: &self.k_starts,
                lens: &self.k_lens,
                capacity: Some(self.k_capacity),
            },
            qkv: Qkv {
                q: &self.q,
                k: &self.k,
                v: &self.v,
            },
            bias,
            causal: false,
            dropout: ProbDropout::OFF,
        }
    }
}

impl Case {
    /// Random inputs; sequence `b` has `k_len - b·k_len/64` real keys (the
    /// padding of a batch padded to its longest row).
    pub fn new(spec: Spec) -> Case {
        let k_lens: Vec<usize> = (0..BATCH)
            .map(|b| spec.k_len - b * spec.k_len / 64)
            .collect();
        let mut inputs = Inputs {
            heads: spec.heads,
            queries: Seqs::new(vec![spec.q_len; BATCH]),
            k_starts: (0..BATCH).map(|b| b * spec.k_len).collect(),
            k_lens,
            k_capacity: spec.k_len,
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            bias: None,
            dense_bias: None,
            dout: Vec::new(),
        };
        let a = inputs.attention(false);
        let (q, kv, shape) = (a.q_elems(), a.kv_elems(), a.bias_shape());
        let (lse, relative, dense) = (
            a.lse_elems(),
            BiasLayout::Relative.len(shape),
            BiasLayout::Dense.len(shape),
        );
        let bias = (spec.kind == "encoder").then(|| values(relative, 4, 2.0));
        inputs.dense_bias = bias.as_ref().map(|b| {
            let (mq, mk) = (shape.max_q, shape.max_k);
            (0..shape.heads)
                .flat_map(|h| (0..mq).flat_map(move |i| (0..mk).map(move |j| (h, i, j))))
                .map(|(h, i, j)| b[BiasLayout::Relative.index(shape, h, i, j)])
                .collect()
        });
        (inputs.q, inputs.k, inputs.v, inputs.dout, inputs.bias) = (
            values(q, 1, 0.5),
            values(kv, 2, 0.5),
            values(kv, 3, 1.0),
            values(q, 5, 1.0),
            bias,
        );
        let out = Outputs {
            out: vec![0.0; q],
            lse: vec![0.0; lse],
            dq: vec![0.0; q],
            dk: vec![0.0; kv],
            dv: vec![0.0; kv],
            dbias: vec![0.0; relative],
            dense_dbias: vec![0.0; dense],
        };
        Case { spec, inputs, out }
    }

    /// One call of the fused kernels (the decode kernel for one query row).
    pub fn run_fused(&mut self) -> Result<()> {
        let (a, o) = (self.inputs.attention(false), &mut self.out);
        if self.spec.q_len == 1 && self.spec.pass == Pass::Forward {
            return decode(&a, &mut o.out);
        }
        forward(&a, &mut o.out, &mut o.lse)?;
        if self.spec.pass == Pass::ForwardBackward {
            let grads = AttentionGradsMut {
                dq: &mut o.dq,
                dk: &mut o.dk,
                dv: &mut o.dv,
                dbias: a.bias.is_some().then_some(&mut o.dbias[..]),
            };
            backward(&a, (&o.out, &o.lse), &self.inputs.dout, grads)?;
        }
        Ok(())
    }

    /// One call of the unfused path (dense probabilities, batched matmuls),
    /// as the model ran it before the fused kernels.
    pub fn run_unfused(&mut self) -> Result<()> {
        let (a, o) = (self.inputs.attention(true), &mut self.out);
        let probs = unfused::forward(&a, &mut o.out)?;
        if self.spec.pass == Pass::ForwardBackward {
            let grads = AttentionGradsMut {
                dq: &mut o.dq,
                dk: &mut o.dk,
                dv: &mut o.dv,
                dbias: a.bias.is_some().then_some(&mut o.dense_dbias[..]),
            };
            unfused::backward(&a, &probs, &self.inputs.dout, grads)?;
        }
        Ok(())
    }
}
