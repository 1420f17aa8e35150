//! safetensors files through the `safetensors` crate, read one tensor at a
//! time and written as a stream.
//!
//! Layout: an 8-byte little-endian header length `N`, `N` bytes of JSON
//! (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {…}}`),
//! then the data, with offsets relative to its start.
//!
//! **Reading.** The crate parses and validates the header over a memory map
//! of the file (`SafeTensors::read_metadata`: size limits, JSON, dtypes,
//! offsets that tile the data section exactly and match each shape). The
//! map is then dropped, and each tensor is mapped on its own while it is
//! converted into the caller's buffer, so loading a checkpoint never holds
//! more than one tensor of the file beside the model. tessera adds what the
//! crate does not say: which file, which tensor, and which dtypes it reads.
//!
//! **Writing.** The header is built from the crate's `TensorInfo` entries;
//! the data is streamed into any writer in chunks, narrowed to the stored
//! dtype on the way. The crate's own writers would either build the whole
//! file in memory (`serialize`: 44 GB for XXL's f32 weights) or write a
//! file of their own (`serialize_to_file`) that the caller can neither hash
//! as it is written nor fsync before renaming it into a checkpoint
//! ([`crate::folder`] does both).
//!
//! Any failure is a [`SafetensorsError`] naming the file (and the tensor
//! when there is one), never a panic.

use crate::precision::OperandRef;
use memmap2::{Mmap, MmapOptions};
use safetensors::tensor::{Dtype, Metadata, SafeTensorError, TensorInfo as Entry};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a safetensors file could not be read or written.
// A `path` field is the file the message names; other fields say more.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// The OS refused to open, map or write the file.
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid safetensors (truncated, corrupt header, bad offsets).
    #[error("{path} is not a valid safetensors file: {reason}")]
    Corrupt {
        path: PathBuf,
        /// What is wrong, naming the tensor when there is one.
        reason: String,
    },
    /// A tensor the caller asked for is not in the file.
    #[error("{path} has no tensor named {name}")]
    Missing {
        path: PathBuf,
        /// The tensor.
        name: String,
    },
    /// A tensor is stored in a dtype the caller cannot use.
    #[error("tensor {name} in {path} is stored as {dtype}, which cannot be read as {wanted}")]
    WrongDType {
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The stored dtype.
        dtype: String,
        /// What the caller wanted.
        wanted: &'static str,
    },
}

/// The stored element types tessera reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDType {
    /// `F32`.
    F32,
    /// `F16`.
    F16,
    /// `BF16`.
    BF16,
    /// `I64` (token ids in fixtures).
    I64,
}

/// The stored type that keeps a tensor of `dtype` exactly.
impl From<tessera_tensor::DType> for StoredDType {
    fn from(dtype: tessera_tensor::DType) -> Self {
        match dtype {
            tessera_tensor::DType::F32 => StoredDType::F32,
            tessera_tensor::DType::BF16 => StoredDType::BF16,
            tessera_tensor::DType::F16 => StoredDType::F16,
        }
    }
}

impl StoredDType {
    /// The type tessera reads for a stored dtype, if it reads that one.
    fn of(dtype: Dtype) -> Option<Self> {
        Some(match dtype {
            Dtype::F32 => StoredDType::F32,
            Dtype::F16 => StoredDType::F16,
            Dtype::BF16 => StoredDType::BF16,
            Dtype::I64 => StoredDType::I64,
            _ => return None,
        })
    }

    /// The crate's name for it.
    fn dtype(self) -> Dtype {
        match self {
            StoredDType::F32 => Dtype::F32,
            StoredDType::F16 => Dtype::F16,
            StoredDType::BF16 => Dtype::BF16,
            StoredDType::I64 => Dtype::I64,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        self.dtype().bitsize() / 8
    }
}

/// The name headers use (`F32`, `BF16`, …).
impl std::fmt::Display for StoredDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.dtype().fmt(f)
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: StoredDType,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    begin: usize,
    end: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open, validated safetensors file. Each read maps just that tensor's
/// bytes and unmaps them afterwards, so reading a whole checkpoint never
/// keeps more than one tensor of the file resident beside its copy.
pub struct SafeTensors {
    path: PathBuf,
    file: File,
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SafeTensors({}, {} tensors)",
            self.path.display(),
            self.tensors.len()
        )
    }
}

