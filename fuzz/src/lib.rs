//! What the fuzz targets share: a scratch folder per process, since the
//! parsers under test read files (memory-mapped, as users' files are).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's scratch folder (under the system temp folder).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tessera-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the scratch folder can be created");
        dir
    })
}

/// Writes `bytes` as the file `name` in the scratch folder and returns its path.
pub fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, bytes).expect("the scratch file can be written");
    path
}
