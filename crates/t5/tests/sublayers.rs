//! Finite-difference checks of each sublayer's backward on its own: the
//! gradient with respect to its input `x`, to the encoder output (cross-
//! attention) and to the position bias, for encoder self-attention (two
//! sequences of different lengths), decoder self-attention (causal), cross-attention and the
//! feed-forward block, on random tiny configs, with dropout on or off.
//!
//! The probe is `L = Σ g ⊙ sublayer(x)` for a fixed random `g`. Central
//! differences with `h = 1e-3` in f32 (loss summed in f64) have rounding
//! error ≈ 1e-7·|L| / h ≈ 1e-4 here; we accept `|fd − g| ≤ 2e-3 + 2e-2·|g|`
//! and skip probes whose one-sided differences disagree (a ReLU kink).

use proptest::prelude::*;
use tessera_t5::attention::Seqs;
use tessera_t5::layers::{
    sublayer_backward, sublayer_forward, token_ids, DropoutPlan, EncoderView, GradSinks,
    ParamGrads, Site, StackContext,
};
use tessera_t5::precision::OperandRef;
use tessera_t5::{SublayerIds, SublayerKind, T5Config, T5Model};
use tessera_tensor::rng::SplitMix64;

fn config(seed: u64) -> T5Config {
    let ff = ["relu", "gated-gelu", "gated-relu"][(seed % 3) as usize];
    let json = format!(
        r#"{{"vocab_size": 16, "d_model": {}, "d_kv": 3, "d_ff": 7, "num_layers": 1,
        "num_heads": {}, "relative_attention_num_buckets": 4, "feed_forward_proj": "{ff}"}}"#,
        4 + (seed >> 2) % 4,
        1 + (seed >> 4) % 2,
    );
    T5Config::from_json(&json, "tiny").expect("valid config")
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.symmetric()).collect()
}

/// Tokens of the two query sequences, and of the two source sequences.
const LENS: [usize; 2] = [4, 2];
const SRC_LENS: [usize; 2] = [5, 3];
const LEN: usize = 4;

/// Inputs of one probe.
struct Probe {
    x: Vec<f32>,
    enc: Vec<f32>,
    bias: Vec<f32>,
    g: Vec<f32>,
}

impl Probe {
    fn slot(&mut self, what: &str, i: usize) -> &mut f32 {
        match what {
            "x" => &mut self.x[i],
            "encoder" => &mut self.enc[i],
            _ => &mut self.bias[i],
        }
    }
}

/// The query and source sequences, and the identities of the query tokens.
struct Layout {
    queries: Seqs,
    sources: Seqs,
    tokens: Vec<u64>,
    source_tokens: Vec<u64>,
}

fn layout() -> Layout {
    let queries = Seqs::new(LENS.to_vec());
    let tokens = token_ids(&[3, 8], &queries);
    let sources = Seqs::new(SRC_LENS.to_vec());
    let source_tokens = token_ids(&[3, 8], &sources);
    Layout {
        queries,
        sources,
        tokens,
        source_tokens,
    }
}

fn context<'a>(
    model: &'a T5Model,
    p: &'a Probe,
    m: &'a Layout,
    plan: DropoutPlan,
    decoder: bool,
) -> StackContext<'a> {
    StackContext {
        config: model.config(),
        weights: model.weights().with_dropout(plan),
        seqs: &m.queries,
        tokens: &m.tokens,
        causal: decoder,
        bias: &p.bias,
        encoder: Some(EncoderView {
            hidden: OperandRef::F32(&p.enc),
            seqs: &m.sources,
            tokens: &m.source_tokens,
        }),
    }
}

const SITE: Site = Site {
    stack: 1,
    block: 0,
    sublayer: 0,
};

/// `Σ g ⊙ sublayer(x)`.
fn probe_loss(
    model: &T5Model,
    ids: &SublayerIds,
    p: &Probe,
    plan: DropoutPlan,
    decoder: bool,
) -> f64 {
    let m = layout();
    let cx = context(model, p, &m, plan, decoder);
    let mut x = p.x.clone();
    sublayer_forward(&cx, SITE, ids, &mut x).expect("forward");
    x.iter()
        .zip(&p.g)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn sublayer_input_gradients_match_central_differences(seed in any::<u64>(), dropout in prop::bool::ANY) {
        let model = T5Model::init(config(seed), seed);
        let (d, h) = (model.config().d_model, model.config().num_heads);
        let plan = DropoutPlan { p: if dropout { 0.25 } else { 0.0 }, adapter_p: 0.0, seed };
        let block = &model.ids().decoder.blocks[0];
        let cases = [(model.ids().encoder.blocks[0][0], false), (block[0], true), (block[1], true), (block[2], true)];
        for (ids, decoder) in cases {
            let (rows, src) = (LENS.iter().sum::<usize>(), SRC_LENS.iter().sum::<usize>());
            let mut p = Probe {
                x: random(rows * d, seed ^ 1),
                enc: random(src * d, seed ^ 2),
                bias: random(h * (2 * LEN - 1), seed ^ 3),
                g: random(rows * d, seed ^ 4),
            };
            let m = layout();
            let cx = context(&model, &p, &m, plan, decoder);
            let mut x = p.x.clone();
            let cache = sublayer_forward(&cx, SITE, &ids, &mut x).expect("forward");
            let mut grads = model.new_gradients();
            let (mut dbias, mut denc, mut dx) = (vec![0.0; p.bias.len()], vec![0.0; p.enc.len()], p.g.clone());
            let mut sinks = GradSinks { grads: ParamGrads::Full(&mut grads), dbias: &mut dbias, dencoder: Some(&mut denc) };
            sublayer_backward(&cx, SITE, &ids, &cache, &mut dx, &mut sinks).expect("backward");
            let kind = match ids.kind {
                SublayerKind::SelfAttention(_) => "self-attention",
                SublayerKind::CrossAttention(_) => "cross-attention",
                SublayerKind::FeedForward(_) => "feed-forward",
            };
            let center = probe_loss(&model, &ids, &p, plan, decoder);
            let step = 1e-3f32;
            for (what, analytic) in [("x", &dx), ("encoder", &denc), ("bias", &dbias)] {
                for i in (0..analytic.len()).step_by(3) {
                    *p.slot(what, i) += step;
                    let up = probe_loss(&model, &ids, &p, plan, decoder);
                    *p.slot(what, i) -= 2.0 * step;
                    let down = probe_loss(&model, &ids, &p, plan, decoder);
                    *p.slot(what, i) += step;
                    let (right, left) = ((up - center) / f64::from(step), (center - down) / f64::from(step));
                    if (right - left).abs() > 2e-3 + 2e-2 * right.abs() {
                        continue;
                    }
                    let fd = (up - down) / (2.0 * f64::from(step));
                    let g = f64::from(analytic[i]);
                    prop_assert!((fd - g).abs() <= 2e-3 + 2e-2 * g.abs(),
                        "{kind} d{what}[{i}]: finite difference {fd} vs backward {g}");
                }
            }
        }
    }
}
