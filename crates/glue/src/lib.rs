//! GLUE/MNLI data for tessera: everything between a dataset file and a batch of
//! token ids, and between generated text and a score.
//!
//! - [`read`]: GLUE TSV, Hugging Face JSONL and Parquet readers, split folders,
//!   the built-in [`synthetic`] (`nli-synthetic`) source, all producing a
//!   [`Dataset`] of one [`Split`].
//! - [`task`]: the GLUE tasks (and a custom `{"input","target"}` task) with
//!   T5's text-to-text prompts and targets; MNLI is the seed's
//!   `mnli hypothesis: {hypothesis} premise: {premise}`.
//! - [`tokenize`]: `tokenizer.json` via the `tokenizers` crate, parallel encoding.
//! - [`loader`]: which rows make each batch (file order, shuffled or
//!   length-bucketed) and a checkpointable [`Cursor`]; the model packs a
//!   batch's rows itself, so nothing here pads.
//! - [`answer`] and [`metrics`]: postprocessing of generated text and scores.
//!
//! ```
//! use tessera_glue::{Source, Split, Task, ReadOptions};
//! let data = Source::parse("nli-synthetic")
//!     .load(Task::mnli(), Split::ValidationMismatched, ReadOptions::default())
//!     .unwrap();
//! let prompt = data.task.source_text(&data.examples[0]);
//! assert!(prompt.starts_with("mnli hypothesis: "));
//! ```

#![forbid(unsafe_code)]

pub mod answer;
mod dataset;
mod error;
pub mod loader;
pub mod metrics;
mod quiet;
pub mod read;
pub mod task;
pub mod tokenize;

pub use answer::{parse_answer, Answer};
pub use dataset::{Dataset, ReadOptions, Split};
pub use error::{GlueError, Result};
pub use loader::{Cursor, Loader, LoaderConfig, Order};
pub use metrics::{evaluate, Summary};
pub use read::{read_file, synthetic, Format, Source};
pub use task::{Example, Label, TargetKind, Task};
pub use tokenize::{
    encode_dataset, EncodedDataset, EncodedExample, Lengths, TextTokenizer, Truncation,
    OWN_TOKENIZER_JSON,
};

/// The `parquet` crate this crate reads with, re-exported so callers (and the
/// tests) can write Parquet files with the same version.
#[cfg(feature = "parquet")]
pub use parquet;
/// The `tokenizers` crate, re-exported: [`TextTokenizer::new`] takes its `Tokenizer`.
pub use tokenizers;
