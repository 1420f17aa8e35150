//! Saving and loading optimizer state: one safetensors file of f32
//! tensors, with the optimizer kind and step count in its metadata.

use super::{OptimizerKind, StateTensor};
use crate::error::{Result, TrainError};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use tessera_t5::precision::OperandRef;
use tessera_t5::safetensors::{write_f32_with_metadata, SafeTensors, StoredDType, TensorToWrite};

/// Metadata key of the optimizer kind (`adamw`, `adafactor`).
const KIND_KEY: &str = "optimizer";
/// Metadata key of the number of steps taken.
const STEP_KEY: &str = "step";

/// Writes `tensors` as safetensors to `out`, with the optimizer kind and
/// step count in the metadata.
pub(super) fn write(
    out: &mut impl Write,
    kind: OptimizerKind,
    steps: u64,
    tensors: &[StateTensor<&[f32]>],
) -> std::io::Result<()> {
    let to_write: Vec<TensorToWrite<'_>> = tensors
        .iter()
        .map(|t| TensorToWrite {
            name: &t.name,
            shape: &t.shape,
            data: OperandRef::F32(t.data),
        })
        .collect();
    let steps = steps.to_string();
    let metadata = [(KIND_KEY, kind.name()), (STEP_KEY, steps.as_str())];
    write_f32_with_metadata(out, &to_write, &metadata)
}

/// Fills `tensors` from the file at `path` and returns the saved step
/// count. The file must hold exactly these tensors, as finite f32 of these
/// shapes, saved by an optimizer of kind `kind`.
pub(super) fn load(
    path: &Path,
    kind: OptimizerKind,
    tensors: &mut [StateTensor<&mut [f32]>],
) -> Result<u64> {
    let file = SafeTensors::open(path).map_err(TrainError::StateFile)?;
    let bad = |reason: String| TrainError::OptimizerState {
        path: path.to_path_buf(),
        reason,
    };
    let meta = file.metadata();
    let saved_kind = meta.get(KIND_KEY).map(String::as_str);
    if saved_kind != Some(kind.name()) {
        return Err(bad(match saved_kind {
            Some(other) => format!("it was saved by {other}, not {kind}"),
            None => format!("its metadata names no optimizer (key {KIND_KEY:?})"),
        }));
    }
    let steps = meta
        .get(STEP_KEY)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| bad(format!("its metadata has no step count (key {STEP_KEY:?})")))?;
    let expected: BTreeSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    if let Some(extra) = file.names().find(|n| !expected.contains(n)) {
        return Err(bad(format!(
            "it holds tensor {extra}, which this model and optimizer configuration do not have"
        )));
    }
    for t in tensors.iter_mut() {
        let info = file.info(&t.name).map_err(TrainError::StateFile)?;
        if info.dtype != StoredDType::F32 || info.shape != t.shape {
            return Err(bad(format!(
                "tensor {} is {} {:?}, expected F32 {:?}",
                t.name, info.dtype, info.shape, t.shape
            )));
        }
        file.read_f32_into(&t.name, t.data)
            .map_err(TrainError::StateFile)?;
        if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "tensor {} holds {} at element {i}",
                t.name, t.data[i]
            )));
        }
    }
    Ok(steps)
}
