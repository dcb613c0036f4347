//! End-to-end throughput in the optimised (bench) build: the same report as
//! `driftwatch bench`, which runs in whatever build the binary was made with.
//! `cargo bench --bench pipeline [-- EVENTS]` (default 1,000,000). Needs
//! ONNX Runtime like the binary (`ORT_DYLIB_PATH`, set by scripts/setup.sh).
//! Under `cargo test` it pushes 20,000 events through, as a smoke test.
//! `cargo bench --bench pipeline -- --text [EVENTS]` (default 5,000) runs the
//! news pipeline (pipelines/bench-news.yaml) on the corpus in .deps/bbc.
//! `cargo bench --bench pipeline -- --census [EVENTS]` (default 277,677, the
//! 2015-2018 records once) runs pipelines/census.yaml on .deps/census.
//! `--without DETECTOR` (repeatable) leaves a detector out, as in `driftwatch bench`.

use std::path::Path;

fn main() {
    let timed = std::env::args().any(|a| a == "--bench");
    let text = std::env::args().any(|a| a == "--text");
    let census = std::env::args().any(|a| a == "--census");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let without: Vec<String> = args
        .windows(2)
        .filter(|w| w[0] == "--without")
        .map(|w| w[1].clone())
        .collect();
    let events: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(match (text, timed) {
        _ if census => 277_677,
        (true, _) => 5_000,
        (false, true) => 1_000_000,
        (false, false) => 20_000,
    });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pool = root.join("models/digits_train.jsonl");
    let corpus = root.join(".deps/bbc");
    let census_dir = root.join(".deps/census");
    let (pipeline, from) = if census {
        (
            "pipelines/census.yaml",
            driftwatch::bench::BenchEvents::Census(&census_dir),
        )
    } else if text {
        (
            "pipelines/bench-news.yaml",
            driftwatch::bench::BenchEvents::News(&corpus),
        )
    } else {
        ("pipelines/bench.yaml", driftwatch::bench::BenchEvents::Digits(&pool))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(driftwatch::bench::bench(&root.join(pipeline), from, events, &without)) {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}
