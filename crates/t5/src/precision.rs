//! Mixed precision: the number format the model's matrix multiplies read.
//!
//! In [`Precision::Bf16`] and [`Precision::Fp16`] every matmul of the model
//! — the attention and feed-forward projections, the LM head, and both
//! products of each of their backwards — reads 16-bit operands, as under
//! PyTorch's autocast:
//! - weights and incoming gradients stay f32 and are rounded to nearest-even
//!   by the gemm as it packs them ([`Precision::read`],
//!   `tessera_tensor::MatRef::rounded_to`): the same bits as multiplying
//!   rounded copies, without a 16-bit copy of the model;
//! - activations are rounded once, when they are kept for the backward,
//!   and stored in 16 bits ([`Precision::keep_activation`]).
//!
//! Everything else stays f32, and each choice follows a documented
//! stabilisation:
//! - products accumulate in f32 and come out in f32 (the gemm widens 16-bit
//!   operands while packing, or multiplies bf16 pairs exactly with
//!   `vdpbf16ps` where the CPU has AVX-512 BF16); autocast rounds its
//!   outputs to 16 bits, so this is the more accurate of the two;
//! - RMS norm statistics in f32 (transformers' `T5LayerNorm` computes the
//!   variance in f32 under any dtype);
//! - attention scores, softmax and the probability-weighted sum in f32 (the
//!   fused attention kernels compute in f32 whatever the storage dtype);
//! - the residual stream, the loss and all gradients of the master weights
//!   in f32, so nothing accumulates in 16 bits;
//! - kept fp16 activations are clamped to ±64,504 (65,504 − 1,000) before
//!   they are rounded, instead of overflowing to infinity
//!   ([`Precision::clamps`]): the counterpart of transformers'
//!   `clamp_value = finfo(float16).max - 1000` clamping of T5 hidden states.
//!   Gradients are never clamped: an overflow there must reach the loss
//!   scaler, which skips the step.
//!
//! bf16 has f32's exponent range and needs no loss scaling; fp16 has 5
//! exponent bits, so small gradients underflow unless the loss is scaled
//! (see `tessera_train`'s loss scaler).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use tessera_tensor::{
    bf16, f16, gemm, gemm_new, gemm_packed_new, DType, Element, MatMut, MatRef, Op, PackedB,
    Result, TensorError,
};

/// The number format of the model's matmul operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bfloat16 operands (8 exponent bits, 8 significant bits), f32 accumulation.
    Bf16,
    /// IEEE half operands (5 exponent bits, 11 significant bits), f32 accumulation.
    Fp16,
}

/// The finite fp16 range, less the 1,000 transformers leaves as headroom.
const FP16_CLAMP: f32 = 65_504.0 - 1_000.0;

impl Precision {
    /// Every precision, in the order the command line lists them.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::Fp16];

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// Whether a forward activation is clamped into the finite range before
    /// it is rounded (fp16 only; bf16 and f32 share f32's range).
    pub fn clamps(self) -> bool {
        self == Precision::Fp16
    }

    /// Whether training in this precision needs the loss scaled.
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::Fp16
    }

    /// `x` as a matmul operand: copied as is in f32, rounded to nearest-even
    /// in 16 bits (overflow becomes ±inf).
    pub fn round(self, x: &[f32]) -> Operand {
        match self {
            Precision::F32 => Operand::F32(x.to_vec()),
            Precision::Bf16 => Operand::Bf16(narrow(x)),
            Precision::Fp16 => Operand::F16(narrow(x)),
        }
    }

    /// A forward activation kept as a matmul operand: moved as is in f32;
    /// in 16 bits rounded, after clamping into ±(65,504 − 1,000) when
    /// [`Precision::clamps`].
    pub fn keep_activation(self, mut x: Vec<f32>) -> Operand {
        match self {
            Precision::F32 => Operand::F32(x),
            Precision::Bf16 => self.round(&x),
            Precision::Fp16 => {
                x.iter_mut()
                    .for_each(|v| *v = v.clamp(-FP16_CLAMP, FP16_CLAMP));
                self.round(&x)
            }
        }
    }

    /// `x` read by a matmul in this precision without a copy: the gemm
    /// rounds each value as it packs it (nearest-even, never clamped — a
    /// gradient overflow must reach the loss scaler).
    pub fn read(self, x: &[f32]) -> OperandRef<'_> {
        match self {
            Precision::F32 => OperandRef::F32(x),
            p => OperandRef::Rounded(x, p),
        }
    }

    /// The storage dtype of this precision's operands.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::Fp16 => DType::F16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    /// `f32`, `bf16` or `fp16` (`f16` is accepted for the last).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" | "f16" => Ok(Precision::Fp16),
            other => Err(format!("precision {other:?} is not one of f32, bf16, fp16")),
        }
    }
}

