//! The fused kernels against a naive f64 reference (random shapes, masks
//! with all-padding rows, one key, causality, every gradient including the
//! bias), against the PyTorch attention fixtures, and across thread counts.

use super::*;
use crate::rng::SplitMix64;
use proptest::prelude::*;

/// A random attention problem with owned buffers: packed queries, keys
/// packed or in a cache with room to grow.
#[derive(Debug, Clone)]
struct Case {
    heads: usize,
    d: usize,
    queries: Seqs,
    k_starts: Vec<usize>,
    k_lens: Vec<usize>,
    capacity: Option<usize>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    bias: Option<Vec<f32>>,
    layout: BiasLayout,
    causal: bool,
    p: f32,
    key: u64,
    rows: Vec<u64>,
    dout: Vec<f32>,
}

impl Case {
    /// Sequences of `q_lens` queries and `k_lens` keys; keys packed, or
    /// `capacity` rows apart per head when given; a dense bias if `with_bias`.
    fn new(
        (heads, d): (usize, usize),
        (q_lens, k_lens, capacity): (Vec<usize>, Vec<usize>, Option<usize>),
        (causal, with_bias): (bool, bool),
        seed: u64,
    ) -> Case {
        let mut st = SplitMix64::new(seed);
        let mut fill =
            |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| st.symmetric() * scale).collect() };
        let queries = Seqs::new(q_lens);
        let k_starts = match capacity {
            Some(c) => (0..k_lens.len()).map(|b| b * c).collect(),
            None => Seqs::new(k_lens.clone()).starts().to_vec(),
        };
        let mut case = Case {
            heads,
            d,
            queries,
            k_starts,
            k_lens,
            capacity,
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            bias: None,
            layout: BiasLayout::Dense,
            causal,
            p: 0.0,
            key: 0,
            rows: Vec::new(),
            dout: Vec::new(),
        };
        let (q, kv) = (case.attention().q_elems(), case.attention().kv_elems());
        let bias_len = BiasLayout::Dense.len(case.attention().bias_shape());
        case.q = fill(q, 0.8);
        case.k = fill(kv, 0.8);
        case.v = fill(kv, 1.0);
        case.bias = with_bias.then(|| fill(bias_len, 2.0));
        case.dout = fill(q, 1.0);
        case.rows = (0..case.queries.total() as u64)
            .map(|r| r * 7 + 3)
            .collect();
        case
    }

    /// The same case with a random relative bias (`[heads, max_q + max_k - 1]`) instead.
    fn relative(mut self, seed: u64) -> Case {
        let mut st = SplitMix64::new(seed);
        let n = BiasLayout::Relative.len(self.attention().bias_shape());
        self.bias = Some((0..n).map(|_| st.symmetric() * 2.0).collect());
        self.layout = BiasLayout::Relative;
        self
    }

    /// The same case with dropout `p` on the probabilities.
    fn dropped(mut self, p: f32, key: u64) -> Case {
        (self.p, self.key) = (p, key);
        self
    }

    fn bias_index(&self, h: usize, i: usize, j: usize) -> usize {
        self.layout.index(self.attention().bias_shape(), h, i, j)
    }

    fn keys(&self) -> SeqRows<'_> {
        SeqRows {
            starts: &self.k_starts,
            lens: &self.k_lens,
            capacity: self.capacity,
        }
    }

    fn attention(&self) -> Attention<'_> {
        Attention {
            heads: self.heads,
            d_head: self.d,
            queries: self.queries.rows(),
            keys: self.keys(),
            qkv: Qkv {
                q: &self.q,
                k: &self.k,
                v: &self.v,
            },
            bias: self.bias.as_deref().map(|v| match self.layout {
                BiasLayout::Dense => Bias::Dense(v),
                BiasLayout::Relative => Bias::Relative(v),
            }),
            causal: self.causal,
            dropout: ProbDropout {
                p: self.p,
                key: self.key,
                rows: &self.rows,
            },
        }
    }

    /// The bias as a dense `[heads, max_q, max_k]` array.
    fn dense_bias(&self) -> Option<Vec<f32>> {
        let s = self.attention().bias_shape();
        self.bias.as_ref().map(|b| {
            (0..s.heads)
                .flat_map(|h| (0..s.max_q).flat_map(move |i| (0..s.max_k).map(move |j| (h, i, j))))
                .map(|(h, i, j)| b[self.bias_index(h, i, j)])
                .collect()
        })
    }
}

