//! Finite-difference checks of the hand-written backward on random tiny
//! models, and invariants of the training pass.
//!
//! Every parameter tensor of every layer is probed (its gradient flows
//! through that layer's backward and every layer above it), with dropout on
//! in some cases: the counter-based masks do not depend on the values, so a
//! fixed seed makes the loss a smooth function of the weights.
//!
//! Tolerance: central differences with step `h = 1e-3` on an f32 loss of
//! order 1 have truncation error `O(h²·f''') ≈ 1e-6` and rounding error
//! `≈ 3e-7 / h ≈ 3e-4` on these small, well-conditioned models (init std
//! scaled by 0.5); a wrong backward is off by O(|g|). We accept
//! `|fd − g| ≤ 2e-3 + 2e-2·|g|`. ReLU is not differentiable at 0: a probe
//! whose step crosses a kink shows as disagreeing one-sided differences and
//! is skipped (at most one probe in ten, which the test also checks).

use proptest::prelude::*;
use tessera_t5::{Batch, CrossEntropy, Precision, T5Config, T5Model, TrainOptions};

/// A random tiny config (odd shapes: inner ≠ d_model, decoder depth ≠ encoder depth).
fn tiny_config(seed: u64) -> T5Config {
    let pick = |i: u64, n: u64| ((seed >> (i * 4)) % n) as usize;
    let ff = ["relu", "gated-gelu", "gated-relu"][pick(0, 3)];
    let json = format!(
        r#"{{"vocab_size": {}, "d_model": {}, "d_kv": {}, "d_ff": {}, "num_layers": {},
        "num_decoder_layers": {}, "num_heads": {}, "relative_attention_num_buckets": {},
        "relative_attention_max_distance": {}, "dropout_rate": 0.0, "feed_forward_proj": "{ff}",
        "tie_word_embeddings": {}, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}}"#,
        11 + pick(1, 5),
        4 + pick(2, 5),
        2 + pick(3, 3),
        3 + pick(4, 5),
        1 + pick(5, 2),
        1 + pick(6, 2),
        1 + pick(7, 3),
        4 + pick(8, 5),
        6 + pick(9, 6),
        pick(10, 2) == 0,
    );
    T5Config::from_json(&json, "tiny").expect("valid tiny config")
}

/// A batch from a padded layout: row 0 full, later rows shorter; some labels -100.
fn tiny_batch(config: &T5Config, seed: u64) -> Batch {
    let (b, s, t) = (2, 5, 4);
    let mut state = seed | 1;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let input_ids: Vec<u32> = (0..b * s)
        .map(|_| 2 + next(config.vocab_size - 2) as u32)
        .collect();
    let attention_mask: Vec<u8> = (0..b * s).map(|i| u8::from(i < s || i % s < 3)).collect();
    let labels: Vec<i64> = (0..b * t)
        .map(|i| {
            if i >= t && i % t == t - 1 {
                -100
            } else {
                next(config.vocab_size) as i64
            }
        })
        .collect();
    Batch::from_padded(&input_ids, &attention_mask, &labels, b).expect("right padding")
}

fn tiny_model(seed: u64) -> T5Model {
    let mut model = T5Model::init(tiny_config(seed), seed);
    for v in model.params_mut().flat_mut() {
        *v *= 0.5;
    }
    model
}

fn loss(model: &T5Model, batch: &Batch, opts: &TrainOptions) -> f64 {
    let mut g = model.new_gradients();
    let ce = model
        .forward_backward(batch, &mut g, opts)
        .expect("forward");
    ce.sum / ce.count as f64
}

/// Probes three elements of every trainable tensor (every weight, or the
/// LoRA adapters) with central differences against the backward.
fn check_central_differences(
    model: &mut T5Model,
    batch: &Batch,
    opts: &TrainOptions,
) -> Result<(), TestCaseError> {
    let mut grads = model.new_gradients();
    model
        .forward_backward(batch, &mut grads, opts)
        .expect("backward");
    let h = 1e-3f32;
    let center = loss(model, batch, opts);
    let ids: Vec<_> = model.trainable().ids().collect();
    let (mut probes, mut kinks) = (0, 0);
    for id in ids {
        let n = model.trainable().get(id).len();
        let name = model.trainable().entry(id).name.clone();
        for probe in [0, n / 2, n - 1] {
            let orig = model.trainable().get(id)[probe];
            model.trainable_mut().get_mut(id)[probe] = orig + h;
            let up = loss(model, batch, opts);
            model.trainable_mut().get_mut(id)[probe] = orig - h;
            let down = loss(model, batch, opts);
            model.trainable_mut().get_mut(id)[probe] = orig;
            let (right, left) = ((up - center) / f64::from(h), (center - down) / f64::from(h));
            probes += 1;
            if (right - left).abs() > 2e-3 + 2e-2 * right.abs() {
                kinks += 1;
                continue;
            }
            let fd = (up - down) / (2.0 * f64::from(h));
            let g = f64::from(grads.get(id)[probe]);
            prop_assert!(
                (fd - g).abs() <= 2e-3 + 2e-2 * g.abs(),
                "{name}[{probe}]: finite difference {fd} vs backward {g}"
            );
        }
    }
    prop_assert!(
        kinks * 10 <= probes,
        "{kinks} of {probes} probes hit a ReLU kink"
    );
    Ok(())
}

