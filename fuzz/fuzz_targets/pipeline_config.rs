//! Any text as a pipeline file: never a panic; a rejection says what is wrong.
#![no_main]

use std::path::Path;

use driftwatch::config::Pipeline;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative paths resolve from pipelines/, as for the shipped files.
    // (Built in fuzz/ by cargo-fuzz, or as an example of the main package.)
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = if manifest.ends_with("fuzz") {
        manifest.join("..")
    } else {
        manifest.to_path_buf()
    };
    let at = root.join("pipelines/fuzz.yaml");
    if let Err(e) = Pipeline::parse(&at, text) {
        assert!(!e.to_string().is_empty());
    }
});
