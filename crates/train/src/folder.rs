//! Folders written atomically: built under a temporary name beside their
//! target and renamed into place, so a reader (or a crash) never sees half
//! of one. Checkpoints and exports are written this way.

use crate::error::{Result, TrainError};
use std::fs;
use std::path::{Path, PathBuf};

/// Fills a fresh temporary sibling of `target` with `fill`, then moves it to
/// `target`. An existing `target` is moved aside first and deleted only
/// after the new folder is in place; on failure the temporary folder is
/// removed and `target` is left as it was.
pub(crate) fn build(target: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let staging = sibling(target, "build")?;
    fs::create_dir_all(&staging).map_err(|e| TrainError::io("cannot create", &staging, e))?;
    let built = fill(&staging).and_then(|()| swap(&staging, target));
    if built.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    built
}

/// A temporary folder name beside `path`, `.{name}.{what}-{pid}`, with any
/// leftover of an earlier crashed run removed.
fn sibling(path: &Path, what: &str) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        TrainError::setting("--output", format!("{} has no folder name", path.display()))
    })?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = parent.join(format!(
        ".{}.{what}-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| TrainError::io("cannot remove", &tmp, e))?;
    }
    Ok(tmp)
}

/// Moves the finished `staging` folder to `target`, replacing an existing one.
fn swap(staging: &Path, target: &Path) -> Result<()> {
    if !target.exists() {
        return fs::rename(staging, target).map_err(|e| TrainError::io("cannot write", target, e));
    }
    let old = sibling(target, "old")?;
    fs::rename(target, &old).map_err(|e| TrainError::io("cannot replace", target, e))?;
    if let Err(e) = fs::rename(staging, target) {
        let _ = fs::rename(&old, target);
        return Err(TrainError::io("cannot write", target, e));
    }
    fs::remove_dir_all(&old).map_err(|e| TrainError::io("cannot remove", &old, e))
}
