//! Evaluation by generation, as the seed validates: greedy decoding of a few
//! tokens per example, the text read back into a label
//! ([`tessera_glue::parse_answer`]) and scored ([`tessera_glue::evaluate`]),
//! plus the mean cross-entropy of the gold targets.
//!
//! The loss is the sum of the token losses of every labelled example divided
//! by the number of target tokens of the whole set (not a mean of batch
//! means), so it does not depend on the batch size. Batches are the rows in
//! file order, packed (no padding); the encoder runs once per batch and
//! serves both the teacher-forced loss and the greedy generation
//! ([`tessera_t5::Generator::score_and_generate`]).
//!
//! [`Evaluator`] tokenizes a dataset once, so a trainer can score the same
//! validation set every few steps; [`evaluate`] is the one-shot form.

use crate::error::{Result, TrainError};
use crate::generation::{
    check_options, decode_all, generated as generated_tokens, GenerateOptions,
};
use serde::{Deserialize, Serialize};
use tessera_dist::Comm;
use tessera_glue::{parse_answer, Dataset, EncodedDataset, Label, Lengths, Summary, TextTokenizer};
use tessera_t5::{CrossEntropy, T5Model};

/// Settings of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Tokens generated per example (the seed: 5).
    pub max_new_tokens: usize,
    /// Examples per forward or generation batch.
    pub batch_size: usize,
    /// Source tokens per example at most (longer prompts are cut; the seed: 512).
    pub max_source_length: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            max_new_tokens: 5,
            batch_size: 32,
            max_source_length: tessera_glue::tokenize::DEFAULT_MAX_SOURCE_LENGTH,
        }
    }
}

/// The result of one evaluation; serialises to the JSON of `cargo xtask eval --json`:
/// the [`Summary`] fields (`task`, `examples`, `malformed`, `accuracy`, …)
/// next to `loss` and `predictions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Scores of the generated answers.
    #[serde(flatten)]
    pub summary: Summary,
    /// Mean cross-entropy over all target tokens of the labelled examples
    /// (`None` when no example has a label).
    pub loss: Option<f64>,
    /// Target tokens the loss averages over.
    pub target_tokens: usize,
    /// The predicted class id of each row, in row order; -1 for an answer
    /// that is no class (malformed, or a task without classes).
    pub predictions: Vec<i64>,
    /// The generated text of each row (special tokens removed, trimmed).
    pub generations: Vec<String>,
    /// Tokens generated for each row (with its `</s>`): the decoder
    /// positions generation ran, for counting its FLOPs.
    #[serde(skip)]
    pub generated_tokens: Vec<usize>,
}

impl EvalReport {
    /// The headline number: accuracy, else the task's correlation or F1.
    pub fn headline(&self) -> Option<(&'static str, f64)> {
        let s = &self.summary;
        [
            ("accuracy", s.accuracy),
            ("matthews", s.matthews),
            ("pearson", s.pearson),
            ("f1", s.f1),
        ]
        .into_iter()
        .find_map(|(name, value)| value.map(|v| (name, v)))
    }
}

/// A validation set tokenized once, ready to score any model with the same tokenizer.
#[derive(Debug, Clone)]
pub struct Evaluator {
    data: EncodedDataset,
    labels: Vec<Label>,
    tokenizer: TextTokenizer,
    options: EvalOptions,
}

impl Evaluator {
    /// Tokenizes `dataset` (prompts cut at `options.max_source_length`).
    pub fn new(tokenizer: &TextTokenizer, dataset: &Dataset, options: EvalOptions) -> Result<Self> {
        let lengths = Lengths {
            source: options.max_source_length,
            ..Lengths::default()
        };
        let data = crate::data::encode(tokenizer, dataset, lengths)?;
        Ok(Evaluator {
            data,
            labels: dataset.examples.iter().map(|e| e.label.clone()).collect(),
            tokenizer: tokenizer.clone(),
            options,
        })
    }

    /// The tokenized examples.
    pub fn data(&self) -> &EncodedDataset {
        &self.data
    }

    /// Generates an answer for every example, scores them and computes the loss.
    pub fn run(&self, model: &T5Model) -> Result<EvalReport> {
        self.run_split(model, Comm::SINGLE)
    }

