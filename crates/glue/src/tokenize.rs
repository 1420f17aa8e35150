//! Tokenization with the Hugging Face `tokenizers` crate on a model folder's
//! `tokenizer.json`, and parallel encoding of whole datasets.
//!
//! Encoding matches Python's `tokenizer(text, max_length=L, truncation=True)`:
//! the text is tokenized without special tokens, truncated so that it fits
//! together with the special tokens the post-processor adds (T5: `</s>`), and
//! then post-processed. Targets are encoded the same way, so `labels` are the
//! target tokens followed by `</s>`, as in the seed.

use crate::dataset::Dataset;
use crate::error::{GlueError, Result};
use crate::quiet;
use crate::task::Task;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::{PostProcessor, TruncationDirection};

/// tessera's own tokenizer, built into the binary so that the quickstart
/// runs offline from any folder: a 740-token T5-style Unigram model with
/// `<pad>`, `</s>`, `<unk>` and 100 `<extra_id_N>` sentinels, trained on
/// text written for tessera (provenance: `crates/glue/assets/README.md`).
pub const OWN_TOKENIZER_JSON: &str = include_str!("../assets/tokenizer.json");

/// The seed's source length: `--max-source-length` default.
pub const DEFAULT_MAX_SOURCE_LENGTH: usize = 512;
/// Default target length: far above any GLUE label word (with `</s>`).
pub const DEFAULT_MAX_TARGET_LENGTH: usize = 128;

/// A loaded tokenizer plus the ids of the special tokens T5 needs.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    origin: PathBuf,
    pad_id: u32,
    eos_id: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("origin", &self.origin)
            .field("pad_id", &self.pad_id)
            .field("eos_id", &self.eos_id)
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` (a file, or a model folder containing one).
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        if !file.is_file() {
            return Err(GlueError::Tokenizer {
                path: file,
                message: "file not found".to_string(),
            });
        }
        let inner = parse_quietly(&file).map_err(|message| GlueError::Tokenizer {
            path: file.clone(),
            message,
        })?;
        Self::new(inner, file)
    }

    /// Wraps a tokenizer built in code; `origin` names it in errors.
    ///
    /// The vocabulary must have T5's `<pad>` and `</s>` tokens.
    pub fn new(inner: tokenizers::Tokenizer, origin: PathBuf) -> Result<Self> {
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| GlueError::Tokenizer {
                    path: origin.clone(),
                    message: format!("the vocabulary has no '{token}' token"),
                })
        };
        let (pad_id, eos_id) = (id("<pad>")?, id("</s>")?);
        Ok(TextTokenizer {
            inner,
            origin,
            pad_id,
            eos_id,
        })
    }

    /// Id of `<pad>` (T5: 0), also the decoder start token.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of `</s>` (T5: 1).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The wrapped `tokenizers` tokenizer (e.g. to save it next to an exported model).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text` with the post-processor's special tokens, at most `max_len` of them.
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        Ok(self.encode_truncating(text, max_len)?.0)
    }

    /// Like [`TextTokenizer::encode`], and the length `text` had before it
    /// was cut (special tokens included; more than `max_len` when cut).
    fn encode_truncating(&self, text: &str, max_len: usize) -> Result<(Vec<u32>, usize)> {
        let special = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        let budget = max_len.checked_sub(special).filter(|&b| b > 0).ok_or_else(|| {
            GlueError::Invalid(format!(
                "a maximum length of {max_len} leaves no room for text next to {special} special token(s)"
            ))
        })?;
        let mut encoding = self.inner.encode(text, false).map_err(|e| self.error(e))?;
        let full_len = encoding.len() + special;
        if encoding.len() > budget {
            encoding.truncate(budget, 0, TruncationDirection::Right);
        }
        let encoding = self
            .inner
            .post_process(encoding, None, true)
            .map_err(|e| self.error(e))?;
        Ok((encoding.get_ids().to_vec(), full_len))
    }

    /// Text of `ids`, without special tokens when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| self.error(e))
    }

    fn error(&self, e: tokenizers::Error) -> GlueError {
        GlueError::Tokenizer {
            path: self.origin.clone(),
            message: e.to_string(),
        }
    }
}

/// Maximum token counts, special tokens included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lengths {
    /// Encoder input (`--max-source-length`, default 512).
    pub source: usize,
    /// Labels (target tokens + `</s>`).
    pub target: usize,
}

impl Default for Lengths {
    fn default() -> Self {
        Lengths {
            source: DEFAULT_MAX_SOURCE_LENGTH,
            target: DEFAULT_MAX_TARGET_LENGTH,
        }
    }
}

/// One tokenized example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedExample {
    /// Encoder input ids (prompt tokens + `</s>`).
    pub input_ids: Vec<u32>,
    /// Target ids (label word tokens + `</s>`); empty when the example has no label.
    pub labels: Vec<u32>,
}

