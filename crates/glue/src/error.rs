//! The one error type of the crate: every variant names the file (and the line or
//! row group) or the setting that caused it, so a user sees one clear sentence.

use std::path::PathBuf;

/// Everything that can go wrong between a dataset file and a score.
// A `path` field is the file the message names; other fields say more.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum GlueError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A line of a text file (TSV, JSONL) is malformed.
    #[error("{path}, line {line}: {message}")]
    Line {
        path: PathBuf,
        /// One-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// A row of a Parquet file is malformed.
    #[error("{path}, row group {row_group}, row {row}: {message}")]
    Row {
        path: PathBuf,
        /// Zero-based row group.
        row_group: usize,
        /// Zero-based row within the row group.
        row: usize,
        /// What is wrong with the row.
        message: String,
    },
    /// The file as a whole is unusable (empty, missing columns, unknown format).
    #[error("{path}: {message}")]
    File {
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The tokenizer could not be loaded or failed on a text.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        path: PathBuf,
        /// What the tokenizer library said.
        message: String,
    },
    /// A setting is invalid (unknown task or split name, zero batch size, …).
    #[error("{0}")]
    Invalid(String),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, GlueError>;

impl GlueError {
    /// An error about one line of a text file.
    pub(crate) fn line(path: &std::path::Path, line: usize, message: impl Into<String>) -> Self {
        GlueError::Line {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    /// An error about a whole file.
    pub(crate) fn file(path: &std::path::Path, message: impl Into<String>) -> Self {
        GlueError::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// An I/O error on a file.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        GlueError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
