//! Turning an encoded dataset into a stream of batches: file order, seeded
//! shuffling, or length bucketing; epochs; and a cursor a checkpoint stores.
//!
//! The order of every epoch is a pure function of `(seed, epoch, dataset)`,
//! so a run resumed from a [`Cursor`] sees exactly the batches an
//! uninterrupted run would have seen.

use crate::error::{GlueError, Result};
use crate::tokenize::EncodedDataset;
use serde::{Deserialize, Serialize};
use tessera_tensor::rng::{derive_seed, SplitMix64};

/// How rows are grouped into batches in each epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Rows in file order, `batch_size` at a time (`--no-shuffle`).
    Sequential,
    /// A fresh seeded permutation every epoch.
    #[default]
    Shuffled,
    /// Seeded shuffle, then rows of similar source length batched together
    /// (sorted within pools of [`BUCKET_POOL_BATCHES`] batches), batches in
    /// shuffled order: batches of even size in tokens, still random (what a
    /// padded layout needs to waste little; tessera packs rows, so here it
    /// only evens out the work of each pass).
    LengthBucketed,
}

/// Batches per sorting pool of the length-bucketing sampler.
pub const BUCKET_POOL_BATCHES: usize = 50;

/// Batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Rows per batch.
    pub batch_size: usize,
    /// Row order.
    pub order: Order,
    /// Seed of the shuffles.
    pub seed: u64,
    /// Drop an epoch's last, smaller batch (keeps every batch the same size).
    pub drop_last: bool,
}

/// Where the loader stands: the next batch to yield is batch `batch` of epoch `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// Zero-based epoch.
    pub epoch: u64,
    /// Zero-based batch within the epoch.
    pub batch: usize,
}

/// An endless stream of batches over an encoded dataset, epoch after epoch.
#[derive(Debug)]
pub struct Loader {
    data: EncodedDataset,
    config: LoaderConfig,
    cursor: Cursor,
    /// The batches (row indices) of `cursor.epoch`.
    plan: Vec<Vec<usize>>,
}

impl Loader {
    /// A loader at the start of epoch 0.
    pub fn new(data: EncodedDataset, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(GlueError::Invalid(
                "the batch size must be at least 1".to_string(),
            ));
        }
        if data.is_empty() || (config.drop_last && data.len() < config.batch_size) {
            return Err(GlueError::Invalid(format!(
                "the dataset has {} rows, too few for one batch of {}",
                data.len(),
                config.batch_size
            )));
        }
        let plan = epoch_plan(&data, &config, 0);
        Ok(Loader {
            data,
            config,
            cursor: Cursor::default(),
            plan,
        })
    }

    /// Moves to `cursor` (e.g. restored from a checkpoint).
    pub fn seek(&mut self, cursor: Cursor) -> Result<()> {
        if cursor.batch > self.plan.len() {
            return Err(GlueError::Invalid(format!(
                "the data cursor points at batch {} but an epoch has only {} batches \
                 (different data or batch size than the checkpoint's?)",
                cursor.batch,
                self.plan.len()
            )));
        }
        self.plan = epoch_plan(&self.data, &self.config, cursor.epoch);
        self.cursor = cursor;
        Ok(())
    }

    /// The position of the next batch, to store in a checkpoint.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// The dataset being served.
    pub fn data(&self) -> &EncodedDataset {
        &self.data
    }

    /// The settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Batches in every epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan.len()
    }

    /// The rows of the next batch (indices into [`Loader::data`]); after an
    /// epoch's last batch the next epoch starts.
    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.cursor.batch >= self.plan.len() {
            self.cursor = Cursor {
                epoch: self.cursor.epoch + 1,
                batch: 0,
            };
            self.plan = epoch_plan(&self.data, &self.config, self.cursor.epoch);
        }
        let rows = self.plan[self.cursor.batch].clone();
        self.cursor.batch += 1;
        rows
    }
}

/// The batches (row indices) of one epoch.
pub fn epoch_plan(data: &EncodedDataset, config: &LoaderConfig, epoch: u64) -> Vec<Vec<usize>> {
    let mut rows: Vec<usize> = (0..data.len()).collect();
    let mut rng = SplitMix64::new(derive_seed(config.seed, epoch));
    match config.order {
        Order::Sequential => {}
        Order::Shuffled => rng.shuffle(&mut rows),
        Order::LengthBucketed => {
            rng.shuffle(&mut rows);
            let pool = config.batch_size * BUCKET_POOL_BATCHES;
            for chunk in rows.chunks_mut(pool) {
                chunk.sort_by_key(|&r| (data.examples[r].input_ids.len(), r));
            }
        }
    }
    let mut batches: Vec<Vec<usize>> = rows
        .chunks(config.batch_size)
        .filter(|b| !config.drop_last || b.len() == config.batch_size)
        .map(<[usize]>::to_vec)
        .collect();
    if config.order == Order::LengthBucketed {
        rng.shuffle(&mut batches);
    }
    batches
}
