//! Folders written atomically and durably, with every file's size and hash
//! recorded as it is written. Model saves, training checkpoints and exports
//! are all written through [`build`].
//!
//! A folder is filled under a hidden staging name beside its target
//! (`.NAME.staging-PID`), every file is fsynced as it is closed, the staging
//! folder is fsynced, then renamed into place and the parent folder fsynced,
//! so after [`build`] returns the folder survives a power cut, and a crash at
//! any moment leaves either the old folder or the new one, never half of
//! one. An existing target is moved aside (`.NAME.old-PID`) and deleted only
//! once the new folder is in place; if the second rename fails the old one
//! is moved back.
//!
//! Each file is hashed with XXH3-128 (a fast non-cryptographic hash, about
//! the speed of memory) on its way to disk, so a manifest of the folder
//! costs no second read of 100+ GB of weights. [`verify`] reads the files
//! back and names the first that does not match.

use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use twox_hash::XxHash3_128;

/// Staging and set-aside folders are named `.NAME.{STAGING,OLD}-PID`.
const STAGING: &str = "staging";
const OLD: &str = "old";

/// A file system operation on a folder being written failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct FolderError {
    /// What was being done (`write`, `rename`, …).
    pub action: &'static str,
    /// The file or folder.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

impl FolderError {
    fn new(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| FolderError {
            action,
            path,
            source,
        }
    }
}

