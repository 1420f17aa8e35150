//! A training run's report page.
//!
//! [`RunLog::read`] reads a run's `metrics.jsonl` as a killed or resumed
//! run leaves it; [`render`] draws one or several runs as one
//! self-contained HTML page (inline SVG charts drawn with `plotters`, each
//! with its numbers in a table, the last evaluation's confusion matrix and
//! per-class scores, and the run's configuration, data, model and machine).
//! The trainer rewrites `OUTPUT/report.html` after every evaluation and at
//! the end; `cargo xtask report` draws any runs side by side.

#![forbid(unsafe_code)]

mod chart;
mod html;
mod read;

pub use chart::ChartError;
pub use html::{escape, page, render};
pub use read::{Eval, ReadError, RunLog, Step};

/// The report page's name in a run's output folder.
pub const REPORT_FILE: &str = "report.html";
