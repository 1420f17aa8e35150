//! Saving and loading optimizer state: one safetensors file of f32
//! tensors, with the optimizer kind and step count in its metadata.

use super::{OptimizerKind, StateTensor};
use crate::error::{Result, TrainError};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use tessera_t5::precision::OperandRef;
use tessera_t5::safetensors::{write_f32_with_metadata, SafeTensors, StoredDType, TensorToWrite};

/// Metadata key of the optimizer kind (`adamw`, `adafactor`).
const KIND_KEY: &str = "optimizer";
/// Metadata key of the number of steps taken.
const STEP_KEY: &str = "step";

/// Writes `tensors` to `path` via a temporary sibling file and a rename, so
/// an interrupted save leaves any previous file intact.
pub(super) fn save(
    path: &Path,
    kind: OptimizerKind,
    steps: u64,
    tensors: &[StateTensor<&[f32]>],
) -> Result<()> {
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
    let tmp = temporary_name(path);
    let written = File::create(&tmp).and_then(|file| {
        let mut out = BufWriter::new(file);
        write_f32_with_metadata(&mut out, &to_write, &metadata)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    renamed.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        TrainError::io("cannot write optimizer state", path, e)
    })
}

/// `.<name>.tmp-<pid>` beside `path`.
fn temporary_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
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
                t.name,
                info.dtype.name(),
                info.shape,
                t.shape
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
