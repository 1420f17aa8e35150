//! The fused kernels against a naive f64 reference (random shapes, masks
//! with all-padding rows, one key, causality, every gradient including the
//! bias), against the PyTorch attention fixtures, and across thread counts.

use super::*;
use proptest::prelude::*;

/// A random attention problem with owned buffers.
#[derive(Debug, Clone)]
struct Case {
    shape: AttentionShape,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    bias: Option<Vec<f32>>,
    layout: BiasLayout,
    valid: Option<Vec<u8>>,
    causal: bool,
    dropout: ProbDropout,
    dout: Vec<f32>,
}

/// A deterministic pseudo-random f32 in [-1, 1).
fn noise(state: &mut u64) -> f32 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

impl Case {
    /// `lengths[b]` valid keys for sequence b (`None`: no padding mask);
    /// K/V matrices `extra * d` elements further apart than dense.
    fn new(
        shape: AttentionShape,
        (lengths, causal, with_bias): (Option<Vec<usize>>, bool, bool),
        seed: u64,
    ) -> Case {
        let mut st = seed;
        let mut fill =
            |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| noise(&mut st) * scale).collect() };
        let s = shape;
        let kv = s.count().saturating_sub(1) * s.kv_stride + s.k_len * s.d_head;
        let valid = lengths.map(|ls| {
            ls.iter()
                .flat_map(|&n| (0..s.k_len).map(move |j| u8::from(j < n)))
                .collect()
        });
        Case {
            shape,
            q: fill(s.q_len_elems(), 0.8),
            k: fill(kv, 0.8),
            v: fill(kv, 1.0),
            bias: with_bias.then(|| fill(s.bias_len(), 2.0)),
            layout: BiasLayout::Dense,
            valid,
            causal,
            dropout: ProbDropout::OFF,
            dout: fill(s.q_len_elems(), 1.0),
        }
    }

    /// The same case with a random relative bias (`[heads, q_len + k_len - 1]`) instead.
    fn relative(mut self, seed: u64) -> Case {
        let mut st = seed;
        let n = self.shape.relative_bias_len();
        self.bias = Some((0..n).map(|_| noise(&mut st) * 2.0).collect());
        self.layout = BiasLayout::Relative;
        self
    }

    /// Where bias element (h, i, j) is stored.
    fn bias_index(&self, h: usize, i: usize, j: usize) -> usize {
        let s = &self.shape;
        match self.layout {
            BiasLayout::Dense => (h * s.q_len + i) * s.k_len + j,
            BiasLayout::Relative => h * (s.q_len + s.k_len - 1) + j + s.q_len - 1 - i,
        }
    }

    fn attention(&self) -> Attention<'_> {
        Attention {
            shape: self.shape,
            qkv: Qkv {
                q: &self.q,
                k: &self.k,
                v: &self.v,
            },
            bias: self.bias.as_deref().map(|v| match self.layout {
                BiasLayout::Dense => Bias::Dense(v),
                BiasLayout::Relative => Bias::Relative(v),
            }),
            mask: KeyMask {
                valid: self.valid.as_deref(),
                causal: self.causal,
            },
            dropout: self.dropout,
        }
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
    let s = c.shape;
    let a = c.attention();
    let mut out = vec![f32::NAN; s.q_len_elems()];
    let mut lse = vec![f32::NAN; s.count() * s.q_len];
    forward_with(isa, &a, &mut out, &mut lse).expect("forward");
    let (mut dq, mut dk, mut dv) = (
        vec![f32::NAN; s.q_len_elems()],
        vec![f32::NAN; s.kv_len_elems()],
        vec![f32::NAN; s.kv_len_elems()],
    );
    let mut dbias = vec![0.0; c.layout.len(&s)];
    let grads = AttentionGradsMut {
        dq: &mut dq,
        dk: &mut dk,
        dv: &mut dv,
        dbias: Some(&mut dbias),
    };
    backward_with(isa, &a, (&out, &lse), &c.dout, grads).expect("backward");
    Results {
        out,
        lse,
        dq,
        dk,
        dv,
        dbias,
    }
}

