//! The output folder of a run: one run's checkpoints and metrics, written
//! by one process at a time.
//!
//! A run claims its folder before it writes anything: it takes an exclusive
//! lock on `OUTPUT/.tessera.lock` (released by the OS when the process
//! ends, however it ends), so a second run into the same folder is refused
//! instead of interleaving checkpoints. Holding the lock also proves that
//! any staging folder left beside the checkpoints belongs to a writer that
//! died, so those are removed. Then the folder's contents are checked
//! against the run's identity: checkpoints and a `metrics.jsonl` of another
//! run are never mixed with this one's nor pruned by it; the run refuses,
//! naming the two ways on (`--resume latest`, `--overwrite-output`).

use crate::checkpoint::{self, read_manifest, read_state, step_dir};
use crate::metrics::METRICS_FILE;
use crate::{Result, TrainError};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use tessera_t5::folder;

/// The lock file inside the output folder.
pub const LOCK_FILE: &str = ".tessera.lock";
/// The checkpoints' folder inside the output folder.
pub const CHECKPOINTS: &str = "checkpoints";
/// The Hugging Face export inside the output folder.
pub const EXPORT: &str = "hf";

/// An output folder claimed by a run (see the module docs).
#[derive(Debug)]
pub struct RunFolder {
    root: PathBuf,
    /// Held for the life of the run; the OS releases it on exit.
    _lock: File,
    notes: Vec<String>,
}

impl RunFolder {
    /// Claims `root` for run `run`: locks it, removes stale staging
    /// folders, and refuses if it holds another run's checkpoints or
    /// metrics — unless `overwrite`, which deletes them (said in
    /// [`RunFolder::notes`]).
    pub fn claim(root: &Path, run: &str, overwrite: bool) -> Result<Self> {
        fs::create_dir_all(root).map_err(|e| TrainError::io("cannot create", root, e))?;
        let lock = lock(root)?;
        let mut notes = Vec::new();
        for dir in [root.to_path_buf(), root.join(CHECKPOINTS)] {
            for stale in folder::remove_stale(&dir)? {
                notes.push(format!(
                    "removed {}, left by an interrupted save",
                    stale.display()
                ));
            }
        }
        let foreign = other_runs(root, run)?;
        if !foreign.is_empty() {
            if !overwrite {
                return Err(refusal(root, &foreign));
            }
            for path in foreign.iter().chain([&root.join(EXPORT)]) {
                remove(path)?;
            }
            folder::sync_dir(root)?;
            notes.push(format!(
                "--overwrite-output: deleted the previous run in {} ({})",
                root.display(),
                describe(&foreign)
            ));
        }
        Ok(RunFolder {
            root: root.to_path_buf(),
            _lock: lock,
            notes,
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What claiming did besides locking (stale folders removed, a previous
    /// run deleted), one sentence each, for the user.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

/// Refuses, before anything is loaded, a fresh run into `root` when it
/// holds a run already (the same check [`RunFolder::claim`] makes, without
/// the lock). Nothing to refuse with `overwrite`.
pub fn check_fresh(root: &Path, overwrite: bool) -> Result<()> {
    let foreign = other_runs(root, "")?;
    if foreign.is_empty() || overwrite {
        return Ok(());
    }
    Err(refusal(root, &foreign))
}

fn lock(root: &Path) -> Result<File> {
    let path = root.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| TrainError::io("cannot open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(TrainError::setting(
            "--output",
            format!(
                "another tessera run is writing {} (it holds {}); wait for it to end or choose another --output",
                root.display(),
                path.display()
            ),
        )),
        Err(TryLockError::Error(e)) => Err(TrainError::io("cannot lock", path, e)),
    }
}

/// The checkpoints and metrics file in `root` that belong to a run other
/// than `run` (a checkpoint without a readable identity counts as another
/// run's: it is never pruned or mixed in).
fn other_runs(root: &Path, run: &str) -> Result<Vec<PathBuf>> {
    let checkpoints = root.join(CHECKPOINTS);
    let mut foreign: Vec<PathBuf> = checkpoint::list(&checkpoints)?
        .into_iter()
        .map(|step| step_dir(&checkpoints, step))
        .filter(|dir| owner(dir).as_deref() != Some(run))
        .collect();
    let metrics = root.join(METRICS_FILE);
    if metrics.exists() && metrics_owner(&metrics)?.as_deref() != Some(run) {
        foreign.push(metrics);
    }
    Ok(foreign)
}

/// The run a checkpoint folder belongs to, from its manifest or else its
/// trainer state.
fn owner(dir: &Path) -> Option<String> {
    read_manifest(dir)
        .map(|m| m.run)
        .or_else(|_| read_state(dir).map(|s| s.run))
        .ok()
        .filter(|run| !run.is_empty())
}

/// The run named by the first line of a `metrics.jsonl`.
fn metrics_owner(path: &Path) -> Result<Option<String>> {
    let file = File::open(path).map_err(|e| TrainError::io("cannot read", path, e))?;
    let mut first = String::new();
    BufReader::new(file)
        .read_line(&mut first)
        .map_err(|e| TrainError::io("cannot read", path, e))?;
    let value: Option<serde_json::Value> = serde_json::from_str(&first).ok();
    Ok(value.and_then(|v| v["run"].as_str().map(str::to_owned)))
}

fn refusal(root: &Path, foreign: &[PathBuf]) -> TrainError {
    TrainError::setting(
        "--output",
        format!(
            "{} already holds another run ({}); continue it with --resume latest, or delete it and start over with --overwrite-output",
            root.display(),
            describe(foreign)
        ),
    )
}

/// `checkpoints step-500, step-2000 and metrics.jsonl`.
fn describe(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .collect();
    names.join(", ")
}

fn remove(path: &Path) -> Result<()> {
    let removed = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(TrainError::io("cannot remove", path, e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_of_a_locked_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunFolder::claim(dir.path(), "a", false).unwrap();
        let e = RunFolder::claim(dir.path(), "a", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("another tessera run") && e.contains(LOCK_FILE),
            "{e}"
        );
        drop(first);
        RunFolder::claim(dir.path(), "a", false).unwrap();
    }

    #[test]
    fn another_runs_metrics_are_refused_or_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join(METRICS_FILE);
        fs::write(&metrics, "{\"run\":\"old\",\"event\":\"start\"}\n").unwrap();
        RunFolder::claim(dir.path(), "old", false).unwrap();
        let e = RunFolder::claim(dir.path(), "new", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("metrics.jsonl")
                && e.contains("--resume latest")
                && e.contains("--overwrite-output"),
            "{e}"
        );
        assert!(check_fresh(dir.path(), false).is_err());
        let claimed = RunFolder::claim(dir.path(), "new", true).unwrap();
        assert!(!metrics.exists());
        assert!(
            claimed.notes()[0].contains("deleted"),
            "{:?}",
            claimed.notes()
        );
    }
}