fn narrow<E: Element>(x: &[f32]) -> Vec<E> {
    let mut out = vec![E::default(); x.len()];
    E::slice_from_f32(x, &mut out);
    out
}

/// A matmul operand held in its precision's format.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// f32 values.
    F32(Vec<f32>),
    /// bfloat16 values.
    Bf16(Vec<bf16>),
    /// IEEE half values.
    F16(Vec<f16>),
}

impl Operand {
    /// A borrowed view.
    pub fn view(&self) -> OperandRef<'_> {
        match self {
            Operand::F32(v) => OperandRef::F32(v),
            Operand::Bf16(v) => OperandRef::Bf16(v),
            Operand::F16(v) => OperandRef::F16(v),
        }
    }

    /// The values as f32: borrowed when they are f32, else widened (exact).
    pub fn widened(&self) -> Cow<'_, [f32]> {
        self.view().widened()
    }

    /// The values as f32, owned: moved when they are f32, else widened (exact).
    pub fn into_widened(self) -> Vec<f32> {
        match self {
            Operand::F32(v) => v,
            other => other.widened().into_owned(),
        }
    }
}

fn widen<E: Element>(x: &[E]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    E::slice_to_f32(x, &mut out);
    out
}

/// A borrowed matmul operand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OperandRef<'a> {
    /// f32 values, read as they are.
    F32(&'a [f32]),
    /// bfloat16 values.
    Bf16(&'a [bf16]),
    /// IEEE half values.
    F16(&'a [f16]),
    /// f32 values read in a 16-bit precision: rounded while packed.
    Rounded(&'a [f32], Precision),
}

impl<'a> OperandRef<'a> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            OperandRef::F32(v) | OperandRef::Rounded(v, _) => v.len(),
            OperandRef::Bf16(v) => v.len(),
            OperandRef::F16(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The storage dtype.
    pub fn dtype(&self) -> DType {
        match self {
            OperandRef::F32(_) | OperandRef::Rounded(..) => DType::F32,
            OperandRef::Bf16(_) => DType::BF16,
            OperandRef::F16(_) => DType::F16,
        }
    }

    /// The precision a matmul reads this operand in.
    pub fn precision(&self) -> Precision {
        match self {
            OperandRef::F32(_) => Precision::F32,
            OperandRef::Bf16(_) => Precision::Bf16,
            OperandRef::F16(_) => Precision::Fp16,
            OperandRef::Rounded(_, p) => *p,
        }
    }

    /// The index and value of the first NaN or infinity, if any.
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        fn find<T: Copy>(
            v: &[T],
            finite: impl Fn(T) -> bool,
            wide: impl Fn(T) -> f32,
        ) -> Option<(usize, f32)> {
            let i = v.iter().position(|&x| !finite(x))?;
            Some((i, wide(v[i])))
        }
        match *self {
            OperandRef::F32(v) | OperandRef::Rounded(v, _) => find(v, f32::is_finite, |x| x),
            OperandRef::Bf16(v) => find(v, bf16::is_finite, f32::from),
            OperandRef::F16(v) => find(v, f16::is_finite, f32::from),
        }
    }

    /// The values in `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> OperandRef<'a> {
        match *self {
            OperandRef::F32(v) => OperandRef::F32(&v[range]),
            OperandRef::Bf16(v) => OperandRef::Bf16(&v[range]),
            OperandRef::F16(v) => OperandRef::F16(&v[range]),
            OperandRef::Rounded(v, p) => OperandRef::Rounded(&v[range], p),
        }
    }

    /// The values a matmul reads, as f32: borrowed when they are f32,
    /// widened from 16 bits, rounded for [`OperandRef::Rounded`].
    pub fn widened(&self) -> Cow<'a, [f32]> {
        match *self {
            OperandRef::F32(v) => Cow::Borrowed(v),
            OperandRef::Bf16(v) => Cow::Owned(widen(v)),
            OperandRef::F16(v) => Cow::Owned(widen(v)),
            OperandRef::Rounded(v, p) => Cow::Owned(p.round(v).widened().into_owned()),
        }
    }
}