/// The reference in f64: dense scores, softmax, products, textbook backward.
fn reference(c: &Case) -> [Vec<f64>; 6] {
    let s = c.shape;
    let (lq, lk, d) = (s.q_len, s.k_len, s.d_head);
    let mut out = vec![0.0; s.q_len_elems()];
    let mut lse = vec![f64::NEG_INFINITY; s.count() * lq];
    let mut dq = vec![0.0; s.q_len_elems()];
    let (mut dk, mut dv) = (vec![0.0; s.kv_len_elems()], vec![0.0; s.kv_len_elems()]);
    let mut dbias = vec![0.0; c.layout.len(&s)];
    let f = |x: f32| f64::from(x);
    // The dropout mask times its scale, from the unfused dropout op.
    let mut kept = vec![1.0f32; s.probs_len()];
    crate::ops::dropout::dropout_inplace(&mut kept, c.dropout.p, c.dropout.key).expect("p");
    for bh in 0..s.count() {
        let (b, h) = (bh / s.heads, bh % s.heads);
        let q = |i: usize, p: usize| f(c.q[(bh * lq + i) * d + p]);
        let k = |j: usize, p: usize| f(c.k[bh * s.kv_stride + j * d + p]);
        let v = |j: usize, p: usize| f(c.v[bh * s.kv_stride + j * d + p]);
        let go = |i: usize, p: usize| f(c.dout[(bh * lq + i) * d + p]);
        for i in 0..lq {
            let visible = |j: usize| {
                c.valid.as_ref().is_none_or(|m| m[b * lk + j] == 1) && !(c.causal && j > i)
            };
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
            lse[bh * lq + i] = max + total.ln();
            let p: Vec<f64> = e.iter().map(|x| x / total).collect();
            let m = |j: usize| f(kept[(bh * lq + i) * lk + j]);
            let dp: Vec<f64> = (0..lk)
                .map(|j| (0..d).map(|x| go(i, x) * v(j, x)).sum::<f64>() * m(j))
                .collect();
            let dot: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for j in 0..lk {
                let ds = p[j] * (dp[j] - dot);
                dbias[c.bias_index(h, i, j)] += ds;
                for x in 0..d {
                    out[(bh * lq + i) * d + x] += p[j] * m(j) * v(j, x);
                    dv[(bh * lk + j) * d + x] += p[j] * m(j) * go(i, x);
                    dq[(bh * lq + i) * d + x] += ds * k(j, x);
                    dk[(bh * lk + j) * d + x] += ds * q(i, x);
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
                "{isa:?} {name}: relative error {e:.2e} for {:?}",
                c.shape
            );
        }
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        1usize..=3,
        1usize..=3,
        1usize..=80,
        1usize..=80,
        1usize..=20,
        0usize..=2,
    )
        .prop_flat_map(|(batch, heads, lq, lk, d, extra)| {
            let lengths = proptest::collection::vec(0..=lk, batch);
            (
                Just((batch, heads, lq, lk, d, extra)),
                proptest::option::of(lengths),
                any::<(bool, bool, bool, u64)>(),
            )
        })
        .prop_map(
            |((batch, heads, lq, lk, d, extra), lengths, (causal, bias, relative, seed))| {
                let mut shape = AttentionShape::dense(batch, heads, lq, lk, d);
                shape.kv_stride += extra * d;
                let case = Case::new(shape, (lengths, causal, bias), seed);
                if bias && relative {
                    case.relative(seed ^ 1)
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
        let shape = AttentionShape::dense(2, 2, lq, lk, 64);
        check_against_reference(&Case::new(shape, (Some(vec![lk, lk / 2]), causal, true), 7));
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
        let shape = AttentionShape::dense(2, 3, lq, lk, 16);
        let rel = Case::new(shape, (Some(vec![lk, lk / 2]), causal, true), 13).relative(14);
        let mut dense = rel.clone();
        dense.layout = BiasLayout::Dense;
        dense.bias = Some(rel.attention().bias.expect("a bias").to_dense(&shape));
        // `to_dense` puts every element (h, i, j) where the dense layout expects it.
        for (h, i, j) in
            (0..3).flat_map(|h| (0..lq).flat_map(move |i| (0..lk).map(move |j| (h, i, j))))
        {
            assert_eq!(
                dense.bias.as_ref().unwrap()[dense.bias_index(h, i, j)],
                rel.bias.as_ref().unwrap()[rel.bias_index(h, i, j)]
            );
        }
        let (r, d) = (run_fused(Isa::best(), &rel), run_fused(Isa::best(), &dense));
        // Same scores, so the same forward and input gradients, bit for bit.
        assert_eq!(
            (&r.out, &r.lse, &r.dq, &r.dk, &r.dv),
            (&d.out, &d.lse, &d.dq, &d.dk, &d.dv)
        );
        // The relative gradient sums the dense one along each diagonal.
        let mut diagonals = vec![0.0f64; shape.relative_bias_len()];
        for (h, i, j) in
            (0..3).flat_map(|h| (0..lq).flat_map(move |i| (0..lk).map(move |j| (h, i, j))))
        {
            diagonals[rel.bias_index(h, i, j)] += f64::from(d.dbias[dense.bias_index(h, i, j)]);
        }
        assert!(rel_err(&r.dbias, &diagonals) < 1e-5, "{lq}x{lk}");
        check_against_reference(&rel);
    }
}

#[test]
fn all_padding_rows_are_zero_not_nan() {
    for lq in [3, 40] {
        let shape = AttentionShape::dense(2, 2, lq, 5, 8);
        let c = Case::new(shape, (Some(vec![0, 5]), false, true), 3);
        let r = run_fused(Isa::best(), &c);
        let half = shape.q_len_elems() / 2;
        assert!(r.out[..half].iter().all(|&x| x == 0.0));
        assert!(r.lse[..2 * lq].iter().all(|&x| x == f32::NEG_INFINITY));
        assert!(r.dq[..half].iter().all(|&x| x == 0.0));
        assert!(r.dk[..shape.kv_len_elems() / 2].iter().all(|&x| x == 0.0));
        check_against_reference(&c);
    }
}

#[test]
fn decode_agrees_with_forward_on_a_kv_cache() {
    // One query per (batch, head) against 9 of 16 cached positions.
    let mut shape = AttentionShape::dense(3, 2, 1, 9, 16);
    shape.kv_stride = 16 * 16;
    let c = Case::new(shape, (Some(vec![9, 4, 1]), false, true), 11);
    let r = run_fused(Isa::best(), &c);
    let mut out = vec![0.0; shape.q_len_elems()];
    decode(&c.attention(), &mut out).expect("decode");
    assert_eq!(out, r.out);
    check_against_reference(&c);
}

#[test]
fn one_and_two_threads_agree_bit_for_bit() {
    let shape = AttentionShape::dense(2, 3, 100, 90, 64);
    let mut c = Case::new(shape, (Some(vec![90, 37]), true, true), 5);
    c.dropout = ProbDropout { p: 0.1, key: 9 };
    crate::set_num_threads(1).expect("threads");
    let one = run_fused(Isa::best(), &c);
    crate::set_num_threads(2).expect("threads");
    let two = run_fused(Isa::best(), &c);
    assert_eq!(one, two);
}

#[test]
fn wrong_buffer_sizes_are_errors() {
    let c = Case::new(AttentionShape::dense(1, 2, 3, 4, 5), (None, false, true), 1);
    let mut out = vec![0.0; 29];
    let mut lse = vec![0.0; 6];
    let e = forward(&c.attention(), &mut out, &mut lse).expect_err("short out");
    assert!(
        e.to_string().contains("out has 29 elements, expected 30"),
        "{e}"
    );
    let mut bad = c.attention();
    bad.mask.valid = Some(&[1, 1]);
    assert!(decode(&bad, &mut [0.0; 30]).is_err());
    let mut dropped = c.attention();
    dropped.dropout.p = 1.0;
    let e = forward(&dropped, &mut [0.0; 30], &mut lse).expect_err("p = 1");
    assert!(e.to_string().contains("not in [0, 1)"), "{e}");
}

/// The PyTorch references of `fixtures/data/ops` (float64 results), within their 1e-5.
#[test]
fn fused_matches_attention_fixtures() {
    let fx = tessera_fixtures::load("ops").expect("ops fixture");
    let tol = fx.number("/tolerances/forward").expect("tolerance");
    let cases = fx.meta_at("/cases/attention").expect("cases");
    let cases = cases.as_object().expect("object");
    assert!(cases.len() >= 4);
    for (name, meta) in cases {
        let n = |k: &str| meta[k].as_u64().expect("size") as usize;
        let shape = AttentionShape::dense(
            n("batch"),
            n("heads"),
            n("query_len"),
            n("key_len"),
            n("d_kv"),
        );
        let t = |what: &str| {
            fx.f32s(&format!("attention.{name}.{what}"))
                .expect("tensor")
        };
        let lengths = fx
            .i64s(&format!("attention.{name}.key_lengths"))
            .expect("lengths");
        let valid: Vec<u8> = lengths
            .iter()
            .flat_map(|&l| (0..shape.k_len).map(move |j| u8::from((j as i64) < l)))
            .collect();
        let c = Case {
            shape,
            q: t("q"),
            k: t("k"),
            v: t("v"),
            bias: Some(t("bias")),
            layout: BiasLayout::Dense,
            valid: Some(valid),
            causal: meta["causal"].as_bool().expect("bool"),
            dropout: ProbDropout::OFF,
            dout: t("grad_out"),
        };
        for isa in Isa::available() {
            let r = run_fused(isa, &c);
            for (what, got) in [
                ("out", &r.out),
                ("grad_q", &r.dq),
                ("grad_k", &r.dk),
                ("grad_v", &r.dv),
                ("grad_bias", &r.dbias),
            ] {
                tessera_fixtures::check_close(&format!("{name}.{what}"), got, &t(what), tol)
                    .unwrap_or_else(|e| panic!("{isa:?}: {e}"));
            }
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
