//! The one error type of the tensor engine.
//!
//! Shape mistakes are reported as values that name the shapes involved; no
//! kernel ever broadcasts silently or panics on a caller's mistake.

use crate::DType;

/// Everything a caller of the tensor engine can get wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// Two shapes that must agree do not; the message names both.
    #[error("{op}: shape mismatch: {detail}")]
    Shape {
        /// The operation that checked the shapes.
        op: &'static str,
        /// What disagreed, with the shapes spelled out.
        detail: String,
    },
    /// A buffer is too short for the shape and strides it is said to hold.
    #[error("{op}: buffer of {len} elements is too short for {detail}")]
    Buffer {
        /// The operation that checked the buffer.
        op: &'static str,
        /// The buffer's length in elements.
        len: usize,
        /// The layout the buffer was supposed to hold.
        detail: String,
    },
    /// A tensor of one dtype was used where another was required.
    #[error("{op}: expected dtype {expected}, found {found}")]
    DType {
        /// The operation that checked the dtype.
        op: &'static str,
        /// The dtype that was required.
        expected: DType,
        /// The dtype that was given.
        found: DType,
    },
    /// A setting (thread count, block size, …) outside its valid range.
    #[error("invalid setting: {0}")]
    Setting(String),
}

/// Shorthand for results of the tensor engine.
pub type Result<T> = std::result::Result<T, TensorError>;

/// Builds a [`TensorError::Shape`] with a formatted detail.
pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>) -> TensorError {
    TensorError::Shape {
        op,
        detail: detail.into(),
    }
}