/// Rows of a batch: example id, source tokens, target ids.
type Rows = Vec<(u64, Vec<u32>, Vec<i64>)>;

/// `batch` (made of `rows`) gives the loss and every trainable gradient its
/// rows give one by one (≤ 1e-5 relative): dropout masks follow tokens, not
/// batches. Returns the batch's loss.
fn assert_rows_add_up(
    model: &T5Model,
    batch: &Batch,
    rows: &Rows,
    opts: &TrainOptions,
) -> CrossEntropy {
    let mut together = model.new_gradients();
    let loss = model
        .forward_backward(batch, &mut together, opts)
        .expect("batch");
    let mut alone = model.new_gradients();
    let mut sum = 0.0;
    for (e, s, t) in rows {
        let one = Batch::new([(*e, &s[..], &t[..])]);
        sum += model
            .forward_backward(&one, &mut alone, opts)
            .expect("row")
            .sum;
    }
    assert!(
        (loss.sum - sum).abs() <= 1e-5 * sum.abs(),
        "{} vs {sum}",
        loss.sum
    );
    for ((entry, a), (_, b)) in together.iter().zip(alone.iter()) {
        let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        let err = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale;
        assert!(err <= 1e-5, "{}: relative error {err:.2e}", entry.name);
    }
    loss
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn every_parameter_gradient_matches_central_differences(seed in any::<u64>(), dropout in prop::bool::ANY) {
        let mut model = tiny_model(seed);
        let batch = tiny_batch(model.config(), seed);
        let mut opts = TrainOptions::from_config(model.config());
        opts.dropout = if dropout { 0.2 } else { 0.0 };
        opts.seed = seed;
        check_central_differences(&mut model, &batch, &opts)?;
    }
}

#[test]
fn recomputation_and_dropout_seeds_behave() {
    let model = tiny_model(42);
    let batch = tiny_batch(model.config(), 42);
    let mut opts = TrainOptions::from_config(model.config());
    opts.dropout = 0.3;
    opts.seed = 7;
    let run = |opts: &TrainOptions| {
        let mut g = model.new_gradients();
        let ce = model
            .forward_backward(&batch, &mut g, opts)
            .expect("backward");
        (ce, g)
    };
    let (a, ga) = run(&opts);
    opts.recompute_blocks = true;
    let (b, gb) = run(&opts);
    assert_eq!(a, b);
    assert_eq!(
        ga.flat(),
        gb.flat(),
        "recomputation must reproduce dropout masks"
    );
    opts.seed = 8;
    let (c, _) = run(&opts);
    assert_ne!(a.sum, c.sum, "another seed gives other masks");
    let eval = model.forward(&batch).expect("forward").loss;
    opts.dropout = 0.0;
    let (d, _) = run(&opts);
    assert!((eval.sum - d.sum).abs() < 1e-5 * eval.sum.abs().max(1.0));
}

#[test]
fn loss_divisor_scales_gradients_and_gradients_accumulate() {
    let model = tiny_model(3);
    let batch = tiny_batch(model.config(), 3);
    let mut opts = TrainOptions::from_config(model.config());
    opts.dropout = 0.0;
    let mut mean = model.new_gradients();
    let ce = model
        .forward_backward(&batch, &mut mean, &opts)
        .expect("backward");
    opts.loss_divisor = Some(2.0 * ce.count as f32);
    let mut half = model.new_gradients();
    model
        .forward_backward(&batch, &mut half, &opts)
        .expect("backward");
    model
        .forward_backward(&batch, &mut half, &opts)
        .expect("backward");
    for (a, b) in mean.flat().iter().zip(half.flat()) {
        assert!((a - b).abs() <= 1e-6 + 1e-5 * a.abs(), "{a} vs {b}");
    }
}

