//! Writing results: atomic file writes and one-line error messages.

use anyhow::Result;
use std::path::Path;

/// Writes `bytes` to `path` atomically and durably
/// ([`tessera_t5::folder::write_file`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(tessera_t5::folder::write_file(path, bytes)?)
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// An error and its causes as one line: `outer: inner: root`.
pub fn one_line(err: &anyhow::Error) -> String {
    err.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