/// A tokenized dataset, ready for batching.
#[derive(Debug, Clone)]
pub struct EncodedDataset {
    /// The task the examples belong to.
    pub task: Task,
    /// The examples, in dataset order.
    pub examples: Vec<EncodedExample>,
    /// The lengths the examples were truncated to (also the fixed-padding shape).
    pub lengths: Lengths,
    /// `<pad>` id used for padding and as the decoder start token.
    pub pad_id: u32,
    /// How the sources fitted `lengths.source`.
    pub sources: Truncation,
    /// How the targets fitted `lengths.target`.
    pub targets: Truncation,
}

/// How the texts of one side fitted their maximum length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncation {
    /// Texts cut at the maximum length.
    pub truncated: usize,
    /// The longest text in tokens (special tokens included) before any cut.
    pub longest: usize,
}

impl Truncation {
    fn of(max_len: usize, full_lens: impl Iterator<Item = usize>) -> Self {
        full_lens.fold(Truncation::default(), |t, len| Truncation {
            truncated: t.truncated + usize::from(len > max_len),
            longest: t.longest.max(len),
        })
    }
}

impl EncodedDataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }
}

/// Tokenizes every example of `data` (prompt and target), in parallel on the rayon pool.
///
/// Each distinct target text is tokenized once (a classification task has only
/// a few label words).
pub fn encode_dataset(
    tokenizer: &TextTokenizer,
    data: &Dataset,
    lengths: Lengths,
) -> Result<EncodedDataset> {
    let task = data.task;
    let mut target_texts: Vec<String> = data
        .examples
        .iter()
        .filter_map(|e| task.target_text(&e.label))
        .collect();
    target_texts.sort_unstable();
    target_texts.dedup();
    let targets: HashMap<String, (Vec<u32>, usize)> = target_texts
        .into_par_iter()
        .map(|t| {
            tokenizer
                .encode_truncating(&t, lengths.target)
                .map(|e| (t, e))
        })
        .collect::<Result<_>>()?;
    let encoded: Vec<(EncodedExample, usize, usize)> = data
        .examples
        .par_iter()
        .map(|example| {
            let source = task.source_text(example);
            let (input_ids, source_len) = tokenizer.encode_truncating(&source, lengths.source)?;
            let (labels, target_len) = task
                .target_text(&example.label)
                .and_then(|t| targets.get(&t).cloned())
                .unwrap_or_default();
            Ok((EncodedExample { input_ids, labels }, source_len, target_len))
        })
        .collect::<Result<_>>()?;
    Ok(EncodedDataset {
        task,
        sources: Truncation::of(lengths.source, encoded.iter().map(|e| e.1)),
        targets: Truncation::of(lengths.target, encoded.iter().map(|e| e.2)),
        examples: encoded.into_iter().map(|(e, ..)| e).collect(),
        lengths,
        pad_id: tokenizer.pad_id(),
    })
}

/// Longest vocabulary piece accepted, in bytes. Real SentencePiece and BPE
/// pieces are a few dozen bytes; `tokenizers` builds a trie one node per
/// byte and frees it recursively, so a damaged file with a piece of tens of
/// kilobytes overflows the stack (a crash no error can report; found by
/// fuzzing).
const MAX_PIECE_BYTES: usize = 1024;

/// Parses a `tokenizer.json` and encodes a probe text with it, as an error
/// message on failure.
///
/// `tokenizers` panics on some damaged files instead of returning an error
/// (0.22: a `precompiled_charsmap` whose base64 has a 6-bit remainder while
/// parsing; a post-processor template naming a special token it does not
/// define at the first encode), so both run under [`quiet::catch`]; and it
/// overflows the stack on an overlong vocabulary piece, which is refused
/// before it gets there.
fn parse_quietly(file: &Path) -> std::result::Result<tokenizers::Tokenizer, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read ({e})"))?;
    if let Some(len) = longest_piece(&text) {
        if len > MAX_PIECE_BYTES {
            return Err(format!(
                "cannot load: the file is damaged (a vocabulary piece of {len} bytes; real ones are a few dozen)"
            ));
        }
    }
    let damaged = |why| format!("cannot load: the file is damaged ({why})");
    let tokenizer = match quiet::catch(|| text.parse::<tokenizers::Tokenizer>()) {
        Ok(Ok(tokenizer)) => tokenizer,
        Ok(Err(e)) => return Err(format!("cannot load ({e})")),
        Err(why) => return Err(damaged(why)),
    };
    match quiet::catch(|| tokenizer.encode("probe text", true).map(drop)) {
        Ok(Ok(())) => Ok(tokenizer),
        Ok(Err(e)) => Err(format!("cannot encode a probe text ({e})")),
        Err(why) => Err(damaged(why)),
    }
}

/// The byte length of the longest piece of the model's vocabulary (a list
/// of `[piece, score]` for Unigram, a map for BPE and WordPiece); `None` when
/// the text is not JSON (the parser then says why).
fn longest_piece(text: &str) -> Option<usize> {
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let vocab = json.get("model")?.get("vocab")?;
    let pieces: Vec<&str> = match vocab {
        serde_json::Value::Array(entries) => {
            entries.iter().filter_map(|e| e.get(0)?.as_str()).collect()
        }
        serde_json::Value::Object(map) => map.keys().map(String::as_str).collect(),
        _ => return None,
    };
    pieces.iter().map(|p| p.len()).max()
}
