//! Batches of token ids for the encoder–decoder, with dynamic or fixed padding.
//!
//! Layout follows the seed (Hugging Face `T5ForConditionalGeneration`):
//! `decoder_input_ids` = `<pad>` followed by the labels shifted right by one;
//! `labels` = target tokens + `</s>`, padding set to [`IGNORE_INDEX`] (-100)
//! so it carries no loss. All arrays are row-major `[batch, length]`.

use crate::error::{GlueError, Result};
use crate::tokenize::EncodedDataset;
use serde::{Deserialize, Serialize};

/// The label value that the loss ignores (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i32 = -100;

/// How rows of a batch are padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// To the longest source and the longest target in the batch (the default:
    /// MNLI prompts average about 60 tokens, far below 512).
    #[default]
    Dynamic,
    /// To the dataset's maximum lengths, so every batch has the same shape
    /// (static shapes, as an IPU needs, and as the seed pads to 512).
    Fixed,
}

/// One batch, ready to feed the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Indices of the rows in the encoded dataset, in batch order.
    pub rows: Vec<usize>,
    /// Padded source length.
    pub source_len: usize,
    /// Padded target length.
    pub target_len: usize,
    /// Encoder input ids `[batch, source_len]`, padded with `<pad>`.
    pub input_ids: Vec<u32>,
    /// 1 for real source tokens, 0 for padding `[batch, source_len]`.
    pub attention_mask: Vec<u8>,
    /// `<pad>` + labels shifted right `[batch, target_len]`, padded with `<pad>`.
    pub decoder_input_ids: Vec<u32>,
    /// 1 for real decoder positions, 0 for padding `[batch, target_len]`.
    pub decoder_attention_mask: Vec<u8>,
    /// Target ids + `</s>`, padding [`IGNORE_INDEX`] `[batch, target_len]`.
    pub labels: Vec<i32>,
}

impl Batch {
    /// Number of rows.
    pub fn batch_size(&self) -> usize {
        self.rows.len()
    }

    /// Number of label positions that carry loss (not [`IGNORE_INDEX`]).
    pub fn target_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// Pads the rows `rows` of `data` into a batch.
    pub fn collate(data: &EncodedDataset, rows: &[usize], padding: Padding) -> Result<Batch> {
        let examples = rows
            .iter()
            .map(|&r| {
                data.examples.get(r).ok_or_else(|| {
                    GlueError::Invalid(format!("row {r} is out of range ({} rows)", data.len()))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (source_len, target_len) = match padding {
            Padding::Fixed => (data.lengths.source, data.lengths.target),
            Padding::Dynamic => (
                examples
                    .iter()
                    .map(|e| e.input_ids.len())
                    .max()
                    .unwrap_or(0),
                examples.iter().map(|e| e.labels.len()).max().unwrap_or(0),
            ),
        };
        let pad = data.pad_id;
        let mut batch = Batch {
            rows: rows.to_vec(),
            source_len,
            target_len,
            input_ids: Vec::with_capacity(rows.len() * source_len),
            attention_mask: Vec::with_capacity(rows.len() * source_len),
            decoder_input_ids: Vec::with_capacity(rows.len() * target_len),
            decoder_attention_mask: Vec::with_capacity(rows.len() * target_len),
            labels: Vec::with_capacity(rows.len() * target_len),
        };
        for example in examples {
            let (ids, labels) = (&example.input_ids, &example.labels);
            if ids.len() > source_len || labels.len() > target_len {
                return Err(GlueError::Invalid(format!(
                    "a row of {} source / {} target tokens does not fit fixed padding {source_len}/{target_len}",
                    ids.len(),
                    labels.len()
                )));
            }
            push_padded(
                &mut batch.input_ids,
                &mut batch.attention_mask,
                ids,
                source_len,
                pad,
            );
            let shifted: Vec<u32> = labels
                .iter()
                .take(labels.len().saturating_sub(1))
                .copied()
                .collect();
            let decoder: Vec<u32> = if labels.is_empty() {
                Vec::new()
            } else {
                std::iter::once(pad).chain(shifted).collect()
            };
            push_padded(
                &mut batch.decoder_input_ids,
                &mut batch.decoder_attention_mask,
                &decoder,
                target_len,
                pad,
            );
            batch.labels.extend(labels.iter().map(|&t| t as i32));
            batch
                .labels
                .extend(std::iter::repeat_n(IGNORE_INDEX, target_len - labels.len()));
        }
        Ok(batch)
    }
}

/// Appends `ids` padded to `len` with `pad`, and the matching 1/0 mask.
fn push_padded(out: &mut Vec<u32>, mask: &mut Vec<u8>, ids: &[u32], len: usize, pad: u32) {
    out.extend_from_slice(ids);
    out.extend(std::iter::repeat_n(pad, len - ids.len()));
    mask.extend(std::iter::repeat_n(1, ids.len()));
    mask.extend(std::iter::repeat_n(0, len - ids.len()));
}
