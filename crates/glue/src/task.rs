//! The GLUE tasks and a custom text-to-text task: their columns, label words and
//! T5's text-to-text preprocessing (prompt strings and target strings).
//!
//! Prompts follow T5's `glue` preprocessor: the benchmark name, then each
//! feature as `key: value` in sorted key order, joined by spaces. MNLI is
//! therefore `mnli hypothesis: {hypothesis} premise: {premise}`, the prompt the
//! seed job uses; the `ax` diagnostic is cast as MNLI, as T5 does.

use crate::error::{GlueError, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The gold answer of one example, as read from a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Label {
    /// A class id (index into the task's label words).
    Class(usize),
    /// A similarity score (STS-B, 0–5).
    Score(f64),
    /// Free target text (custom task).
    Text(String),
    /// No gold label (test splits, or `-` in a GLUE TSV).
    Missing,
}

/// One example: the task's text fields in the task's field order, and its label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Where it came from: one-based line (TSV, JSONL) or zero-based row (Parquet, synthetic).
    pub line: usize,
    /// The dataset's own example id, when the file has one.
    pub idx: Option<i64>,
    /// The text fields, in the order of [`Task::field_names`].
    pub texts: Vec<String>,
    /// The gold label.
    pub label: Label,
}

/// What kind of target a task has, which decides its metrics and postprocessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Classification into the given label words.
    Classes(&'static [&'static str]),
    /// A real-valued score written as text with one decimal (STS-B).
    Score,
    /// Free text compared by exact match (custom task).
    Text,
}

/// A text field of a task: its name in prompts and HF exports, and the GLUE TSV headers that hold it.
#[derive(Debug, Clone, Copy)]
struct Field {
    key: &'static str,
    tsv: &'static [&'static str],
}

/// The fixed description of one task.
#[derive(Debug)]
struct Spec {
    name: &'static str,
    /// Prompt prefix (T5's benchmark name); `None` for the custom task, whose input is the prompt.
    prefix: Option<&'static str>,
    fields: &'static [Field],
    target: TargetKind,
    /// Label column in HF exports (JSONL, Parquet).
    hf_label: &'static str,
    /// Label column candidates in GLUE TSV headers.
    tsv_label: &'static [&'static str],
    /// GLUE's folder name for the task (e.g. `MNLI`, `SST-2`).
    glue_dir: &'static str,
}

