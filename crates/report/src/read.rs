//! Reading `metrics.jsonl` as a run leaves it.
//!
//! A run appends one JSON object per line: a header when it starts or
//! resumes (`event`, `config`, `model`, `machine`, `tessera`, `data`), one per
//! optimizer step (`step`, `loss`, `lr`, `grad_norm`, …) and one per
//! evaluation (`{"step", "eval": {…}}`). A killed run may leave its last line
//! cut short: that line is skipped and reported. A resumed run appends, so a
//! step taken again after an interruption appears twice: the later line
//! wins. Any other line that is not a JSON object is an error naming it.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a metrics file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read at all.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line (not the last) is not a metrics record.
    #[error("line {line} of {} is not a metrics record: {reason}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// One-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// One optimizer step as `metrics.jsonl` records it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Step {
    /// Optimizer step (1-based).
    pub step: u64,
    /// Mean token cross-entropy of the global batch.
    pub loss: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Training rows per second of the step.
    #[serde(default)]
    pub examples_per_s: f64,
    /// Wall time of the step.
    #[serde(default)]
    pub seconds: f64,
    /// Real source tokens of the step.
    #[serde(default)]
    pub source_tokens: u64,
    /// Real target tokens of the step.
    #[serde(default)]
    pub target_tokens: u64,
    /// fp16's loss scale (absent in other precisions).
    #[serde(default)]
    pub loss_scale: Option<f64>,
    /// Whether fp16 skipped the step (a gradient overflowed).
    #[serde(default)]
    pub skipped: bool,
}

impl Step {
    /// Real tokens (source and target) per second.
    pub fn tokens_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.source_tokens + self.target_tokens) as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// One evaluation: the summary `tessera_glue::evaluate` writes, and the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Eval {
    /// The step it followed.
    pub step: u64,
    /// The whole `eval` object (task, accuracy, classes, loss, …).
    pub summary: Value,
}

impl Eval {
    /// A number of the summary (`accuracy`, `loss`, `f1`, …), when present.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.summary.get(key)?.as_f64()
    }
}

/// Everything a run's `metrics.jsonl` says.
#[derive(Debug, Clone, Default)]
pub struct RunLog {
    /// What the report calls the run (its output folder).
    pub name: String,
    /// The newest start/resume header (configuration, model, machine, data).
    pub header: Option<Value>,
    /// Steps at which the run started or resumed, in file order.
    pub starts: Vec<(String, u64)>,
    /// Steps by number; a repeated step keeps its later line.
    pub steps: BTreeMap<u64, Step>,
    /// Evaluations by step; a repeated one keeps its later line.
    pub evals: BTreeMap<u64, Eval>,
    /// Whether the last line was cut short (a killed run) and skipped.
    pub truncated: bool,
}

impl RunLog {
    /// Reads `path`, naming the run `name`.
    pub fn read(path: &Path, name: &str) -> Result<Self, ReadError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, name).map_err(|(line, reason)| ReadError::Line {
            path: path.to_path_buf(),
            line,
            reason,
        })
    }

    /// Parses the text of a metrics file; an error is the one-based line
    /// and what is wrong with it.
    pub fn parse(text: &str, name: &str) -> Result<Self, (usize, String)> {
        let mut log = RunLog {
            name: name.to_string(),
            ..RunLog::default()
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        for (i, line) in lines.iter().enumerate() {
            let value: Value = match serde_json::from_str(line) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => return Err((i + 1, "not a JSON object".into())),
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                    log.truncated = true;
                    break;
                }
                Err(e) => return Err((i + 1, e.to_string())),
            };
            log.add(value).map_err(|reason| (i + 1, reason))?;
        }
        Ok(log)
    }

    /// Files one record under what it is.
    fn add(&mut self, value: Value) -> Result<(), String> {
        if let Some(event) = value.get("event").and_then(Value::as_str) {
            let at = value.get("at_step").and_then(Value::as_u64).unwrap_or(0);
            self.starts.push((event.to_string(), at));
            self.header = Some(value);
            return Ok(());
        }
        let step = value
            .get("step")
            .and_then(Value::as_u64)
            .ok_or("it has neither an event nor a step")?;
        if let Some(summary) = value.get("eval") {
            let summary = summary.clone();
            self.evals.insert(step, Eval { step, summary });
            return Ok(());
        }
        let record: Step = serde_json::from_value(value).map_err(|e| e.to_string())?;
        self.steps.insert(step, record);
        Ok(())
    }

    /// A header field (`config`, `model`, `machine`, `data`, `tessera`).
    pub fn header_field(&self, key: &str) -> Option<&Value> {
        self.header.as_ref()?.get(key)
    }
}
