//! The non-matmul ops of a transformer, forward and backward side by side.
//!
//! One file per op family, in the spirit of llm.c: each forward sits next to
//! its backward, works on plain row-major f32 slices with explicit shapes,
//! and writes into buffers the caller owns. Row-wise loops run on the
//! engine's thread pool once a tensor is big enough to be worth it; reductions
//! across rows (weight gradients) are summed in fixed row blocks and then in
//! block order, so results never depend on the thread count.
//!
//! Every function checks the slice lengths it is given and returns a
//! [`TensorError`](crate::TensorError) naming the op and buffer on mismatch.

pub mod activation;
pub mod crossentropy;
pub mod dropout;
pub mod embedding;
pub mod norm;
pub mod optim;
pub mod residual;
pub mod softmax;
#[macro_use]
pub mod vmath;

use crate::error::{shape_err, Result};

/// Elements below which a row loop stays on the calling thread.
pub(crate) const PARALLEL_MIN_ELEMS: usize = 1 << 14;

/// Rows per rayon task for rows of `cols` elements: enough rows that each
/// task touches at least [`PARALLEL_MIN_ELEMS`] elements.
pub(crate) fn rows_per_task(cols: usize) -> usize {
    PARALLEL_MIN_ELEMS.div_ceil(cols.max(1))
}

/// Fails unless `buffer` of op `op` has exactly `expected` elements.
pub(crate) fn check_len(op: &'static str, buffer: &str, len: usize, expected: usize) -> Result<()> {
    if len == expected {
        Ok(())
    } else {
        Err(shape_err(
            op,
            format!("{buffer} has {len} elements, expected {expected}"),
        ))
    }
}

/// Fails unless `len` is a whole number of rows of `cols` elements; returns the row count.
pub(crate) fn rows_of(op: &'static str, buffer: &str, len: usize, cols: usize) -> Result<usize> {
    if len.checked_rem(cols) != Some(0) {
        return Err(shape_err(
            op,
            format!("{buffer} has {len} elements, not a whole number of rows of {cols}"),
        ));
    }
    Ok(len / cols)
}
