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
    match Pipeline::parse(&at, text) {
        Err(e) => assert!(!e.to_string().is_empty()),
        // The detectors' options are built from the parsed items.
        Ok(p) => {
            if let Err(e) = driftwatch::detect::kinds::build(&p) {
                assert!(!e.to_string().is_empty());
            }
        }
    }
});
