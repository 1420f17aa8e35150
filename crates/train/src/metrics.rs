//! `metrics.jsonl`: one JSON object per line, appended and flushed as the run goes.
//!
//! Optimizer steps write a [`StepReport`](crate::trainer::StepReport)
//! (`step`, `loss`, `lr`, `grad_norm`, `examples_per_s`, …); evaluations
//! write `{"step": N, "eval": {…}}`. A resumed run appends to the same file,
//! so the file is the history of every step actually taken (a step repeated
//! after an interruption appears twice, with what was measured each time).

use crate::{Result, TrainError};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The metrics file's name inside the output folder.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// An open `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

impl MetricsLog {
    /// Opens (creating folders and file as needed) `path` for appending.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TrainError::io("cannot create", dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainError::io("cannot open", path, e))?;
        Ok(MetricsLog {
            file,
            path: path.to_owned(),
        })
    }

    /// Appends `record` as one line and flushes it.
    pub fn write(&mut self, record: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_string(record).expect("metrics records serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| TrainError::io("cannot write", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_appended_across_reopenings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join(METRICS_FILE);
        MetricsLog::open(&path)
            .unwrap()
            .write(&serde_json::json!({"step": 1}))
            .unwrap();
        MetricsLog::open(&path)
            .unwrap()
            .write(&serde_json::json!({"step": 2}))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"step\":1}\n{\"step\":2}\n");
    }
}
