//! Scores: accuracy with per-class counts and a confusion matrix, F1 (MRPC,
//! QQP), Matthews correlation (CoLA), Pearson and Spearman (STS-B), and a
//! [`Summary`] that serialises to JSON.
//!
//! Conventions follow T5's GLUE evaluation: malformed answers count as wrong
//! (in the confusion matrix they get their own "malformed" column, and for
//! F1 they are not the positive class); a malformed STS-B answer scores -1,
//! as T5's `string_to_float` default. Undefined correlations (a constant
//! series) are `None`.

use crate::answer::Answer;
use crate::error::{GlueError, Result};
use crate::task::{Label, TargetKind, Task};
use serde::{Deserialize, Serialize};

/// Counts for one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCounts {
    /// The label word.
    pub label: String,
    /// Examples whose gold label is this class.
    pub gold: usize,
    /// Answers naming this class.
    pub predicted: usize,
    /// Examples of this class answered correctly.
    pub correct: usize,
}

/// Classification results of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// Per-class counts, in label-id order.
    pub per_class: Vec<ClassCounts>,
    /// `confusion[gold][predicted]`; the last column counts malformed answers.
    pub confusion: Vec<Vec<usize>>,
}

/// The scores of one evaluation; metrics a task does not use are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Task name.
    pub task: String,
    /// Labelled examples scored.
    pub examples: usize,
    /// Answers that were none of the task's answers.
    pub malformed: usize,
    /// Examples without a gold label (not scored).
    pub unlabeled: usize,
    /// Fraction of exact answers (classification and custom tasks).
    pub accuracy: Option<f64>,
    /// F1 of class 1 (MRPC, QQP).
    pub f1: Option<f64>,
    /// Matthews correlation (CoLA).
    pub matthews: Option<f64>,
    /// Pearson correlation (STS-B).
    pub pearson: Option<f64>,
    /// Spearman rank correlation (STS-B).
    pub spearman: Option<f64>,
    /// Per-class counts and confusion matrix (classification tasks).
    pub classes: Option<Classification>,
}

/// Scores `answers` against the gold `labels` (one each, same order).
pub fn evaluate(task: Task, labels: &[Label], answers: &[Answer]) -> Result<Summary> {
    if labels.len() != answers.len() {
        return Err(GlueError::Invalid(format!(
            "{} answers for {} examples",
            answers.len(),
            labels.len()
        )));
    }
    let scored: Vec<(&Label, &Answer)> = labels
        .iter()
        .zip(answers)
        .filter(|(l, _)| **l != Label::Missing)
        .collect();
    let mut summary = Summary {
        task: task.name().to_string(),
        examples: scored.len(),
        malformed: scored
            .iter()
            .filter(|(_, a)| **a == Answer::Malformed)
            .count(),
        unlabeled: labels.len() - scored.len(),
        accuracy: None,
        f1: None,
        matthews: None,
        pearson: None,
        spearman: None,
        classes: None,
    };
    match task.target_kind() {
        TargetKind::Classes(names) => score_classes(task, names, &scored, &mut summary),
        TargetKind::Score => score_similarity(&scored, &mut summary),
        TargetKind::Text => {
            let hits = scored
                .iter()
                .filter(|(l, a)| matches!((l, a), (Label::Text(g), Answer::Text(p)) if g == p))
                .count();
            summary.accuracy = ratio(hits, scored.len());
        }
    }
    Ok(summary)
}

fn score_classes(task: Task, names: &[&str], scored: &[(&Label, &Answer)], summary: &mut Summary) {
    let pairs: Vec<(usize, Option<usize>)> = scored
        .iter()
        .filter_map(|(l, a)| match (l, a) {
            (Label::Class(g), Answer::Class(p)) => Some((*g, Some(*p))),
            (Label::Class(g), _) => Some((*g, None)),
            _ => None,
        })
        .collect();
    let confusion = confusion_matrix(names.len(), &pairs);
    summary.accuracy = ratio(
        pairs.iter().filter(|(g, p)| Some(*g) == *p).count(),
        pairs.len(),
    );
    summary.matthews = (task.name() == "cola").then(|| matthews(&confusion));
    if matches!(task.name(), "mrpc" | "qqp") {
        summary.f1 = Some(f1(&pairs, 1));
    }
    let per_class = names
        .iter()
        .enumerate()
        .map(|(k, name)| ClassCounts {
            label: name.to_string(),
            gold: confusion[k].iter().sum(),
            predicted: confusion.iter().map(|row| row[k]).sum(),
            correct: confusion[k][k],
        })
        .collect();
    summary.classes = Some(Classification {
        per_class,
        confusion,
    });
}