impl SafeTensors {
    /// Maps `path` and validates its header and byte ranges.
    pub fn open(path: &Path) -> Result<Self, SafetensorsError> {
        let io = |source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 8 {
            return Err(corrupt(
                path,
                format!("it is {len} bytes long, shorter than the 8-byte header length"),
            ));
        }
        // SAFETY: a read-only mapping of a file the caller owns. Another
        // process truncating it while mapped is outside what any reader can
        // defend against (as for every mmap-based safetensors reader); every
        // offset is validated against the length observed here before use.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (header_len, header) =
            safetensors::SafeTensors::read_metadata(&map).map_err(|e| invalid(path, &map, e))?;
        drop(map);
        let tensors = entries(path, &header)?;
        let metadata = header.metadata().iter().flatten();
        let metadata = metadata.map(|(k, v)| (k.clone(), v.clone())).collect();
        let data_start = 8 + header_len;
        Ok(SafeTensors {
            path: path.to_path_buf(),
            file,
            data_start,
            tensors,
            metadata,
        })
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The string entries of the header's `__metadata__` (values that are
    /// not strings, which the format does not allow, are left out).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The header entry of a tensor.
    pub fn info(&self, name: &str) -> Result<&TensorInfo, SafetensorsError> {
        self.tensors
            .get(name)
            .ok_or_else(|| SafetensorsError::Missing {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// Maps one tensor's bytes, hands them to `f`, unmaps them.
    fn with_bytes<R>(
        &self,
        info: &TensorInfo,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, SafetensorsError> {
        let len = info.end - info.begin;
        if len == 0 {
            return Ok(f(&[]));
        }
        let offset = (self.data_start + info.begin) as u64;
        // SAFETY: as in `open`: a read-only mapping of a range that `open`
        // checked lies inside the file.
        let map = unsafe { MmapOptions::new().offset(offset).len(len).map(&self.file) }.map_err(
            |source| SafetensorsError::Io {
                path: self.path.clone(),
                source,
            },
        )?;
        Ok(f(&map))
    }

    /// Converts a float tensor (F32, F16 or BF16) into `dst` as f32.
    pub fn read_f32_into(&self, name: &str, dst: &mut [f32]) -> Result<(), SafetensorsError> {
        let info = self.info(name)?;
        assert_eq!(dst.len(), info.numel(), "caller checks the shape first");
        let dtype = info.dtype;
        if dtype == StoredDType::I64 {
            return Err(self.wrong_dtype(name, info, "f32"));
        }
        self.with_bytes(info, |bytes| match dtype {
            StoredDType::F16 => widen(bytes, dst, |bits| half::f16::from_bits(bits).to_f32()),
            StoredDType::BF16 => widen(bytes, dst, |bits| half::bf16::from_bits(bits).to_f32()),
            StoredDType::F32 | StoredDType::I64 => {
                for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                    *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        })
    }

    /// A float tensor as a new f32 vector.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, SafetensorsError> {
        let mut out = vec![0.0; self.info(name)?.numel()];
        self.read_f32_into(name, &mut out)?;
        Ok(out)
    }

    /// An I64 tensor as a vector.
    pub fn read_i64(&self, name: &str) -> Result<Vec<i64>, SafetensorsError> {
        let info = self.info(name)?;
        if info.dtype != StoredDType::I64 {
            return Err(self.wrong_dtype(name, info, "i64"));
        }
        self.with_bytes(info, |bytes| {
            bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect()
        })
    }

    fn wrong_dtype(&self, name: &str, info: &TensorInfo, wanted: &'static str) -> SafetensorsError {
        SafetensorsError::WrongDType {
            path: self.path.clone(),
            name: name.to_string(),
            dtype: info.dtype.to_string(),
            wanted,
        }
    }
}

fn widen(bytes: &[u8], dst: &mut [f32], f: impl Fn(u16) -> f32) {
    for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
        *d = f(u16::from_le_bytes([b[0], b[1]]));
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> SafetensorsError {
    SafetensorsError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The tensors of a validated header, by name, in the types tessera reads.
fn entries(
    path: &Path,
    header: &Metadata,
) -> Result<BTreeMap<String, TensorInfo>, SafetensorsError> {
    let mut tensors = BTreeMap::new();
    for (name, entry) in header.tensors() {
        let dtype = StoredDType::of(entry.dtype).ok_or_else(|| {
            corrupt(
                path,
                format!(
                    "tensor {name} is stored as {}, not one of F32, F16, BF16, I64",
                    entry.dtype
                ),
            )
        })?;
        let (begin, end) = entry.data_offsets;
        let shape = entry.shape.clone();
        tensors.insert(
            name,
            TensorInfo {
                dtype,
                shape,
                begin,
                end,
            },
        );
    }
    Ok(tensors)
}

/// The crate's verdict on a file's header, as a sentence naming the file
/// and, where the header can still be read, the tensor at fault.
fn invalid(path: &Path, file: &[u8], e: SafeTensorError) -> SafetensorsError {
    let reason = match e {
        SafeTensorError::HeaderTooSmall => format!(
            "it is {} bytes long, shorter than the 8-byte header length",
            file.len()
        ),
        SafeTensorError::HeaderTooLarge | SafeTensorError::InvalidHeaderLength => format!(
            "its header length {} does not fit in its {} bytes",
            file.get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes),
            file.len()
        ),
        SafeTensorError::MetadataIncompleteBuffer => {
            "its tensors do not end where the file does (truncated, or bytes appended)".into()
        }
        SafeTensorError::TensorInvalidInfo => match misfit(file) {
            Some(name) => format!("tensor {name}'s byte range does not hold its shape and dtype"),
            None => "a tensor's byte range does not hold its shape and dtype".into(),
        },
        SafeTensorError::InvalidOffset(name) => format!(
            "tensor {name} does not start where the previous one ends (overlapping or a gap)"
        ),
        other => other.to_string(),
    };
    corrupt(path, reason)
}

/// The first tensor (by name) whose byte range is not its shape × dtype,
/// read from a header the crate refused.
fn misfit(file: &[u8]) -> Option<String> {
    let len = usize::try_from(u64::from_le_bytes(file.get(..8)?.try_into().ok()?)).ok()?;
    let json = file.get(8..8usize.checked_add(len)?)?;
    let mut header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(json).ok()?;
    header.remove("__metadata__");
    header.into_iter().find_map(|(name, value)| {
        let entry: Entry = serde_json::from_value(value).ok()?;
        let bytes = entry
            .shape
            .iter()
            .try_fold(entry.dtype.bitsize(), |acc, &d| acc.checked_mul(d))
            .map(|bits| bits / 8);
        let (begin, end) = entry.data_offsets;
        (end.checked_sub(begin) != bytes).then_some(name)
    })
}

/// One tensor to write.
#[derive(Debug, Clone, Copy)]
pub struct TensorToWrite<'a> {
    /// Hugging Face name.
    pub name: &'a str,
    /// Shape.
    pub shape: &'a [usize],
    /// Row-major values: f32, or the 16-bit weights of a model that keeps
    /// them in bf16/fp16 (widened chunk by chunk as they are written).
    pub data: OperandRef<'a>,
}

/// Writes f32 tensors as safetensors (in the order given, header padded to
/// 8 bytes, `{"format": "pt"}` metadata as `save_pretrained` writes).
pub fn write_f32(out: &mut impl Write, tensors: &[TensorToWrite<'_>]) -> std::io::Result<()> {
    write_f32_with_metadata(out, tensors, &[])
}

/// [`write_f32`] with extra `__metadata__` string entries beside
/// `"format": "pt"` (scalars that belong with the tensors, such as an
/// optimizer's step count; read back with [`SafeTensors::metadata`]).
pub fn write_f32_with_metadata(
    out: &mut impl Write,
    tensors: &[TensorToWrite<'_>],
    metadata: &[(&str, &str)],
) -> std::io::Result<()> {
    write_as(out, tensors, StoredDType::F32, metadata)
}

/// Writes `tensors` stored as `dtype` (F32, F16 or BF16; values rounded to
/// nearest-even when narrowed, copied when already of that type), with
/// `metadata` as [`write_f32_with_metadata`].
///
/// Fails, naming the tensor, if a finite value overflows the dtype's range
/// (fp16 ends at 65,504), and for `I64`.
pub fn write_as(
    out: &mut impl Write,
    tensors: &[TensorToWrite<'_>],
    dtype: StoredDType,
    metadata: &[(&str, &str)],
) -> std::io::Result<()> {
    if dtype == StoredDType::I64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "tensors are written as F32, F16 or BF16, not I64",
        ));
    }
    // Sorted maps, so equal tensors always give equal bytes (and hashes).
    let mut meta = BTreeMap::from([("format", "pt")]);
    meta.extend(metadata.iter().copied());
    let mut header = BTreeMap::new();
    header.insert("__metadata__", serde_json::to_value(meta)?);
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.data.len() * dtype.size();
        let entry = Entry {
            dtype: dtype.dtype(),
            shape: t.shape.to_vec(),
            data_offsets: (offset, end),
        };
        header.insert(t.name, serde_json::to_value(entry)?);
        offset = end;
    }
    let mut json = serde_json::to_vec(&header)?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    let mut buf = Vec::with_capacity(1 << 16);
    const CHUNK: usize = 1 << 14;
    for t in tensors {
        for start in (0..t.data.len()).step_by(CHUNK) {
            let wide = t
                .data
                .slice(start..(start + CHUNK).min(t.data.len()))
                .widened();
            let chunk: &[f32] = &wide;
            buf.clear();
            let fits = match dtype {
                StoredDType::F16 => encode(chunk, &mut buf, |v, b| {
                    let h = half::f16::from_f32(v);
                    b.extend(h.to_le_bytes());
                    h.to_f32()
                }),
                StoredDType::BF16 => encode(chunk, &mut buf, |v, b| {
                    let h = half::bf16::from_f32(v);
                    b.extend(h.to_le_bytes());
                    h.to_f32()
                }),
                _ => encode(chunk, &mut buf, |v, b| {
                    b.extend(v.to_le_bytes());
                    v
                }),
            };
            if !fits {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} has values beyond the range of {dtype}", t.name),
                ));
            }
            out.write_all(&buf)?;
        }
    }
    Ok(())
}

/// Appends each value of `chunk` as `put` stores it (returning the stored
/// value widened back); false if a finite value became infinite.
fn encode(chunk: &[f32], buf: &mut Vec<u8>, put: impl Fn(f32, &mut Vec<u8>) -> f32) -> bool {
    chunk
        .iter()
        .all(|&v| put(v, buf).is_finite() || !v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let a = [1.0f32, -2.5, 3.25, f32::MIN_POSITIVE, 7.0, 8.0];
        let b = [0.5f32];
        let mut out = Vec::new();
        write_f32(
            &mut out,
            &[
                TensorToWrite {
                    name: "a",
                    shape: &[2, 3],
                    data: OperandRef::F32(&a),
                },
                TensorToWrite {
                    name: "b",
                    shape: &[],
                    data: OperandRef::F32(&b),
                },
            ],
        )
        .unwrap();
        out
    }

    fn open_bytes(bytes: &[u8]) -> Result<SafeTensors, SafetensorsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        std::fs::write(&path, bytes).unwrap();
        SafeTensors::open(&path)
    }

