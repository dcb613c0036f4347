//! Shared by the fuzz targets.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The repository root. The targets are built by cargo-fuzz in `fuzz/`, or as
/// examples of the main package (the short run in CI, `scripts/fuzz.sh
/// --smoke`), so the manifest dir is either.
pub fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        if manifest.join("fuzz_targets").is_dir() {
            manifest.join("..")
        } else {
            manifest.to_path_buf()
        }
    })
}