/// One file of a folder: its name, size and content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The file name inside the folder.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// XXH3-128 of its content, 32 lower-case hex digits.
    pub xxh3: String,
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: XxHash3_128,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Hashes what is written on its way to `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: XxHash3_128::new(),
            bytes: 0,
        }
    }

    /// The bytes written so far and their XXH3-128, as hex.
    pub fn digest(&self) -> (u64, String) {
        (self.bytes, hex(self.hasher.finish_128()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.write(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The writer a [`Staging`] file's body writes to.
pub type FileWriter = HashingWriter<BufWriter<File>>;

/// A folder being filled: every file written through it is fsynced and recorded.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    files: Vec<FileRecord>,
}

impl Staging {
    /// The staging folder's path (for reading back what was written).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The files written so far, in order.
    pub fn files(&self) -> &[FileRecord] {
        &self.files
    }

    /// Writes the file `name` with `body`, then flushes and fsyncs it.
    pub fn write(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut FileWriter) -> io::Result<()>,
    ) -> Result<(), FolderError> {
        let path = self.dir.join(name);
        let record = (|| {
            let mut w = HashingWriter::new(BufWriter::new(File::create(&path)?));
            body(&mut w)?;
            w.flush()?;
            w.inner.get_ref().sync_all()?;
            let (bytes, xxh3) = w.digest();
            Ok(FileRecord {
                name: name.to_string(),
                bytes,
                xxh3,
            })
        })()
        .map_err(FolderError::new("write", &path))?;
        self.files.retain(|f| f.name != name);
        self.files.push(record);
        Ok(())
    }

    /// Writes `bytes` as the file `name`.
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), FolderError> {
        self.write(name, |w| w.write_all(bytes))
    }

    /// Copies the file `from` in as `name`.
    pub fn copy(&mut self, from: &Path, name: &str) -> Result<(), FolderError> {
        let mut source = File::open(from).map_err(FolderError::new("read", from))?;
        self.write(name, |w| io::copy(&mut source, w).map(drop))
    }
}

/// Fills a fresh staging folder beside `target` with `fill`, then moves it
/// to `target` durably (see the module docs) and returns the records of
/// the files written. On failure the staging folder is removed and
/// `target` is left as it was.
pub fn build<E: From<FolderError>>(
    target: &Path,
    fill: impl FnOnce(&mut Staging) -> Result<(), E>,
) -> Result<Vec<FileRecord>, E> {
    let dir = sibling(target, STAGING)?;
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(FolderError::new("remove", &dir))?;
    }
    fs::create_dir_all(&dir).map_err(FolderError::new("create", &dir))?;
    let mut staging = Staging {
        dir,
        files: Vec::new(),
    };
    let built = fill(&mut staging).and_then(|()| {
        sync_dir(&staging.dir)?;
        Ok(swap(&staging.dir, target)?)
    });
    if built.is_err() {
        let _ = fs::remove_dir_all(&staging.dir);
    }
    built.map(|()| staging.files)
}

/// Removes staging and set-aside folders that crashed or killed writers
/// left in `parent` (those of any process: the caller must know no other
/// writer is live there, e.g. by holding the output folder's lock).
/// Returns the folders removed.
pub fn remove_stale(parent: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let entries = match fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FolderError::new("list", parent)(e)),
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_leftover(&name) && entry.path().is_dir() {
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(FolderError::new("remove", &path))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Whether `name` is a staging or set-aside folder name (`.NAME.staging-PID`).
fn is_leftover(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    [STAGING, OLD].iter().any(|kind| {
        rest.rsplit_once(&format!(".{kind}-"))
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Checks that every file of `records` in `dir` has the recorded size and
/// hash; the error names the first that does not.
pub fn verify(dir: &Path, records: &[FileRecord]) -> Result<(), Mismatch> {
    for record in records {
        let path = dir.join(&record.name);
        let found = hash_file(&path).map_err(|e| Mismatch {
            path: path.clone(),
            reason: format!("cannot be read ({e})"),
        })?;
        if found.bytes != record.bytes {
            return Err(Mismatch {
                path,
                reason: format!("has {} bytes, {} were written", found.bytes, record.bytes),
            });
        }
        if found.xxh3 != record.xxh3 {
            return Err(Mismatch {
                path,
                reason: "does not have the content that was written (hash differs)".into(),
            });
        }
    }
    Ok(())
}

/// A file of a folder is not what its manifest recorded.
// A `path` field is the file the message names; other fields say more.
#[allow(missing_docs)]
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} {reason}", path.display())]
pub struct Mismatch {
    pub path: PathBuf,
    /// How it differs.
    pub reason: String,
}

fn hash_file(path: &Path) -> io::Result<FileRecord> {
    let mut hashing = HashingWriter::new(io::sink());
    io::copy(&mut File::open(path)?, &mut hashing)?;
    let (bytes, xxh3) = hashing.digest();
    Ok(FileRecord {
        name: String::new(),
        bytes,
        xxh3,
    })
}

fn hex(hash: u128) -> String {
    format!("{hash:032x}")
}

/// `.{name}.{kind}-{pid}` beside `path`.
fn sibling(path: &Path, kind: &str) -> Result<PathBuf, FolderError> {
    let name = path.file_name().ok_or_else(|| FolderError {
        action: "write",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no folder name"),
    })?;
    let name = format!(".{}.{kind}-{}", name.to_string_lossy(), std::process::id());
    Ok(parent_of(path).join(name))
}

/// The folder `path` is in (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Moves the finished `staging` folder to `target`, replacing an existing
/// one, and makes the renames durable.
fn swap(staging: &Path, target: &Path) -> Result<(), FolderError> {
    let parent = parent_of(target);
    if !target.exists() {
        fs::rename(staging, target).map_err(FolderError::new("rename into place", target))?;
        return sync_dir(parent);
    }
    let old = sibling(target, OLD)?;
    fs::rename(target, &old).map_err(FolderError::new("move aside", target))?;
    if let Err(e) = fs::rename(staging, target) {
        let _ = fs::rename(&old, target);
        return Err(FolderError::new("rename into place", target)(e));
    }
    sync_dir(parent)?;
    fs::remove_dir_all(&old).map_err(FolderError::new("remove", &old))?;
    sync_dir(parent)
}

/// Writes `bytes` as the file `path` atomically and durably: through a
/// hidden temporary file beside it (`.NAME.tmp-PID`), fsynced, renamed over
/// `path`, and the folder fsynced; a reader never sees half a file and an
/// interrupted write leaves the previous one.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), FolderError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map_or_else(
        || path.to_string_lossy().into_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        FolderError::new("write", path)(e)
    })?;
    sync_dir(dir)
}

/// Fsyncs a folder, so the names in it (renames, new and removed entries)
/// are durable.
pub fn sync_dir(dir: &Path) -> Result<(), FolderError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FolderError::new("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_names_are_recognised() {
        assert!(is_leftover(".step-4.staging-123"));
        assert!(is_leftover(".hf.old-9"));
        assert!(!is_leftover("step-4"));
        assert!(!is_leftover(".step-4.staging-"));
        assert!(!is_leftover(".step-4.staging-12x"));
        assert!(!is_leftover("step-4.staging-12"));
    }

    #[test]
    fn records_match_what_verify_reads_back() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        let files = build::<FolderError>(&target, |s| {
            s.write_bytes("a.txt", b"hello")?;
            s.write("b.bin", |w| w.write_all(&[7u8; 3000]))
        })
        .unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].bytes, 5);
        assert_eq!(files[0].xxh3, hex(XxHash3_128::oneshot(b"hello")));
        verify(&target, &files).unwrap();
        fs::write(target.join("b.bin"), [7u8; 2999]).unwrap();
        let e = verify(&target, &files).unwrap_err().to_string();
        assert!(e.contains("b.bin") && e.contains("2999 bytes"), "{e}");
        fs::write(target.join("b.bin"), [8u8; 3000]).unwrap();
        let e = verify(&target, &files).unwrap_err().to_string();
        assert!(e.contains("b.bin") && e.contains("hash"), "{e}");
    }

    #[test]
    fn a_failed_fill_leaves_the_old_folder_and_no_staging() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        build::<FolderError>(&target, |s| s.write_bytes("v", b"1")).unwrap();
        let failed = build::<FolderError>(&target, |s| {
            s.write_bytes("v", b"2")?;
            Err(FolderError::new("write", Path::new("x"))(io::Error::other(
                "disk full",
            )))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(target.join("v")).unwrap(), b"1");
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out"]);
    }

    #[test]
    fn stale_staging_folders_are_removed() {
        let root = tempfile::tempdir().unwrap();
        for name in [".step-2.staging-1", ".hf.old-77", "step-2", ".keep"] {
            fs::create_dir(root.path().join(name)).unwrap();
        }
        let mut removed = remove_stale(root.path()).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            [
                root.path().join(".hf.old-77"),
                root.path().join(".step-2.staging-1")
            ]
        );
        assert!(root.path().join("step-2").exists() && root.path().join(".keep").exists());
    }
}
