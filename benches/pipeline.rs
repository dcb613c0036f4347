//! End-to-end throughput in the optimised (bench) build: the same report as
//! `driftwatch bench`, which runs in whatever build the binary was made with.
//! `cargo bench --bench pipeline [-- EVENTS]` (default 1,000,000). Needs
//! ONNX Runtime like the binary (`ORT_DYLIB_PATH`, set by scripts/setup.sh).
//! Under `cargo test` it pushes 20,000 events through, as a smoke test.

use std::path::Path;

fn main() {
    let timed = std::env::args().any(|a| a == "--bench");
    let events: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if timed { 1_000_000 } else { 20_000 });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(driftwatch::bench::bench(
        &root.join("pipelines/bench.yaml"),
        &root.join("models/digits_train.jsonl"),
        events,
    )) {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}