fn score_similarity(scored: &[(&Label, &Answer)], summary: &mut Summary) {
    let (gold, predicted): (Vec<f64>, Vec<f64>) = scored
        .iter()
        .filter_map(|(l, a)| match (l, a) {
            (Label::Score(g), Answer::Score(p)) => Some((*g, *p)),
            (Label::Score(g), _) => Some((*g, -1.0)),
            _ => None,
        })
        .unzip();
    summary.pearson = pearson(&gold, &predicted);
    summary.spearman = spearman(&gold, &predicted);
}

fn ratio(hits: usize, total: usize) -> Option<f64> {
    (total > 0).then(|| hits as f64 / total as f64)
}

/// `confusion[gold][predicted]` for `classes` classes plus a last "malformed" column (`None`).
pub fn confusion_matrix(classes: usize, pairs: &[(usize, Option<usize>)]) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; classes + 1]; classes];
    for &(gold, predicted) in pairs {
        if gold < classes {
            m[gold][predicted.filter(|&p| p < classes).unwrap_or(classes)] += 1;
        }
    }
    m
}

/// F1 of class `positive`: harmonic mean of precision and recall (0 when undefined).
pub fn f1(pairs: &[(usize, Option<usize>)], positive: usize) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for &(gold, predicted) in pairs {
        let said_positive = predicted == Some(positive);
        match (gold == positive, said_positive) {
            (true, true) => tp += 1,
            (false, true) => fp += 1,
            (true, false) => fn_ += 1,
            (false, false) => {}
        }
    }
    if tp == 0 {
        return 0.0;
    }
    2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
}

/// Matthews correlation of a confusion matrix (Gorodkin's multi-class form;
/// the usual binary MCC for two classes; 0 when undefined, as scikit-learn).
/// A malformed column is treated as one more predicted class.
pub fn matthews(confusion: &[Vec<usize>]) -> f64 {
    let k = confusion.first().map_or(0, Vec::len);
    let total: f64 = confusion.iter().flatten().sum::<usize>() as f64;
    let correct: f64 = (0..confusion.len()).map(|i| confusion[i][i]).sum::<usize>() as f64;
    let truth: Vec<f64> = (0..k)
        .map(|i| confusion.get(i).map_or(0, |row| row.iter().sum::<usize>()) as f64)
        .collect();
    let predicted: Vec<f64> = (0..k)
        .map(|j| confusion.iter().map(|row| row[j]).sum::<usize>() as f64)
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let numerator = correct * total - dot(&predicted, &truth);
    let denominator = ((total * total - dot(&predicted, &predicted))
        * (total * total - dot(&truth, &truth)))
    .sqrt();
    if denominator == 0.0 {
        0.0
    } else {
        numerator / denominator
    }
}

/// Pearson correlation; `None` for fewer than two points or a constant series.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    let denominator = (sxx * syy).sqrt();
    (denominator > 0.0).then(|| sxy / denominator)
}

/// Spearman rank correlation (Pearson of ranks, ties get their average rank).
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    pearson(&ranks(x), &ranks(y))
}

