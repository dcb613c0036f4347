//! `validate` on the shipped pipelines (must pass) and on every broken
//! pipeline under tests/data/invalid/ (must fail with the message in its
//! `# expect:` header, which names file, line, column and key where known).

mod common;

use std::process::Command;

use common::root;

#[tokio::test]
async fn shipped_pipelines_validate() {
    for p in [
        "pipelines/digits.yaml",
        "pipelines/digits-by-time.yaml",
        "pipelines/bench.yaml",
        "pipelines/census.yaml",
        "pipelines/sensors-hourly.yaml",
    ] {
        let stages = driftwatch::runtime::validate(&root().join(p)).await;
        assert!(
            stages.is_ok(),
            "{p}: {}",
            stages.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }
    for f in std::fs::read_dir(root().join("pipelines/scenarios")).unwrap() {
        let f = f.unwrap().path();
        if let Err(e) = driftwatch::scenario::Loaded::load(&f) {
            panic!("{}: {e}", f.display());
        }
    }
}

#[tokio::test]
async fn each_invalid_pipeline_fails_with_its_message() {
    let dir = root().join("tests/data/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 15, "the corpus is there");
    let mut failures = vec![];
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` header", f.display()))
            .to_string();
        match driftwatch::runtime::validate(f).await {
            Ok(_) => failures.push(format!(
                "{}: validated, expected an error containing {expect:?}",
                f.display()
            )),
            Err(e) => {
                let msg = e.to_string();
                if !msg.contains(&expect) {
                    failures.push(format!("{}:\n   got: {msg}\n  want: …{expect}…", f.display()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_cli_exits_non_zero_and_names_each_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .arg("validate")
        .arg(root().join("pipelines/digits.yaml"))
        .arg(root().join("tests/data/invalid/zero_window_size.yaml"))
        .arg(root().join("tests/data/invalid/unknown_key.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok: ") && stdout.contains("digits.yaml"), "{stdout}");
    assert!(
        stdout.contains("zero_window_size.yaml:7:19: window.current.size"),
        "{stdout}"
    );
    assert!(stdout.contains("unknown_key.yaml:6:1: detectorz"), "{stdout}");
}

#[test]
fn env_secrets_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        "name: p\nschema: x.yaml\nsource: {type: kafka, brokers: localhost:1, topic: t}\nwindow: {reference: {type: first, size: ${DW_SECRET_SIZE}}, current: {size: 5}}\ndetectors: []\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .arg("validate")
        .arg(&p)
        .env("DW_SECRET_SIZE", "s3cr3t-token")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!all.contains("s3cr3t-token"), "secret leaked: {all}");
    assert!(all.contains("window.reference.size") && all.contains("***"), "{all}");
}