#[test]
fn bad_batches_are_errors() {
    let model = tiny_model(5);
    let mut batch = tiny_batch(model.config(), 5);
    batch.input_ids[0] = 10_000;
    let err = model.forward(&batch).unwrap_err().to_string();
    assert!(err.contains("input id 10000"), "{err}");
    let mut batch = tiny_batch(model.config(), 5);
    batch.labels[1] = -5;
    assert!(model
        .forward(&batch)
        .unwrap_err()
        .to_string()
        .contains("label -5"));
    let mut batch = tiny_batch(model.config(), 5);
    batch.src_lens[0] += 1;
    assert!(model
        .forward(&batch)
        .unwrap_err()
        .to_string()
        .contains("input_ids"));
    let mut batch = tiny_batch(model.config(), 5);
    batch.src_lens[1] = 0;
    assert!(model
        .forward(&batch)
        .unwrap_err()
        .to_string()
        .contains("empty source"));
    let left_padded = Batch::from_padded(&[0, 5, 6], &[0, 1, 1], &[7], 1);
    assert!(left_padded
        .unwrap_err()
        .to_string()
        .contains("only right padding"));
}

#[test]
fn cached_generation_equals_greedy_full_forward() {
    for seed in [1u64, 2, 3, 4] {
        let mut model = T5Model::init(tiny_config(seed), seed);
        for v in model.params_mut().flat_mut() {
            *v *= 2.0;
        }
        let batch = tiny_batch(model.config(), seed);
        let max_new = 6;
        let sources = batch.source_rows();
        let rows = model.generate(&sources, max_new).expect("generate");
        let c = model.config().clone();
        for (b, row) in rows.iter().enumerate() {
            assert_eq!(row[0], c.decoder_start_token_id);
            // Re-decode this row alone from scratch at every step.
            for t in 1..row.len() {
                let labels: Vec<i64> = row[1..=t].iter().map(|&x| i64::from(x)).collect();
                let one = Batch::new([(0, sources[b], &labels[..])]);
                let logits = model.forward(&one).expect("forward").logits;
                let last = &logits[(t - 1) * c.vocab_size..];
                let best = (0..c.vocab_size).fold(0, |i, j| if last[j] > last[i] { j } else { i });
                let finished = row[1..t].contains(&c.eos_token_id);
                let want = if finished {
                    c.pad_token_id
                } else {
                    best as u32
                };
                assert_eq!(row[t], want, "seed {seed} row {b} step {t}");
            }
        }
    }
}

/// An evaluation's single encoder pass serves both halves: its loss is the
/// forward's and its generation, which attends to the cross-attention keys
/// and values the loss pass projected, is `generate`'s, in f32 and in the
/// 16-bit precisions (where those keys are kept rounded).
#[test]
fn scoring_and_generating_from_one_encoder_pass_matches_each_alone() {
    for precision in [Precision::F32, Precision::Bf16, Precision::Fp16] {
        // Seeds whose decoder has two blocks, so handing a block another's keys shows.
        for seed in [5u64, 6, 7, 9].map(|s| s | 1 << 24) {
            let mut model = T5Model::init(tiny_config(seed), seed);
            assert_eq!(model.config().num_decoder_layers, Some(2));
            model
                .params_mut()
                .flat_mut()
                .iter_mut()
                .for_each(|v| *v *= 2.0);
            model.set_precision(precision);
            let batch = tiny_batch(model.config(), seed);
            let generator = model.generator().expect("generator");
            let (loss, rows) = generator
                .score_and_generate(&batch, 5)
                .expect("score and generate");
            let alone = model.generate(&batch.source_rows(), 5).expect("generate");
            assert_eq!(rows, alone, "{precision} seed {seed}: generation");
            let forward = model.forward(&batch).expect("forward").loss;
            assert_eq!(loss, forward, "{precision} seed {seed}: loss");
        }
    }
}