    #[test]
    fn write_then_read_is_bit_exact() {
        let st = open_bytes(&sample()).unwrap();
        assert_eq!(st.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(st.info("a").unwrap().shape, [2, 3]);
        let a = st.read_f32("a").unwrap();
        assert_eq!(a[3].to_bits(), f32::MIN_POSITIVE.to_bits());
        assert_eq!(st.read_f32("b").unwrap(), [0.5]);
        assert!(matches!(
            st.read_f32("c"),
            Err(SafetensorsError::Missing { .. })
        ));
        assert!(st.read_i64("a").is_err());
    }

    #[test]
    fn metadata_round_trips_beside_the_format() {
        assert_eq!(open_bytes(&sample()).unwrap().metadata()["format"], "pt");
        let mut out = Vec::new();
        let t = TensorToWrite {
            name: "x",
            shape: &[1],
            data: OperandRef::F32(&[2.0]),
        };
        write_f32_with_metadata(&mut out, &[t], &[("step", "7"), ("kind", "adamw")]).unwrap();
        let st = open_bytes(&out).unwrap();
        let meta: Vec<_> = st
            .metadata()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(meta, [("format", "pt"), ("kind", "adamw"), ("step", "7")]);
        assert_eq!(st.read_f32("x").unwrap(), [2.0]);
    }

    #[test]
    fn truncation_and_overlap_are_named() {
        let bytes = sample();
        let err = open_bytes(&bytes[..bytes.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated") && err.contains("tensor"), "{err}");
        let err = open_bytes(&bytes[..5]).unwrap_err().to_string();
        assert!(err.contains("shorter"), "{err}");
        let mut overlapping = bytes.clone();
        let at = bytes.windows(7).position(|w| w == b"[24,28]").unwrap();
        overlapping[at..at + 7].copy_from_slice(b"[20,24]");
        let err = open_bytes(&overlapping).unwrap_err().to_string();
        assert!(err.contains("overlap"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Any corruption of any byte, or any truncation, is an error or a
        /// valid file — never a panic.
        #[test]
        fn corrupt_files_never_panic(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
            let mut bytes = sample();
            let pos = pos % bytes.len();
            bytes[pos] = byte;
            if let Ok(st) = open_bytes(&bytes) {
                for name in st.names().map(str::to_string).collect::<Vec<_>>() {
                    let _ = st.read_f32(&name);
                }
            }
            let cut = cut % bytes.len();
            let _ = open_bytes(&bytes[..cut]);
        }
    }
}