/// One-based ranks with ties averaged.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let average = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = average;
        }
        start = end;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn mnli_accuracy_counts_and_confusion() {
        let labels: Vec<Label> = [0, 1, 2, 0, 1, 2].map(Label::Class).to_vec();
        let answers = vec![
            Answer::Class(0),
            Answer::Class(1),
            Answer::Class(1),
            Answer::Class(0),
            Answer::Malformed,
            Answer::Class(2),
        ];
        let s = evaluate(Task::mnli(), &labels, &answers).unwrap();
        assert_eq!((s.examples, s.malformed, s.unlabeled), (6, 1, 0));
        assert!(close(s.accuracy.unwrap(), 4.0 / 6.0));
        let classes = s.classes.unwrap();
        assert_eq!(
            classes.confusion,
            vec![vec![2, 0, 0, 0], vec![0, 1, 0, 1], vec![0, 1, 1, 0]]
        );
        let neutral = &classes.per_class[1];
        assert_eq!(
            (
                neutral.label.as_str(),
                neutral.gold,
                neutral.predicted,
                neutral.correct
            ),
            ("neutral", 2, 2, 1)
        );
        assert_eq!(s.f1, None);
        assert_eq!(s.matthews, None);
    }

    #[test]
    fn f1_and_matthews_by_hand() {
        // gold 1 1 0 0 1, predicted 1 0 1 0 1: tp 2, fp 1, fn 1, tn 1.
        let labels: Vec<Label> = [1, 1, 0, 0, 1].map(Label::Class).to_vec();
        let answers: Vec<Answer> = [1, 0, 1, 0, 1].map(Answer::Class).to_vec();
        let mrpc = evaluate("mrpc".parse().unwrap(), &labels, &answers).unwrap();
        assert!(close(mrpc.f1.unwrap(), 2.0 / 3.0));
        let cola = evaluate("cola".parse().unwrap(), &labels, &answers).unwrap();
        // (tp·tn − fp·fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2−1)/sqrt(3·3·2·2) = 1/6
        assert!(close(cola.matthews.unwrap(), 1.0 / 6.0));
        assert!(close(matthews(&[vec![3, 0], vec![0, 2]]), 1.0));
        assert!(close(matthews(&[vec![0, 3], vec![2, 0]]), -1.0));
        assert_eq!(matthews(&[vec![5, 0], vec![0, 0]]), 0.0);
    }

    #[test]
    fn correlations_by_hand() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 4.0, 5.0, 4.0, 5.0];
        // Σdxdy = 6, Σdx² = 10, Σdy² = 6.
        assert!(close(pearson(&x, &y).unwrap(), 6.0 / 60f64.sqrt()));
        // ranks of y with ties averaged: 1, 2.5, 4.5, 2.5, 4.5 → 7 / sqrt(10·9).
        assert_eq!(ranks(&y), vec![1.0, 2.5, 4.5, 2.5, 4.5]);
        assert!(close(spearman(&x, &y).unwrap(), 7.0 / 90f64.sqrt()));
        assert_eq!(pearson(&x, &[1.0; 5]), None);
        let labels: Vec<Label> = x.iter().map(|&v| Label::Score(v)).collect();
        let answers: Vec<Answer> = y.iter().map(|&v| Answer::Score(v)).collect();
        let s = evaluate("stsb".parse().unwrap(), &labels, &answers).unwrap();
        assert!(close(s.pearson.unwrap(), 6.0 / 60f64.sqrt()));
        assert_eq!(s.accuracy, None);
    }

    #[test]
    fn summary_serialises_and_skips_unlabeled() {
        let labels = vec![Label::Class(0), Label::Missing];
        let answers = vec![Answer::Class(0), Answer::Class(1)];
        let s = evaluate(Task::mnli(), &labels, &answers).unwrap();
        assert_eq!((s.examples, s.unlabeled), (1, 1));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["accuracy"], 1.0);
        assert_eq!(json["task"], "mnli");
        let back: Summary = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        assert!(evaluate(Task::mnli(), &labels, &answers[..1]).is_err());
    }

    #[test]
    fn custom_task_is_exact_match() {
        let labels = vec![Label::Text("a b".into()), Label::Text("c".into())];
        let answers = vec![Answer::Text("a b".into()), Answer::Text("d".into())];
        let s = evaluate("custom".parse().unwrap(), &labels, &answers).unwrap();
        assert!(close(s.accuracy.unwrap(), 0.5));
    }
}
