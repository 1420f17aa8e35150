//! Dataset readers: GLUE TSV, Hugging Face JSONL and Parquet exports, split
//! folders, and the built-in `nli-synthetic` source.
//!
//! Every reader produces a [`Dataset`]: the task's examples in file order plus
//! the number of rows skipped because they had no gold label (GLUE skips them;
//! we count them so the caller can report the number).

mod jsonl;
#[cfg(feature = "parquet")]
mod parquet;
mod split;
pub mod synthetic;
mod tsv;

pub use split::locate_split;

use crate::dataset::{Dataset, ReadOptions, Split};
use crate::error::{GlueError, Result};
use crate::task::Task;
use std::path::{Path, PathBuf};

/// A file format, chosen from the file name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// GLUE's tab-separated files with a header line (`.tsv`).
    Tsv,
    /// One JSON object per line, as `datasets` exports (`.jsonl`, `.json`).
    Jsonl,
    /// Apache Parquet, as on the Hugging Face Hub (`.parquet`).
    Parquet,
}

impl Format {
    /// The format of `path`, from its extension.
    pub fn of(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("tsv") => Ok(Format::Tsv),
            Some("jsonl") | Some("json") => Ok(Format::Jsonl),
            Some("parquet") => Ok(Format::Parquet),
            _ => Err(GlueError::file(
                path,
                "unknown data format; expected a .tsv, .jsonl or .parquet file",
            )),
        }
    }
}

/// Reads one data file of `task`, choosing the reader from the extension.
pub fn read_file(path: &Path, task: Task, options: ReadOptions) -> Result<Dataset> {
    match Format::of(path)? {
        Format::Tsv => tsv::read(path, task, options),
        Format::Jsonl => jsonl::read(path, task, options),
        Format::Parquet => read_parquet(path, task, options),
    }
}

#[cfg(feature = "parquet")]
fn read_parquet(path: &Path, task: Task, options: ReadOptions) -> Result<Dataset> {
    parquet::read(path, task, options)
}

#[cfg(not(feature = "parquet"))]
fn read_parquet(path: &Path, _task: Task, _options: ReadOptions) -> Result<Dataset> {
    Err(GlueError::file(
        path,
        "this build of tessera-glue has no Parquet support (enable the `parquet` feature)",
    ))
}

/// Reads several files of one split (e.g. Parquet shards) into one dataset, in the given order.
pub fn read_files(paths: &[PathBuf], task: Task, options: ReadOptions) -> Result<Dataset> {
    let mut iter = paths.iter();
    let first = iter
        .next()
        .ok_or_else(|| GlueError::Invalid("no data files given".to_string()))?;
    let mut data = read_file(first, task, options)?;
    for path in iter {
        data.extend(read_file(path, task, options)?);
    }
    Ok(data)
}

/// Where a dataset comes from: the built-in synthetic data, a file, or a folder of splits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in `nli-synthetic` data (MNLI schema), see [`crate::synthetic`].
    NliSynthetic,
    /// One data file (`.tsv`, `.jsonl`, `.parquet`); the split name is ignored.
    File(PathBuf),
    /// A folder holding split files (GLUE download, `datasets` export, Hub Parquet files).
    Folder(PathBuf),
}

impl Source {
    /// `nli-synthetic`, or a path (a folder if it is one, else a file).
    pub fn parse(spec: &str) -> Source {
        if spec == synthetic::NAME {
            Source::NliSynthetic
        } else if Path::new(spec).is_dir() {
            Source::Folder(PathBuf::from(spec))
        } else {
            Source::File(PathBuf::from(spec))
        }
    }

    /// Loads `split` of `task` from this source.
    ///
    /// The synthetic source has the MNLI schema, so it only serves MNLI-schema
    /// tasks (`mnli`, `ax`), and only the `train` and `validation*` splits.
    pub fn load(&self, task: Task, split: Split, options: ReadOptions) -> Result<Dataset> {
        match self {
            Source::NliSynthetic => synthetic::dataset(task, split),
            Source::File(path) => read_file(path, task, options),
            Source::Folder(dir) => read_files(&locate_split(dir, task, split)?, task, options),
        }
    }
}

/// Splits a line-based text file into lines, checking UTF-8 per line so that an
/// error names the line. Yields `(one-based line number, line without "\r\n")`.
pub(crate) fn text_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let bytes = std::fs::read(path).map_err(|e| GlueError::io(path, e))?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(GlueError::file(path, "the file is empty"));
    }
    let mut lines = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw)
            .map_err(|e| GlueError::line(path, i + 1, format!("invalid UTF-8 ({e})")))?;
        lines.push((i + 1, line.to_string()));
    }
    if lines.last().is_some_and(|(_, l)| l.is_empty()) {
        lines.pop();
    }
    Ok(lines)
}