    /// [`Evaluator::run`] with the generation batches shared by the ranks of
    /// `comm`: each rank runs a contiguous run of them, and every rank gets
    /// the whole report, assembled in batch order (the loss summed in that
    /// order too), so it is the one process's report exactly.
    pub fn run_split(&self, model: &T5Model, comm: Comm) -> Result<EvalReport> {
        check_options(GenerateOptions {
            max_new_tokens: self.options.max_new_tokens,
            batch_size: self.options.batch_size,
        })?;
        let all: Vec<usize> = (0..self.data.len()).collect();
        let batches: Vec<&[usize]> = all.chunks(self.options.batch_size).collect();
        let (n, r) = (batches.len(), comm.rank());
        let mine = &batches[n * r / comm.size()..n * (r + 1) / comm.size()];
        let generator = model.generator()?;
        let mut parts = Vec::with_capacity(mine.len());
        for rows in mine {
            let batch = model_batch(&self.data, rows)?;
            // Inside the engine's pool, the many small products of the
            // decoding steps split across the threads with a cheap join
            // instead of a wake-up of the pool from outside each time.
            let (loss, generated) = tessera_tensor::install(|| {
                generator.score_and_generate(&batch, self.options.max_new_tokens)
            })?;
            let ids: Vec<Vec<u32>> = generated
                .iter()
                .map(|row| generated_tokens(model, row))
                .collect();
            parts.push((loss.sum.to_bits(), loss.count, ids));
        }
        let mut ids = Vec::with_capacity(all.len());
        let mut loss = CrossEntropy { sum: 0.0, count: 0 };
        for (sum, count, rows) in gather_parts(comm, &parts)? {
            loss.sum += f64::from_bits(sum);
            loss.count += count;
            ids.extend(rows);
        }
        let generations = decode_all(&self.tokenizer, &ids)?;
        let answers: Vec<_> = generations
            .iter()
            .map(|g| parse_answer(self.data.task, g))
            .collect();
        let summary = tessera_glue::evaluate(self.data.task, &self.labels, &answers)?;
        Ok(EvalReport {
            summary,
            loss: (loss.count > 0).then(|| loss.sum / loss.count as f64),
            target_tokens: loss.count,
            predictions: answers.iter().map(|a| a.class_id()).collect(),
            generations,
            generated_tokens: ids.iter().map(Vec::len).collect(),
        })
    }
}

/// One generation batch's loss sum (as f64 bits: serde_json's default
/// parser may round a decimal float off by one unit in the last place),
/// target-token count and generated ids.
type BatchPart = (u64, usize, Vec<Vec<u32>>);

/// Every rank's batch parts, in rank order.
fn gather_parts(comm: Comm, mine: &[BatchPart]) -> Result<Vec<BatchPart>> {
    if comm.size() == 1 {
        return Ok(mine.to_vec());
    }
    let bytes = serde_json::to_vec(mine).map_err(|e| TrainError::Distributed(e.to_string()))?;
    let mut all = Vec::new();
    for part in comm.all_gather_bytes(&bytes) {
        let parts: Vec<BatchPart> =
            serde_json::from_slice(&part).map_err(|e| TrainError::Distributed(e.to_string()))?;
        all.extend(parts);
    }
    Ok(all)
}

/// Evaluates `model` on `dataset` once (tokenize, generate, score, loss).
pub fn evaluate(
    model: &T5Model,
    tokenizer: &TextTokenizer,
    dataset: &Dataset,
    options: EvalOptions,
) -> Result<EvalReport> {
    Evaluator::new(tokenizer, dataset, options)?.run(model)
}

/// Summed cross-entropy and target-token count over the labelled rows of
/// `data`, in file order, `batch_size` rows per forward pass.
pub fn target_loss(
    model: &T5Model,
    data: &EncodedDataset,
    batch_size: usize,
) -> Result<CrossEntropy> {
    let labelled: Vec<usize> = (0..data.len())
        .filter(|&i| !data.examples[i].labels.is_empty())
        .collect();
    let mut total = CrossEntropy { sum: 0.0, count: 0 };
    for rows in labelled.chunks(batch_size.max(1)) {
        let out = model.forward(&model_batch(data, rows)?)?;
        total.sum += out.loss.sum;
        total.count += out.loss.count;
    }
    Ok(total)
}

