//! Writing `control.json` in the data directory: where a running leaf's
//! control API listens ([`ControlFile`], the client's type). Written
//! atomically once the API's port is bound, removed on a clean stop; the
//! CLI finds a running leaf through it (and checks that it answers, since
//! a crash leaves the file behind).

use std::path::{Path, PathBuf};

pub use crate::client::{CONTROL_FILE, ControlFile};

/// Its path in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(CONTROL_FILE)
}

/// Writes `control.json` for an API at `url`.
pub(crate) fn write(data_dir: &Path, url: &str) -> std::io::Result<()> {
    let file = ControlFile {
        url: url.to_owned(),
        pid: std::process::id(),
    };
    crate::persist::write_json(&path(data_dir), &file)
}

/// Reads `control.json`, if there is a valid one.
pub fn read(data_dir: &Path) -> Option<ControlFile> {
    crate::persist::read_json(&path(data_dir))
}

/// Removes `control.json` (on a clean stop).
pub(crate) fn remove(data_dir: &Path) {
    match std::fs::remove_file(path(data_dir)) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(%error, "cannot remove control.json"),
    }
}