const fn field(key: &'static str, tsv: &'static [&'static str]) -> Field {
    Field { key, tsv }
}

const NLI3: &[&str] = &["entailment", "neutral", "contradiction"];
const NLI2: &[&str] = &["entailment", "not_entailment"];
const PAIR12: &[Field] = &[
    field("sentence1", &["sentence1", "#1 String"]),
    field("sentence2", &["sentence2", "#2 String"]),
];
const MNLI_FIELDS: &[Field] = &[
    field("hypothesis", &["sentence2", "hypothesis"]),
    field("premise", &["sentence1", "premise"]),
];
const SENTENCE: &[Field] = &[field("sentence", &["sentence"])];

const SPECS: &[Spec] = &[
    Spec {
        name: "cola",
        prefix: Some("cola"),
        fields: SENTENCE,
        target: TargetKind::Classes(&["unacceptable", "acceptable"]),
        hf_label: "label",
        tsv_label: &["label"],
        glue_dir: "CoLA",
    },
    Spec {
        name: "sst2",
        prefix: Some("sst2"),
        fields: SENTENCE,
        target: TargetKind::Classes(&["negative", "positive"]),
        hf_label: "label",
        tsv_label: &["label"],
        glue_dir: "SST-2",
    },
    Spec {
        name: "mrpc",
        prefix: Some("mrpc"),
        fields: PAIR12,
        target: TargetKind::Classes(&["not_equivalent", "equivalent"]),
        hf_label: "label",
        tsv_label: &["Quality", "label"],
        glue_dir: "MRPC",
    },
    Spec {
        name: "qqp",
        prefix: Some("qqp"),
        fields: &[
            field("question1", &["question1"]),
            field("question2", &["question2"]),
        ],
        target: TargetKind::Classes(&["not_duplicate", "duplicate"]),
        hf_label: "label",
        tsv_label: &["is_duplicate", "label"],
        glue_dir: "QQP",
    },
    Spec {
        name: "stsb",
        prefix: Some("stsb"),
        fields: PAIR12,
        target: TargetKind::Score,
        hf_label: "label",
        tsv_label: &["score", "label"],
        glue_dir: "STS-B",
    },
    Spec {
        name: "mnli",
        prefix: Some("mnli"),
        fields: MNLI_FIELDS,
        target: TargetKind::Classes(NLI3),
        hf_label: "label",
        tsv_label: &["gold_label", "label"],
        glue_dir: "MNLI",
    },
    Spec {
        name: "qnli",
        prefix: Some("qnli"),
        fields: &[
            field("question", &["question"]),
            field("sentence", &["sentence"]),
        ],
        target: TargetKind::Classes(NLI2),
        hf_label: "label",
        tsv_label: &["label"],
        glue_dir: "QNLI",
    },
    Spec {
        name: "rte",
        prefix: Some("rte"),
        fields: PAIR12,
        target: TargetKind::Classes(NLI2),
        hf_label: "label",
        tsv_label: &["label"],
        glue_dir: "RTE",
    },
    Spec {
        name: "wnli",
        prefix: Some("wnli"),
        fields: PAIR12,
        target: TargetKind::Classes(&["not_entailment", "entailment"]),
        hf_label: "label",
        tsv_label: &["label"],
        glue_dir: "WNLI",
    },
    Spec {
        name: "ax",
        prefix: Some("mnli"),
        fields: MNLI_FIELDS,
        target: TargetKind::Classes(NLI3),
        hf_label: "label",
        tsv_label: &["label", "gold_label"],
        glue_dir: "diagnostic",
    },
    Spec {
        name: "custom",
        prefix: None,
        fields: &[field("input", &["input"])],
        target: TargetKind::Text,
        hf_label: "target",
        tsv_label: &["target"],
        glue_dir: "custom",
    },
];

/// A task: which columns to read, how to build the prompt and the target, and how to read answers.
///
/// `Task` is a cheap copyable handle; parse one from its name with [`str::parse`]
/// (`cola`, `sst2`, `mrpc`, `qqp`, `stsb`, `mnli`, `qnli`, `rte`, `wnli`, `ax`, `custom`).
#[derive(Clone, Copy)]
pub struct Task {
    spec: &'static Spec,
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Task({})", self.spec.name)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.spec.name)
    }
}

impl PartialEq for Task {
    fn eq(&self, other: &Self) -> bool {
        self.spec.name == other.spec.name
    }
}

impl Eq for Task {}

impl FromStr for Task {
    type Err = GlueError;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "");
        SPECS
            .iter()
            .find(|spec| spec.name == wanted)
            .map(|spec| Task { spec })
            .ok_or_else(|| {
                GlueError::Invalid(format!(
                    "unknown task '{s}'; expected one of {}",
                    Task::names().join(", ")
                ))
            })
    }
}

impl Serialize for Task {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.spec.name)
    }
}

impl<'de> Deserialize<'de> for Task {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl Task {
    /// The seed job's task, MNLI.
    pub fn mnli() -> Task {
        Task { spec: &SPECS[5] }
    }

    /// Names of all tasks, in GLUE order, then `custom`.
    pub fn names() -> Vec<&'static str> {
        SPECS.iter().map(|s| s.name).collect()
    }

    /// The task's name (`mnli`, `cola`, …).
    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    /// The kind of target, which decides postprocessing and metrics.
    pub fn target_kind(&self) -> TargetKind {
        self.spec.target
    }

