//! Helpers shared by the integration tests: a tiny T5-style tokenizer the
//! repository owns (built in code), and small files written to a temp folder.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use tessera_glue::tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tessera_glue::tokenizers::models::unigram::Unigram;
use tessera_glue::tokenizers::normalizers::replace::{Replace, ReplacePattern};
use tessera_glue::tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tessera_glue::tokenizers::processors::template::TemplateProcessing;
use tessera_glue::tokenizers::{AddedToken, Tokenizer};
use tessera_glue::TextTokenizer;

/// Pieces of the test vocabulary after the three specials (<pad>=0, </s>=1, <unk>=2).
/// Whole words score -2, single characters -10, so a word in the list is one
/// token and anything else is spelled out character by character.
pub const WORDS: &[&str] = &[
    "▁mnli",
    "▁hypothesis",
    ":",
    "▁premise",
    "▁entailment",
    "▁neutral",
    "▁contradiction",
    "▁A",
    "▁man",
    "▁sleeps",
    ".",
    "▁is",
    "▁awake",
];
const CHARS: &str = "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,:?!'\"0123456789-";

/// Id of a vocabulary piece.
pub fn id(piece: &str) -> u32 {
    vocab()
        .iter()
        .position(|(p, _)| p == piece)
        .unwrap_or_else(|| panic!("no piece {piece}")) as u32
}

fn vocab() -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = ["<pad>", "</s>", "<unk>"]
        .iter()
        .map(|s| (s.to_string(), 0.0))
        .collect();
    v.extend(WORDS.iter().map(|w| (w.to_string(), -2.0)));
    for c in CHARS.chars() {
        if !v.iter().any(|(p, _)| *p == c.to_string()) {
            v.push((c.to_string(), -10.0));
        }
    }
    v
}

/// A T5-shaped tokenizer: a regex Replace normalizer (runs of spaces → one, as
/// recent T5 `tokenizer.json` files have), Metaspace pre-tokenizer, Unigram
/// model, `$A </s>` template.
pub fn tiny_tokenizer() -> TextTokenizer {
    let model = Unigram::from(vocab(), Some(2), false).expect("valid unigram vocabulary");
    let mut tk = Tokenizer::new(model);
    let spaces = Replace::new(ReplacePattern::Regex(" {2,}".into()), " ").expect("valid regex");
    tk.with_normalizer(Some(spaces));
    tk.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tk.with_decoder(Some(MetaspaceDecoder::new(
        '▁',
        PrependScheme::Always,
        true,
    )));
    let template = TemplateProcessing::builder()
        .try_single("$A </s>")
        .expect("valid template")
        .special_tokens(vec![("</s>", 1)])
        .build()
        .expect("valid post-processor");
    tk.with_post_processor(Some(template));
    tk.add_special_tokens(&[
        AddedToken::from("<pad>", true),
        AddedToken::from("</s>", true),
        AddedToken::from("<unk>", true),
    ]);
    TextTokenizer::new(tk, PathBuf::from("tiny-test-tokenizer")).expect("has <pad> and </s>")
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create test folder");
    }
    std::fs::write(&path, contents).expect("write test file");
    path
}
