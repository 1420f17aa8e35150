//! Reading generated text back into a task's answer (Graphcore's MNLI
//! postprocessing, generalised): strip `</s>` (and `<pad>`), trim, map the
//! label word to its id; anything else is malformed and counted.

use crate::task::{TargetKind, Task};
use serde::{Deserialize, Serialize};

/// A model's answer to one example, read from its generated text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// A label word of the task, as its class id.
    Class(usize),
    /// A number (STS-B).
    Score(f64),
    /// Free text (custom task).
    Text(String),
    /// Text that is none of the task's answers.
    Malformed,
}

impl Answer {
    /// The class id, or -1 for anything that is not a class (the `predictions` list of eval JSON).
    pub fn class_id(&self) -> i64 {
        match self {
            Answer::Class(id) => *id as i64,
            _ => -1,
        }
    }
}

/// Generated text without special tokens and surrounding white space.
pub fn clean(generated: &str) -> String {
    generated
        .replace("</s>", "")
        .replace("<pad>", "")
        .trim()
        .to_string()
}

/// Reads the generated text of one example as an answer of `task`.
pub fn parse_answer(task: Task, generated: &str) -> Answer {
    let text = clean(generated);
    match task.target_kind() {
        TargetKind::Classes(names) => names
            .iter()
            .position(|n| *n == text)
            .map_or(Answer::Malformed, Answer::Class),
        TargetKind::Score => text
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .map_or(Answer::Malformed, Answer::Score),
        TargetKind::Text => Answer::Text(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnli_answers_are_read_like_graphcore() {
        let mnli = Task::mnli();
        assert_eq!(parse_answer(mnli, "entailment</s>"), Answer::Class(0));
        assert_eq!(
            parse_answer(mnli, "<pad> neutral</s><pad>"),
            Answer::Class(1)
        );
        assert_eq!(parse_answer(mnli, "  contradiction "), Answer::Class(2));
        assert_eq!(parse_answer(mnli, "contradict"), Answer::Malformed);
        assert_eq!(parse_answer(mnli, "Entailment"), Answer::Malformed);
        assert_eq!(parse_answer(mnli, ""), Answer::Malformed);
        assert_eq!(Answer::Malformed.class_id(), -1);
        assert_eq!(Answer::Class(2).class_id(), 2);
    }

    #[test]
    fn scores_and_text_are_read() {
        let stsb: Task = "stsb".parse().unwrap();
        assert_eq!(parse_answer(stsb, "3.8</s>"), Answer::Score(3.8));
        assert_eq!(parse_answer(stsb, "high"), Answer::Malformed);
        let custom: Task = "custom".parse().unwrap();
        assert_eq!(
            parse_answer(custom, " hola </s>"),
            Answer::Text("hola".into())
        );
    }
}
