//! Any text as a pipeline file: never a panic; a rejection says what is wrong.
#![no_main]

use driftwatch::config::Pipeline;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative paths resolve from pipelines/, as for the shipped files.
    let at = common::repo_root().join("pipelines/fuzz.yaml");
    if let Err(e) = Pipeline::parse(&at, text) {
        assert!(!e.to_string().is_empty());
    }
});