/// The model's batch of rows `rows` of `data`: their real tokens, packed,
/// each row keyed by its index in `data` (its dropout masks follow it).
pub fn model_batch(data: &EncodedDataset, rows: &[usize]) -> Result<tessera_t5::Batch> {
    let labels = rows
        .iter()
        .map(|&r| {
            let e = data.examples.get(r).ok_or_else(|| {
                TrainError::setting(
                    "row",
                    format!("row {r} is out of range ({} rows)", data.len()),
                )
            })?;
            Ok(e.labels.iter().map(|&l| i64::from(l)).collect::<Vec<_>>())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(tessera_t5::Batch::new(rows.iter().zip(&labels).map(
        |(&r, l)| {
            (
                r as u64,
                data.examples[r].input_ids.as_slice(),
                l.as_slice(),
            )
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{own_tokenizer, tiny_model};
    use tessera_glue::{ReadOptions, Source, Split, Task};

    fn synthetic(rows: usize) -> Dataset {
        let mut data = Source::parse("nli-synthetic")
            .load(
                Task::mnli(),
                Split::ValidationMismatched,
                ReadOptions::default(),
            )
            .unwrap();
        data.examples.truncate(rows);
        data
    }

    #[test]
    fn a_random_model_gets_a_complete_report() {
        let tokenizer = own_tokenizer();
        let model = tiny_model(tokenizer.vocab_size());
        let data = synthetic(7);
        let options = EvalOptions {
            batch_size: 3,
            ..EvalOptions::default()
        };
        let report = evaluate(&model, &tokenizer, &data, options).unwrap();
        let accuracy = report.summary.accuracy.unwrap();
        assert!((0.0..=1.0).contains(&accuracy));
        assert_eq!(report.predictions.len(), 7);
        assert_eq!(report.summary.examples, 7);
        let malformed = report.predictions.iter().filter(|&&p| p == -1).count();
        assert_eq!(malformed, report.summary.malformed);
        assert!(report.loss.unwrap() > 0.0);
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        for key in ["examples", "accuracy", "loss", "malformed", "predictions"] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        // The batch size changes neither the answers nor the loss.
        let single = evaluate(
            &model,
            &tokenizer,
            &data,
            EvalOptions {
                batch_size: 1,
                ..options
            },
        )
        .unwrap();
        assert_eq!(single.predictions, report.predictions);
        let (a, b) = (single.loss.unwrap(), report.loss.unwrap());
        assert!((a - b).abs() <= 1e-5 * a, "{a} vs {b}");
    }

    #[test]
    fn the_loss_is_a_mean_over_tokens_not_over_batches() {
        let tokenizer = own_tokenizer();
        let model = tiny_model(tokenizer.vocab_size());
        let mut data = Evaluator::new(&tokenizer, &synthetic(2), EvalOptions::default())
            .unwrap()
            .data
            .clone();
        // Rows with 2 and 5 target tokens: batch means would weigh them equally.
        data.examples[0].labels = vec![11, 1];
        data.examples[1].labels = vec![12, 13, 14, 15, 1];
        let per_row: Vec<CrossEntropy> = (0..2)
            .map(|r| {
                model
                    .forward(&model_batch(&data, &[r]).unwrap())
                    .unwrap()
                    .loss
            })
            .collect();
        assert_eq!((per_row[0].count, per_row[1].count), (2, 5));
        let both = target_loss(&model, &data, 1).unwrap();
        assert_eq!(both.count, 7);
        let expected = (per_row[0].sum + per_row[1].sum) / 7.0;
        assert!((both.sum / 7.0 - expected).abs() < 1e-12);
        let mean_of_means = (per_row[0].mean() as f64 + per_row[1].mean() as f64) / 2.0;
        assert!((expected - mean_of_means).abs() > 1e-6);
        let one_batch = target_loss(&model, &data, 2).unwrap();
        assert_eq!(one_batch.count, 7);
        assert!((one_batch.sum - both.sum).abs() < 1e-4 * both.sum);
    }

    #[test]
    fn unlabelled_rows_are_predicted_but_not_scored() {
        let tokenizer = own_tokenizer();
        let model = tiny_model(tokenizer.vocab_size());
        let mut data = synthetic(3);
        data.examples[1].label = Label::Missing;
        let report = evaluate(&model, &tokenizer, &data, EvalOptions::default()).unwrap();
        assert_eq!(report.predictions.len(), 3);
        assert_eq!(report.summary.examples, 2);
        assert_eq!(report.summary.unlabeled, 1);
        data.examples
            .iter_mut()
            .for_each(|e| e.label = Label::Missing);
        let report = evaluate(&model, &tokenizer, &data, EvalOptions::default()).unwrap();
        assert_eq!((report.loss, report.target_tokens), (None, 0));
    }
}