/// Outputs of one forward + backward.
#[derive(Debug, PartialEq)]
struct Results {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dbias: Vec<f32>,
}

fn run_fused(isa: Isa, c: &Case) -> Results {
    let a = c.attention();
    let mut out = vec![f32::NAN; a.q_elems()];
    let mut lse = vec![f32::NAN; a.lse_elems()];
    forward_with(isa, &a, &mut out, &mut lse).expect("forward");
    with_gradients(c, out, lse, |grads, out, lse| {
        backward_with(isa, &a, (out, lse), &c.dout, grads)
    })
}

/// Runs `backward` into fresh (NaN-filled) gradient buffers and collects
/// everything into [`Results`].
fn with_gradients(
    c: &Case,
    out: Vec<f32>,
    lse: Vec<f32>,
    backward: impl FnOnce(AttentionGradsMut<'_>, &[f32], &[f32]) -> Result<()>,
) -> Results {
    let a = c.attention();
    let (mut dq, mut dk, mut dv) = (
        vec![f32::NAN; a.q_elems()],
        vec![f32::NAN; a.kv_elems()],
        vec![f32::NAN; a.kv_elems()],
    );
    let mut dbias = vec![0.0; c.layout.len(a.bias_shape())];
    let grads = AttentionGradsMut {
        dq: &mut dq,
        dk: &mut dk,
        dv: &mut dv,
        dbias: Some(&mut dbias),
    };
    backward(grads, &out, &lse).expect("backward");
    Results {
        out,
        lse,
        dq,
        dk,
        dv,
        dbias,
    }
}

/// The reference in f64: dense scores, softmax, products, textbook backward,
/// one (sequence, head) at a time.
fn reference(c: &Case) -> [Vec<f64>; 6] {
    let a = c.attention();
    let d = c.d;
    let mut out = vec![0.0; a.q_elems()];
    let mut lse = vec![f64::NEG_INFINITY; a.lse_elems()];
    let mut dq = vec![0.0; a.q_elems()];
    let (mut dk, mut dv) = (vec![0.0; a.kv_elems()], vec![0.0; a.kv_elems()]);
    let mut dbias = vec![0.0; c.layout.len(a.bias_shape())];
    let f = |x: f32| f64::from(x);
    for bh in 0..a.pairs() {
        let h = bh % c.heads;
        let (lq, lk) = (a.q_len(bh), a.k_len(bh));
        let (qb, kb, lb) = (a.q_base(bh, d), a.k_base(bh), a.q_base(bh, 1));
        let q = |i: usize, p: usize| f(c.q[qb + i * d + p]);
        let k = |j: usize, p: usize| f(c.k[kb + j * d + p]);
        let v = |j: usize, p: usize| f(c.v[kb + j * d + p]);
        let go = |i: usize, p: usize| f(c.dout[qb + i * d + p]);
        for i in 0..lq {
            let visible = |j: usize| !(c.causal && j > i);
            let score: Vec<f64> = (0..lk)
                .map(|j| {
                    let bias = c
                        .bias
                        .as_ref()
                        .map_or(0.0, |bs| f(bs[c.bias_index(h, i, j)]));
                    (0..d).map(|p| q(i, p) * k(j, p)).sum::<f64>() + bias
                })
                .collect();
            let max = (0..lk)
                .filter(|&j| visible(j))
                .map(|j| score[j])
                .fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                continue;
            }
            let e: Vec<f64> = (0..lk)
                .map(|j| {
                    if visible(j) {
                        (score[j] - max).exp()
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = e.iter().sum();
            lse[lb + i] = max + total.ln();
            let p: Vec<f64> = e.iter().map(|x| x / total).collect();
            // The dropout mask times its scale for this row.
            let mut kept = vec![1.0f32; lk];
            a.drop_probs(bh, i, 0, &mut kept);
            let m = |j: usize| f(kept[j]);
            let dp: Vec<f64> = (0..lk)
                .map(|j| (0..d).map(|x| go(i, x) * v(j, x)).sum::<f64>() * m(j))
                .collect();
            let dot: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for j in 0..lk {
                let ds = p[j] * (dp[j] - dot);
                if c.bias.is_some() || c.layout == BiasLayout::Dense {
                    dbias[c.bias_index(h, i, j)] += ds;
                }
                for x in 0..d {
                    out[qb + i * d + x] += p[j] * m(j) * v(j, x);
                    dv[kb + j * d + x] += p[j] * m(j) * go(i, x);
                    dq[qb + i * d + x] += ds * k(j, x);
                    dk[kb + j * d + x] += ds * q(i, x);
                }
            }
        }
    }
    [out, lse, dq, dk, dv, dbias]
}

/// `max |got - want| / max(max |want|, 1)`, with infinities required to agree.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(
        1.0f64,
        |m, x| if x.is_finite() { m.max(x.abs()) } else { m },
    );
    got.iter().zip(want).fold(0.0, |e, (&g, &w)| {
        assert!(!g.is_nan(), "NaN where {w} was expected");
        if w.is_infinite() {
            assert_eq!(f64::from(g), w);
            e
        } else {
            e.max((f64::from(g) - w).abs() / scale)
        }
    })
}

fn check_against_reference(c: &Case) {
    let want = reference(c);
    for isa in Isa::available() {
        let got = run_fused(isa, c);
        let names = ["out", "lse", "dq", "dk", "dv", "dbias"];
        let gots = [&got.out, &got.lse, &got.dq, &got.dk, &got.dv, &got.dbias];
        for ((name, g), w) in names.iter().zip(gots).zip(&want) {
            let e = rel_err(g, w);
            assert!(
                e < 2e-5,
                "{isa:?} {name}: relative error {e:.2e} for queries {:?} keys {:?}",
                c.queries.lens(),
                c.k_lens
            );
        }
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (1usize..=4, 1usize..=3, 1usize..=20)
        .prop_flat_map(|(seqs, heads, d)| {
            let lens = proptest::collection::vec(0usize..=80, seqs);
            (
                Just((heads, d)),
                lens.clone(),
                proptest::option::of(lens),
                proptest::option::of(0usize..=3),
                any::<(bool, bool, bool, bool, u64)>(),
            )
        })
        .prop_map(
            |((heads, d), q_lens, k_lens, extra, (causal, bias, relative, drop, seed))| {
                // Self-attention (keys = queries) or keys of their own lengths.
                let k_lens = k_lens.unwrap_or_else(|| q_lens.clone());
                let capacity = extra.map(|e| k_lens.iter().copied().max().unwrap_or(0) + e);
                let case = Case::new((heads, d), (q_lens, k_lens, capacity), (causal, bias), seed);
                let case = if bias && relative {
                    case.relative(seed ^ 1)
                } else {
                    case
                };
                if drop {
                    case.dropped(0.2, seed ^ 2)
                } else {
                    case
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn fused_matches_f64_reference(c in case_strategy()) {
        check_against_reference(&c);
    }
}

#[test]
fn t5_head_width_and_tile_edges_match_reference() {
    // d = 64 as in Flan-T5; 70 and 131 keys leave partial tiles of 6 and 3.
    for (lq, lk, causal) in [(70, 70, true), (9, 131, false), (131, 1, false)] {
        let c = Case::new(
            (2, 64),
            (vec![lq, lq / 2 + 1], vec![lk, lk / 2 + 1], None),
            (causal, true),
            7,
        );
        check_against_reference(&c.relative(8));
    }
}

#[test]
fn a_relative_bias_equals_its_dense_expansion() {
    for (lq, lk, causal) in [
        (70, 70, true),
        (9, 131, false),
        (131, 60, false),
        (1, 17, false),
    ] {
        let lens = (vec![lq, lq / 2 + 1], vec![lk, lk / 2 + 1], None);
        let rel = Case::new((3, 16), lens, (causal, true), 13).relative(14);
        let mut dense = rel.clone();
        dense.layout = BiasLayout::Dense;
        dense.bias = rel.dense_bias();
        let shape = rel.attention().bias_shape();
        let all = |f: &mut dyn FnMut(usize, usize, usize)| {
            for h in 0..shape.heads {
                for i in 0..shape.max_q {
                    for j in 0..shape.max_k {
                        f(h, i, j);
                    }
                }
            }
        };
        let (r, d) = (run_fused(Isa::best(), &rel), run_fused(Isa::best(), &dense));
        // Same scores, so the same forward and input gradients, bit for bit.
        assert_eq!(
            (&r.out, &r.lse, &r.dq, &r.dk, &r.dv),
            (&d.out, &d.lse, &d.dq, &d.dk, &d.dv)
        );
        // The relative gradient sums the dense one along each diagonal.
        let mut diagonals = vec![0.0f64; BiasLayout::Relative.len(shape)];
        all(&mut |h, i, j| {
            diagonals[rel.bias_index(h, i, j)] += f64::from(d.dbias[dense.bias_index(h, i, j)]);
        });
        assert!(rel_err(&r.dbias, &diagonals) < 1e-5, "{lq}x{lk}");
        check_against_reference(&rel);
    }
}

#[test]
fn a_sequence_without_keys_is_zero_not_nan() {
    for lq in [3, 40] {
        let c = Case::new((2, 8), (vec![lq, lq], vec![0, 5], None), (false, true), 3);
        let r = run_fused(Isa::best(), &c);
        let half = r.out.len() / 2;
        assert!(r.out[..half].iter().all(|&x| x == 0.0));
        assert!(r.lse[..2 * lq].iter().all(|&x| x == f32::NEG_INFINITY));
        assert!(r.dq[..half].iter().all(|&x| x == 0.0));
        check_against_reference(&c);
    }
}

#[test]
fn each_sequence_is_computed_as_if_alone() {
    // Packing sequences together changes no bit of any one of them.
    let lens = [5usize, 1, 70, 12];
    let both = Case::new(
        (2, 16),
        (lens.to_vec(), lens.to_vec(), None),
        (true, false),
        4,
    );
    let all = run_fused(Isa::best(), &both);
    let mut at = 0;
    for (b, &n) in lens.iter().enumerate() {
        let mut one = Case::new((2, 16), (vec![n], vec![n], None), (true, false), 0);
        let span = both.queries.starts()[b] * 2 * 16..(both.queries.starts()[b] + n) * 2 * 16;
        one.q = both.q[span.clone()].to_vec();
        one.k = both.k[span.clone()].to_vec();
        one.v = both.v[span.clone()].to_vec();
        one.dout = both.dout[span.clone()].to_vec();
        let r = run_fused(Isa::best(), &one);
        assert_eq!(r.out, all.out[span.clone()], "sequence {b}");
        assert_eq!(r.dk, all.dk[span.clone()], "sequence {b}");
        at += n;
    }
    assert_eq!(at, both.queries.total());
}

#[test]
fn dropout_depends_on_the_row_identity_not_its_place() {
    let c = Case::new(
        (2, 8),
        (vec![20, 20], vec![20, 20], None),
        (false, false),
        6,
    )
    .dropped(0.3, 77);
    let mut swapped = c.clone();
    let half = c.q.len() / 2;
    for buf in [
        &mut swapped.q,
        &mut swapped.k,
        &mut swapped.v,
        &mut swapped.dout,
    ] {
        buf.rotate_left(half);
    }
    swapped.rows.rotate_left(20);
    let (r, s) = (run_fused(Isa::best(), &c), run_fused(Isa::best(), &swapped));
    let mut back = s.out.clone();
    back.rotate_right(half);
    assert_eq!(r.out, back);
    check_against_reference(&c);
}

#[test]
fn decode_agrees_with_forward_on_a_kv_cache() {
    // One query per (sequence, head) against 9, 4 and 1 of 16 cached positions.
    let c = Case::new(
        (2, 16),
        (vec![1, 1, 1], vec![9, 4, 1], Some(16)),
        (false, true),
        11,
    )
    .relative(12);
    let r = run_fused(Isa::best(), &c);
    let mut out = vec![0.0; r.out.len()];
    decode(&c.attention(), &mut out).expect("decode");
    assert_eq!(out, r.out);
    check_against_reference(&c);
}

#[test]
fn one_and_two_threads_agree_bit_for_bit() {
    let c = Case::new(
        (3, 64),
        (vec![100, 37], vec![100, 37], None),
        (true, true),
        5,
    )
    .relative(6)
    .dropped(0.1, 9);
    crate::set_num_threads(1).expect("threads");
    let one = run_fused(Isa::best(), &c);
    crate::set_num_threads(2).expect("threads");
    let two = run_fused(Isa::best(), &c);
    assert_eq!(one, two);
}

#[test]
fn wrong_buffer_sizes_are_errors() {
    let c = Case::new((2, 5), (vec![3], vec![4], None), (false, true), 1);
    let mut out = vec![0.0; 29];
    let mut lse = vec![0.0; 6];
    let e = forward(&c.attention(), &mut out, &mut lse).expect_err("short out");
    assert!(
        e.to_string().contains("out has 29 elements, expected 30"),
        "{e}"
    );
    let mut bad = c.attention();
    bad.keys.lens = &[4, 4];
    assert!(decode(&bad, &mut [0.0; 30]).is_err());
    let mut over = c.attention();
    over.keys.capacity = Some(2);
    assert!(decode(&over, &mut [0.0; 30]).is_err());
    let mut dropped = c.attention();
    dropped.dropout.p = 1.0;
    let e = forward(&dropped, &mut [0.0; 30], &mut lse).expect_err("p = 1");
    assert!(e.to_string().contains("not in [0, 1)"), "{e}");
    let mut unnamed = c.attention();
    unnamed.dropout = ProbDropout {
        p: 0.5,
        key: 1,
        rows: &[],
    };
    assert!(forward(&unnamed, &mut [0.0; 30], &mut lse).is_err());
}

/// The PyTorch references of `fixtures/data/ops` (float64 results), within
/// their 1e-5: padded keys are a cache whose rows past each length are unused.
#[test]
fn fused_matches_attention_fixtures() {
    let fx = tessera_fixtures::load("ops").expect("ops fixture");
    let tol = fx.number("/tolerances/forward").expect("tolerance");
    let cases = fx.meta_at("/cases/attention").expect("cases");
    let cases = cases.as_object().expect("object");
    assert!(cases.len() >= 4);
    for (name, meta) in cases {
        let n = |k: &str| meta[k].as_u64().expect("size") as usize;
        let (batch, heads, lq, lk) = (n("batch"), n("heads"), n("query_len"), n("key_len"));
        let t = |what: &str| {
            fx.f32s(&format!("attention.{name}.{what}"))
                .expect("tensor")
        };
        let lengths: Vec<usize> = fx
            .i64s(&format!("attention.{name}.key_lengths"))
            .expect("lengths")
            .iter()
            .map(|&l| l as usize)
            .collect();
        let max_k = lengths.iter().copied().max().unwrap_or(0);
        // The fixture's bias is [heads, lq, lk]; the call's is [heads, lq, max_k].
        let full_bias = t("bias");
        let cut = |b: &[f32]| -> Vec<f32> {
            b.chunks(lk).flat_map(|row| row[..max_k].to_vec()).collect()
        };
        let mut c = Case::new(
            (heads, n("d_kv")),
            (vec![lq; batch], lengths, Some(lk)),
            (meta["causal"].as_bool().expect("bool"), false),
            0,
        );
        (c.q, c.k, c.v, c.dout) = (t("q"), t("k"), t("v"), t("grad_out"));
        c.bias = Some(cut(&full_bias));
        for isa in Isa::available() {
            let r = run_fused(isa, &c);
            for (what, got) in [
                ("out", &r.out),
                ("grad_q", &r.dq),
                ("grad_k", &r.dk),
                ("grad_v", &r.dv),
            ] {
                tessera_fixtures::check_close(&format!("{name}.{what}"), got, &t(what), tol)
                    .unwrap_or_else(|e| panic!("{isa:?}: {e}"));
            }
            let want_bias = cut(&t("grad_bias"));
            tessera_fixtures::check_close(&format!("{name}.grad_bias"), &r.dbias, &want_bias, tol)
                .unwrap_or_else(|e| panic!("{isa:?}: {e}"));
        }
        let u = run_unfused(&c);
        for (what, got) in [
            ("out", &u.out),
            ("grad_q", &u.dq),
            ("grad_k", &u.dk),
            ("grad_v", &u.dv),
        ] {
            tessera_fixtures::check_close(&format!("{name}.{what} (unfused)"), got, &t(what), tol)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let want_bias = cut(&t("grad_bias"));
        tessera_fixtures::check_close(
            &format!("{name}.grad_bias (unfused)"),
            &u.dbias,
            &want_bias,
            tol,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

fn run_unfused(c: &Case) -> Results {
    let a = c.attention();
    let mut out = vec![f32::NAN; a.q_elems()];
    let probs = unfused::forward(&a, &mut out).expect("forward");
    with_gradients(c, out, Vec::new(), |grads, _, _| {
        unfused::backward(&a, &probs, &c.dout, grads)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn unfused_matches_f64_reference(c in case_strategy()) {
        let want = reference(&c);
        let got = run_unfused(&c);
        for (name, g, w) in [("out", &got.out, &want[0]), ("dq", &got.dq, &want[2]), ("dk", &got.dk, &want[3]), ("dv", &got.dv, &want[4]), ("dbias", &got.dbias, &want[5])] {
            let e = rel_err(g, w);
            prop_assert!(e < 2e-5, "unfused {}: relative error {:.2e}", name, e);
        }
    }
}

#[test]
fn transpose_writes_exactly_the_transposed_block() {
    use super::tile::transpose;
    use std::mem::MaybeUninit;
    // Sizes on and off the 8 × 8 SIMD blocks, into a wider destination
    // whose spare columns must stay untouched.
    for (n, d) in [(1, 1), (7, 9), (8, 8), (17, 64), (48, 64), (13, 24), (9, 3)] {
        let src: Vec<f32> = (0..n * d).map(|x| x as f32).collect();
        let ld = n + 3;
        for isa in Isa::available() {
            let mut dst = vec![-1.0f32; d * ld];
            transpose(isa, &src, d, (&mut dst[..], ld));
            for (p, row) in dst.chunks_exact(ld).enumerate() {
                let want: Vec<f32> = (0..n).map(|j| src[j * d + p]).collect();
                assert_eq!(&row[..n], &want[..], "{isa:?} n {n} d {d} row {p}");
                assert!(row[n..].iter().all(|&x| x == -1.0), "{isa:?} wrote past n");
            }
            let mut fresh = vec![MaybeUninit::<f32>::uninit(); d * n];
            transpose(isa, &src, d, (&mut fresh[..], n));
            // SAFETY: the transpose wrote every element of the d × n block.
            let fresh: Vec<f32> = fresh.iter().map(|x| unsafe { x.assume_init() }).collect();
            assert_eq!(
                fresh,
                dst.chunks_exact(ld)
                    .flat_map(|r| &r[..n])
                    .copied()
                    .collect::<Vec<_>>()
            );
        }
    }
}