/// A dense row-major operand with its shape.
#[derive(Debug, Clone, Copy)]
pub struct Dense<'a> {
    /// The values.
    pub data: OperandRef<'a>,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

/// The gemm operand of a [`Dense`] bound to `$m` in `$body`, instantiated
/// for each storage type (f32 read as is or rounded while packed, bf16, f16).
macro_rules! with_mat {
    ($d:expr, $m:ident => $body:expr) => {
        match $d.data {
            OperandRef::F32(x) | OperandRef::Rounded(x, _) => {
                let round = $d.data.precision().dtype();
                let $m = MatRef::dense(x, $d.rows, $d.cols)?.rounded_to(round);
                $body
            }
            OperandRef::Bf16(x) => {
                let $m = MatRef::dense(x, $d.rows, $d.cols)?;
                $body
            }
            OperandRef::F16(x) => {
                let $m = MatRef::dense(x, $d.rows, $d.cols)?;
                $body
            }
        }
    };
}

/// `C = alpha·op(A)·op(B) + beta·C` for two operands read in the same
/// precision (stored in it, or f32 rounded to it while packed).
///
/// Fails (naming both dtypes) if the precisions differ: every matmul of a
/// pass reads one format, so a mix means a caller forgot to round a side.
pub fn matmul(
    alpha: f32,
    (a, opa): (Dense<'_>, Op),
    (b, opb): (Dense<'_>, Op),
    beta: f32,
    c: MatMut<'_>,
) -> Result<()> {
    same_precision(a.data.precision(), b.data.precision())?;
    with_mat!(a, ma => with_mat!(b, mb => gemm(alpha, ma, opa, mb, opb, beta, c)))
}

/// `alpha·op(A)·op(B)` as a new buffer ([`gemm_new`]: written once, never
/// zero-filled first), with [`matmul`]'s precision check.
pub fn matmul_new(
    alpha: f32,
    (a, opa): (Dense<'_>, Op),
    (b, opb): (Dense<'_>, Op),
) -> Result<Vec<f32>> {
    same_precision(a.data.precision(), b.data.precision())?;
    with_mat!(a, ma => with_mat!(b, mb => gemm_new(alpha, (ma, opa), (mb, opb))))
}

/// Fails, naming both, unless the two sides of a matmul read one precision.
fn same_precision(a: Precision, b: Precision) -> Result<()> {
    if a != b {
        return Err(TensorError::DType {
            op: "mixed-precision matmul",
            expected: a.dtype(),
            found: b.dtype(),
        });
    }
    Ok(())
}

/// A weight packed once for many matmuls ([`PackedB`]), with the precision
/// the matmuls read it in.
#[derive(Debug)]
pub struct PackedOperand {
    packed: PackedB,
    precision: Precision,
}

impl PackedOperand {
    /// Packs `op(b)` as [`matmul`] would read it.
    pub fn pack(b: Dense<'_>, op: Op) -> Result<Self> {
        let precision = b.data.precision();
        let packed = with_mat!(b, m => PackedB::pack(m, op));
        Ok(PackedOperand { packed, precision })
    }
}

/// [`matmul_new`] with B packed in advance; the same bits as
/// [`matmul_new`] with the operand `b` was packed from, and the same
/// precision check.
pub fn matmul_packed_new(
    alpha: f32,
    (a, opa): (Dense<'_>, Op),
    b: &PackedOperand,
) -> Result<Vec<f32>> {
    same_precision(a.data.precision(), b.precision)?;
    with_mat!(a, ma => gemm_packed_new(alpha, (ma, opa), &b.packed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_errors() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        assert_eq!("f16".parse::<Precision>(), Ok(Precision::Fp16));
        let err = "half".parse::<Precision>().unwrap_err();
        assert!(err.contains("\"half\"") && err.contains("bf16"), "{err}");
    }

    #[test]
    fn rounding_is_nearest_even_and_fp16_activations_saturate() {
        let x = [1.0 + 1.0 / 512.0, 70_000.0, -70_000.0, 1e-9];
        let Operand::Bf16(b) = Precision::Bf16.round(&x) else {
            panic!("bf16 rounds to bf16")
        };
        // 1 + 2^-9 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1).
        assert_eq!(b[0].to_f32(), 1.0);
        assert_eq!(b[1].to_f32(), 70_144.0);
        let Operand::F16(h) = Precision::Fp16.round(&x) else {
            panic!("fp16 rounds to f16")
        };
        assert!(h[1].to_f32().is_infinite() && h[3].to_f32() == 0.0);
        let Operand::F16(h) = Precision::Fp16.keep_activation(x.to_vec()) else {
            panic!("fp16 rounds to f16")
        };
        assert_eq!((h[1].to_f32(), h[2].to_f32()), (64_512.0, -64_512.0));
    }

    #[test]
    fn a_mixed_pair_is_an_error_naming_both_dtypes() {
        let (a, b) = (
            Precision::F32.round(&[1.0; 4]),
            Precision::Bf16.round(&[1.0; 4]),
        );
        let dense = |data| Dense {
            data,
            rows: 2,
            cols: 2,
        };
        let mut c = [0.0; 4];
        let err = matmul(
            1.0,
            (dense(a.view()), Op::N),
            (dense(b.view()), Op::N),
            0.0,
            MatMut::dense(&mut c, 2, 2).expect("2 × 2"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("f32") && err.contains("bf16"), "{err}");
    }

    #[test]
    fn sixteen_bit_products_equal_f32_products_of_the_rounded_values() {
        let a: Vec<f32> = (0..12).map(|i| 0.1 * i as f32 - 0.37).collect();
        let b: Vec<f32> = (0..12).map(|i| 0.7 - 0.13 * i as f32).collect();
        for p in [Precision::Bf16, Precision::Fp16] {
            let (ra, rb) = (p.round(&a), p.round(&b));
            let widen = |o: &Operand| -> Vec<f32> {
                match o {
                    Operand::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
                    Operand::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
                    Operand::F32(v) => v.clone(),
                }
            };
            let (wa, wb) = (widen(&ra), widen(&rb));
            let run = |x: OperandRef<'_>, y: OperandRef<'_>| {
                let mut c = vec![0.0; 9];
                let a = Dense {
                    data: x,
                    rows: 3,
                    cols: 4,
                };
                let b = Dense {
                    data: y,
                    rows: 3,
                    cols: 4,
                };
                matmul(
                    1.0,
                    (a, Op::N),
                    (b, Op::T),
                    0.0,
                    MatMut::dense(&mut c, 3, 3).expect("3 × 3"),
                )
                .expect("same precision");
                c
            };
            assert_eq!(
                run(ra.view(), rb.view()),
                run(OperandRef::F32(&wa), OperandRef::F32(&wb)),
                "{p}"
            );
        }
    }
}