    /// The label words of a classification task (empty otherwise).
    pub fn label_names(&self) -> &'static [&'static str] {
        match self.spec.target {
            TargetKind::Classes(names) => names,
            _ => &[],
        }
    }

    /// Names of the text fields, in the order of [`Example::texts`] (the HF column names).
    pub fn field_names(&self) -> Vec<&'static str> {
        self.spec.fields.iter().map(|f| f.key).collect()
    }

    /// GLUE TSV header names accepted for text field `i`.
    pub(crate) fn tsv_columns(&self, i: usize) -> &'static [&'static str] {
        self.spec.fields[i].tsv
    }

    /// The label column in HF exports (`label`, or `target` for the custom task).
    pub fn hf_label_column(&self) -> &'static str {
        self.spec.hf_label
    }

    /// GLUE TSV header names accepted for the label column.
    pub(crate) fn tsv_label_columns(&self) -> &'static [&'static str] {
        self.spec.tsv_label
    }

    /// GLUE's folder name for the task in the GLUE download (`MNLI`, `SST-2`, …).
    pub fn glue_dir(&self) -> &'static str {
        self.spec.glue_dir
    }

    /// The encoder text of an example (T5's prompt).
    pub fn source_text(&self, example: &Example) -> String {
        let Some(prefix) = self.spec.prefix else {
            return example.texts.first().cloned().unwrap_or_default();
        };
        let mut text = prefix.to_string();
        for (field, value) in self.spec.fields.iter().zip(&example.texts) {
            text.push(' ');
            text.push_str(field.key);
            text.push_str(": ");
            text.push_str(value);
        }
        text
    }

    /// The target text of a label (`None` for a missing label).
    ///
    /// Scores are rounded to the nearest 0.2 (ties to even, as `tf.round`) and
    /// written with one decimal, as T5's `stsb` preprocessor does.
    pub fn target_text(&self, label: &Label) -> Option<String> {
        match label {
            Label::Class(id) => self.label_names().get(*id).map(|s| s.to_string()),
            Label::Score(score) => Some(format!("{:.1}", (score * 5.0).round_ties_even() / 5.0)),
            Label::Text(text) => Some(text.clone()),
            Label::Missing => None,
        }
    }

    /// Reads a label written as text (a GLUE TSV cell): a label word, a class id,
    /// a score, or `-`/empty for "no gold label".
    pub fn parse_label_text(&self, cell: &str) -> std::result::Result<Label, String> {
        let cell = cell.trim();
        if cell.is_empty() || cell == "-" {
            return Ok(Label::Missing);
        }
        match self.spec.target {
            TargetKind::Classes(names) => {
                if let Some(id) = names.iter().position(|n| *n == cell) {
                    return Ok(Label::Class(id));
                }
                match cell.parse::<i64>() {
                    Ok(id) => self.class_from_id(id),
                    Err(_) => Err(format!(
                        "unknown label '{cell}' for task {}; expected one of {}",
                        self.name(),
                        names.join(", ")
                    )),
                }
            }
            TargetKind::Score => cell
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite())
                .map(Label::Score)
                .ok_or_else(|| format!("label '{cell}' is not a number")),
            TargetKind::Text => Ok(Label::Text(cell.to_string())),
        }
    }

    /// Reads a label from a JSON value (HF exports): a class id (-1 = no label),
    /// a label word, a score, or target text.
    pub fn parse_label_json(
        &self,
        value: &serde_json::Value,
    ) -> std::result::Result<Label, String> {
        use serde_json::Value;
        match (value, self.spec.target) {
            (Value::Null, _) => Ok(Label::Missing),
            (Value::String(s), TargetKind::Text) => Ok(Label::Text(s.clone())),
            (Value::String(s), _) => self.parse_label_text(s),
            (Value::Number(n), TargetKind::Classes(_)) => match n.as_i64() {
                Some(id) => self.class_from_id(id),
                None => Err(format!("label {n} is not a class id")),
            },
            (Value::Number(n), TargetKind::Score) => match n.as_f64() {
                Some(-1.0) => Ok(Label::Missing),
                Some(s) => Ok(Label::Score(s)),
                None => Err(format!("label {n} is not a number")),
            },
            (other, _) => Err(format!("label {other} has the wrong type")),
        }
    }

    fn class_from_id(&self, id: i64) -> std::result::Result<Label, String> {
        let n = self.label_names().len();
        match usize::try_from(id) {
            Ok(i) if i < n => Ok(Label::Class(i)),
            _ if id == -1 => Ok(Label::Missing),
            _ => Err(format!(
                "label id {id} is out of range for task {} (0..{n}, or -1 for none)",
                self.name()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(texts: &[&str], label: Label) -> Example {
        Example {
            line: 1,
            idx: None,
            texts: texts.iter().map(|s| s.to_string()).collect(),
            label,
        }
    }

    #[test]
    fn mnli_prompt_is_the_seeds() {
        let ex = example(
            &["A man sleeps.", "A man is sleeping in bed."],
            Label::Class(0),
        );
        let task = Task::mnli();
        assert_eq!(
            task.source_text(&ex),
            "mnli hypothesis: A man sleeps. premise: A man is sleeping in bed."
        );
        assert_eq!(task.target_text(&ex.label).as_deref(), Some("entailment"));
        assert_eq!(
            task.target_text(&Label::Class(2)).as_deref(),
            Some("contradiction")
        );
    }

    #[test]
    fn every_glue_prompt_follows_t5() {
        let cases = [
            ("cola", vec!["It rains."], "cola sentence: It rains."),
            ("sst2", vec!["Great film."], "sst2 sentence: Great film."),
            ("mrpc", vec!["a", "b"], "mrpc sentence1: a sentence2: b"),
            (
                "qqp",
                vec!["q1?", "q2?"],
                "qqp question1: q1? question2: q2?",
            ),
            ("stsb", vec!["a", "b"], "stsb sentence1: a sentence2: b"),
            ("qnli", vec!["q?", "s."], "qnli question: q? sentence: s."),
            ("rte", vec!["a", "b"], "rte sentence1: a sentence2: b"),
            ("wnli", vec!["a", "b"], "wnli sentence1: a sentence2: b"),
            ("ax", vec!["h", "p"], "mnli hypothesis: h premise: p"),
            ("custom", vec!["translate: hi"], "translate: hi"),
        ];
        for (name, texts, want) in cases {
            let task: Task = name.parse().unwrap();
            assert_eq!(
                task.source_text(&example(&texts, Label::Missing)),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn label_words_per_task() {
        let t = |n: &str, id| {
            n.parse::<Task>()
                .unwrap()
                .target_text(&Label::Class(id))
                .unwrap()
        };
        assert_eq!(t("cola", 1), "acceptable");
        assert_eq!(t("sst2", 0), "negative");
        assert_eq!(t("mrpc", 1), "equivalent");
        assert_eq!(t("qqp", 0), "not_duplicate");
        assert_eq!(t("qnli", 1), "not_entailment");
        assert_eq!(t("wnli", 1), "entailment");
    }

    #[test]
    fn stsb_target_rounds_to_a_fifth() {
        let task: Task = "stsb".parse().unwrap();
        let t = |s| task.target_text(&Label::Score(s)).unwrap();
        assert_eq!(t(3.75), "3.8");
        assert_eq!(t(5.0), "5.0");
        assert_eq!(t(0.0), "0.0");
        assert_eq!(t(2.1), "2.0"); // 10.5 rounds to even, as tf.round
        assert_eq!(t(2.3), "2.4"); // 11.5 rounds to even
        assert_eq!(t(1.42), "1.4");
    }

    #[test]
    fn labels_parse_from_words_ids_and_blanks() {
        let task = Task::mnli();
        assert_eq!(task.parse_label_text("neutral"), Ok(Label::Class(1)));
        assert_eq!(task.parse_label_text("2"), Ok(Label::Class(2)));
        assert_eq!(task.parse_label_text("-"), Ok(Label::Missing));
        assert_eq!(task.parse_label_text(""), Ok(Label::Missing));
        assert!(task
            .parse_label_text("maybe")
            .unwrap_err()
            .contains("unknown label 'maybe'"));
        assert!(task.parse_label_text("3").is_err());
        assert_eq!(
            task.parse_label_json(&serde_json::json!(-1)),
            Ok(Label::Missing)
        );
        assert_eq!(
            task.parse_label_json(&serde_json::json!(0)),
            Ok(Label::Class(0))
        );
        assert!(task.parse_label_json(&serde_json::json!(1.5)).is_err());
        assert!(task.parse_label_json(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn task_names_parse_and_serialise() {
        assert_eq!("MNLI".parse::<Task>().unwrap(), Task::mnli());
        assert_eq!("sst-2".parse::<Task>().unwrap().name(), "sst2");
        let err = "glue".parse::<Task>().unwrap_err().to_string();
        assert!(err.contains("unknown task 'glue'"), "{err}");
        assert_eq!(serde_json::to_string(&Task::mnli()).unwrap(), "\"mnli\"");
        let back: Task = serde_json::from_str("\"rte\"").unwrap();
        assert_eq!(back.name(), "rte");
    }
}