/// A packed batch computes what its rows compute alone: the same loss, the
/// same logits at every position and the same gradients (summed over the
/// rows), with dropout on, because every mask is keyed by the example and
/// position of its token rather than by where the row sits. Rows of very
/// different lengths, a one-token row, and a batch of one.
#[test]
fn a_packed_batch_computes_what_its_rows_compute_alone() {
    let model = tiny_model(11);
    let c = model.config().clone();
    let source = |n: usize, salt: usize| -> Vec<u32> {
        (0..n)
            .map(|i| 2 + ((i * 31 + salt * 7) % (c.vocab_size - 2)) as u32)
            .collect()
    };
    let target = |n: usize, salt: usize| -> Vec<i64> {
        (0..n)
            .map(|i| ((i * 13 + salt) % c.vocab_size) as i64)
            .collect()
    };
    let rows: Rows = vec![
        (40, source(23, 1), target(3, 1)),
        (7, source(1, 2), target(1, 2)),
        (12, source(9, 3), target(6, 3)),
    ];
    let batch = Batch::new(rows.iter().map(|(e, s, t)| (*e, &s[..], &t[..])));
    let mut opts = TrainOptions::from_config(&c);
    opts.dropout = 0.3;
    opts.seed = 99;
    let total = batch.labels.len() as f32;
    opts.loss_divisor = Some(total);
    let loss = assert_rows_add_up(&model, &batch, &rows, &opts);
    // Evaluation logits too, and a batch of one row is a batch.
    let out = model.forward(&batch).expect("forward");
    let mut at = 0;
    for (e, s, t) in &rows {
        let one = model
            .forward(&Batch::new([(*e, &s[..], &t[..])]))
            .expect("row");
        let n = one.logits.len();
        let scale = one.logits.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        let err = out.logits[at..at + n]
            .iter()
            .zip(&one.logits)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale;
        assert!(err <= 1e-5, "example {e}: logits differ by {err:.2e}");
        at += n;
    }
    // A different example id draws different masks.
    let mut other = batch.clone();
    other.examples[0] += 1;
    let mut g = model.new_gradients();
    let moved = model
        .forward_backward(&other, &mut g, &opts)
        .expect("batch");
    assert_ne!(moved.sum, loss.sum);
}

/// `model` with LoRA adapters (rank 2, alpha 3) on every linear kind its
/// feed-forward has, `B` drawn non-zero, and adapter dropout `p`.
fn adapted(mut model: T5Model, seed: u64, p: f32) -> T5Model {
    use tessera_t5::lora::LORA_TARGETS;
    let gated = model.config().feed_forward_proj.is_gated();
    let targets = LORA_TARGETS
        .iter()
        .filter(|t| {
            if gated {
                **t != "wi"
            } else {
                !t.starts_with("wi_")
            }
        })
        .map(|t| t.to_string())
        .collect();
    let config = tessera_t5::LoraConfig {
        rank: 2,
        alpha: 3.0,
        dropout: p,
        targets,
    };
    model.add_lora(config, seed).expect("every kind matches");
    let mut draw = tessera_tensor::rng::SplitMix64::new(seed);
    for v in model.trainable_mut().flat_mut() {
        *v = 0.5 * draw.symmetric();
    }
    model
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    #[test]
    fn every_adapter_gradient_matches_central_differences(seed in any::<u64>(), p in prop_oneof![Just(0.0f32), Just(0.3)]) {
        let mut model = adapted(tiny_model(seed), seed, p);
        let batch = tiny_batch(model.config(), seed);
        let mut opts = TrainOptions::from_config(model.config());
        opts.dropout = 0.1;
        opts.seed = seed;
        check_central_differences(&mut model, &batch, &opts)?;
        // The base is frozen: the gradients are the adapters' alone.
        let grads = model.new_gradients();
        prop_assert_eq!(grads.entries(), model.lora().expect("lora").adapters().entries());
    }
}

#[test]
fn adapter_dropout_follows_tokens_not_batches() {
    let model = adapted(tiny_model(5), 5, 0.4);
    let c = model.config().clone();
    let rows: Rows = (0..3u64)
        .map(|r| {
            let n = [7, 1, 4][r as usize];
            let src = (0..n).map(|i| 2 + ((i * 5 + r as usize) % (c.vocab_size - 2)) as u32);
            let tgt = (0..3).map(|i| ((i * 3 + r as usize) % c.vocab_size) as i64);
            (10 + r, src.collect(), tgt.collect())
        })
        .collect();
    let batch = Batch::new(rows.iter().map(|(e, s, t)| (*e, &s[..], &t[..])));
    let mut opts = TrainOptions::from_config(&c);
    opts.seed = 3;
    opts.loss_divisor = Some(batch.labels.len() as f32);
    let loss = assert_rows_add_up(&model, &batch, &rows, &opts);
    // The masks are drawn: without adapter dropout the loss is another.
    let plain = adapted(tiny_model(5), 5, 0.0);
    let mut g = plain.new_gradients();
    let other = plain
        .forward_backward(&batch, &mut g, &opts)
        .expect("batch");
    assert_ne!(other.sum, loss.sum);
}
