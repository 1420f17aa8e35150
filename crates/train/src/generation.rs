//! Greedy generation of text for many prompts at once: the shared engine of
//! evaluation ([`crate::eval`]) and of `cargo xtask generate`.
//!
//! Prompts are sorted by length and cut into batches of similar lengths, so
//! that little time goes into padding; the texts come back in prompt order.

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

/// The generated token ids (after the decoder start token) of each prompt, in
/// prompt order; `prompts` are token ids with `</s>`, as
/// [`TextTokenizer::encode`] makes them.
pub fn generate_ids(
    model: &T5Model,
    prompts: &[&[u32]],
    pad_id: u32,
    options: GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    check_options(options)?;
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    let mut out = vec![Vec::new(); prompts.len()];
    for rows in order.chunks(options.batch_size) {
        let src_len = rows.iter().map(|&r| prompts[r].len()).max().unwrap_or(0);
        if src_len == 0 {
            return Err(TrainError::setting(
                "prompt",
                "an empty prompt cannot be encoded",
            ));
        }
        let mut ids = Vec::with_capacity(rows.len() * src_len);
        let mut mask = Vec::with_capacity(rows.len() * src_len);
        for &r in rows {
            let p = prompts[r];
            ids.extend_from_slice(p);
            ids.extend(std::iter::repeat_n(pad_id, src_len - p.len()));
            mask.extend(std::iter::repeat_n(1u8, p.len()));
            mask.extend(std::iter::repeat_n(0u8, src_len - p.len()));
        }
        let generated = model.generate(&ids, &mask, rows.len(), options.max_new_tokens)?;
        for (&r, row) in rows.iter().zip(generated) {
            out[r] = row.get(1..).unwrap_or_default().to_vec();
        }
    }
    Ok(out)
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
    let ids = generate_ids(model, &refs, tokenizer.pad_id(), options)?;
    decode_all(tokenizer, &ids)
}

/// Decodes each row without special tokens, trimmed.
pub fn decode_all(tokenizer: &TextTokenizer, rows: &[Vec<u32>]) -> Result<Vec<String>> {
    rows.iter()
        .map(|ids| Ok(tokenizer.decode(ids, true)?.trim().to_string()))
        .collect()
}

fn check_options(options: GenerateOptions) -> Result<()> {
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
    fn batching_and_sorting_do_not_change_the_generated_ids() {
        let model = tiny_model(64);
        let prompts: [&[u32]; 3] = [&[5, 6, 1], &[7, 8, 9, 10, 11, 1], &[12, 1]];
        let opts = |batch_size| GenerateOptions {
            max_new_tokens: 4,
            batch_size,
        };
        let one_by_one = generate_ids(&model, &prompts, 0, opts(1)).unwrap();
        for (p, row) in prompts.iter().zip(&one_by_one) {
            let alone = model.generate(p, &vec![1; p.len()], 1, 4).unwrap();
            assert_eq!(&alone[0][1..], &row[..]);
        }
        let batched = generate_ids(&model, &prompts, 0, opts(3)).unwrap();
        assert_eq!(batched, one_by_one);
    }

    #[test]
    fn zero_batch_size_and_empty_prompts_are_rejected() {
        let model = tiny_model(64);
        let err = generate_ids(
            &model,
            &[&[1]],
            0,
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
            0,
            GenerateOptions {
                max_new_tokens: 1,
                batch_size: 1,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("empty prompt"), "{err}");
    }
}
