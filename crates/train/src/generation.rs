//! Greedy generation of text for many prompts at once: the engine of
//! `cargo xtask generate` (evaluation generates from the encoder pass it
//! scores with, see [`crate::eval`]).
//!
//! Prompts are decoded `batch_size` at a time in their own order: batches
//! are packed (no padding), so sorting by length would gain nothing.

use crate::error::{Result, TrainError};
use tessera_glue::TextTokenizer;
use tessera_t5::T5Model;

/// How to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Tokens generated per prompt at most (generation stops earlier at `</s>`).
    pub max_new_tokens: usize,
    /// Prompts decoded together.
    pub batch_size: usize,
}

/// The generated token ids of each prompt, after the decoder start token
/// and up to its `</s>` (no padding), in prompt order; `prompts` are token
/// ids with `</s>`, as [`TextTokenizer::encode`] makes them.
pub fn generate_ids(
    model: &T5Model,
    prompts: &[&[u32]],
    options: GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    check_options(options)?;
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(TrainError::setting(
            "prompt",
            "an empty prompt cannot be encoded",
        ));
    }
    let mut out = Vec::with_capacity(prompts.len());
    let generator = model.generator()?;
    for batch in prompts.chunks(options.batch_size) {
        let rows = generator.generate(batch, options.max_new_tokens)?;
        out.extend(rows.iter().map(|row| generated(model, row)));
    }
    Ok(out)
}

/// The tokens of a generated row after the decoder start token, up to and
/// including its `</s>`.
pub(crate) fn generated(model: &T5Model, row: &[u32]) -> Vec<u32> {
    let tokens = row.get(1..).unwrap_or_default();
    let eos = model.config().eos_token_id;
    let end = tokens
        .iter()
        .position(|&t| t == eos)
        .map_or(tokens.len(), |e| e + 1);
    tokens[..end].to_vec()
}

/// The generated text of each prompt, without special tokens and trimmed, in
/// prompt order. Prompts longer than `max_source_length` tokens are cut.
pub fn generate_texts(
    model: &T5Model,
    tokenizer: &TextTokenizer,
    prompts: &[String],
    max_source_length: usize,
    options: GenerateOptions,
) -> Result<Vec<String>> {
    let encoded = prompts
        .iter()
        .map(|p| tokenizer.encode(p, max_source_length))
        .collect::<tessera_glue::Result<Vec<_>>>()?;
    let refs: Vec<&[u32]> = encoded.iter().map(Vec::as_slice).collect();
    let ids = generate_ids(model, &refs, options)?;
    decode_all(tokenizer, &ids)
}

/// Decodes each row without special tokens, trimmed.
pub fn decode_all(tokenizer: &TextTokenizer, rows: &[Vec<u32>]) -> Result<Vec<String>> {
    rows.iter()
        .map(|ids| Ok(tokenizer.decode(ids, true)?.trim().to_string()))
        .collect()
}

pub(crate) fn check_options(options: GenerateOptions) -> Result<()> {
    if options.batch_size == 0 {
        return Err(TrainError::setting("--batch-size", "must be at least 1"));
    }
    if options.max_new_tokens == 0 {
        return Err(TrainError::setting(
            "--max-new-tokens",
            "must be at least 1",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_model;

    #[test]
    fn batching_does_not_change_the_generated_ids() {
        let model = tiny_model(64);
        let prompts: [&[u32]; 3] = [&[5, 6, 1], &[7, 8, 9, 10, 11, 1], &[12, 1]];
        let opts = |batch_size| GenerateOptions {
            max_new_tokens: 4,
            batch_size,
        };
        let one_by_one = generate_ids(&model, &prompts, opts(1)).unwrap();
        for (p, row) in prompts.iter().zip(&one_by_one) {
            let alone = model.generate(&[p], 4).unwrap();
            assert_eq!(generated(&model, &alone[0]), row[..]);
        }
        let batched = generate_ids(&model, &prompts, opts(3)).unwrap();
        assert_eq!(batched, one_by_one);
    }

    #[test]
    fn zero_batch_size_and_empty_prompts_are_rejected() {
        let model = tiny_model(64);
        let err = generate_ids(
            &model,
            &[&[1]],
            GenerateOptions {
                max_new_tokens: 1,
                batch_size: 0,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("--batch-size"), "{err}");
        let err = generate_ids(
            &model,
            &[&[]],
            GenerateOptions {
                max_new_tokens: 1,
                batch_size: 1,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("empty prompt"), "{err}");
    }
}
