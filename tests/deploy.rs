//! The deployment files, checked statically (no Docker engine here): the
//! compose file's services, ports, environment and commands refer to things
//! that exist, the pipeline it runs validates with its environment, and the
//! Dockerfile copies what exists, ships ONNX Runtime and a binary without
//! its debug info.

mod common;

use std::process::Command;

use common::root;
use serde_norway::Value;

fn compose() -> Value {
    serde_norway::from_str(&std::fs::read_to_string(root().join("docker-compose.yml")).unwrap()).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn compose_services_refer_to_what_exists_and_the_pipeline_validates() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    for s in ["kafka", "topics", "driftwatch", "producer", "prometheus"] {
        assert!(services.contains_key(s), "service {s}");
    }
    // Apache Kafka in KRaft mode, one broker.
    let kafka = &c["services"]["kafka"];
    assert!(kafka["image"].as_str().unwrap().starts_with("apache/kafka:"));
    assert_eq!(kafka["environment"]["KAFKA_PROCESS_ROLES"], "broker,controller");
    // The topics the pipeline reads and writes are created.
    let topics_cmd = strings(&c["services"]["topics"]["command"]).join(" ");
    let p = driftwatch::config::Pipeline::load(&root().join("pipelines/digits.yaml")).unwrap();
    for t in ["digits", &p.output.alerts_topic, &p.output.dead_letter_topic] {
        assert!(topics_cmd.contains(&format!("{t}:")), "topic {t} created: {topics_cmd}");
    }
    let Some(driftwatch::config::SourceConfig::Kafka(src)) = &p.source else {
        panic!("the compose pipeline reads Kafka")
    };
    let checkpoints = src.checkpoint_topic.as_deref().expect("checkpoints on");
    assert!(
        topics_cmd.contains(&format!(
            "--topic {checkpoints} --partitions 1 --replication-factor 1 --config cleanup.policy=compact"
        )),
        "the checkpoint topic is created compacted: {topics_cmd}"
    );
    // driftwatch: built from the Dockerfile, runs a pipeline that exists, metrics on the mapped port.
    let dw = &c["services"]["driftwatch"];
    assert_eq!(dw["build"], ".");
    assert!(root().join("Dockerfile").is_file());
    let cmd = strings(&dw["command"]);
    assert_eq!(cmd[0], "run");
    assert!(root().join(&cmd[1]).is_file(), "{}", cmd[1]);
    let metrics = &cmd[cmd.iter().position(|a| a == "--metrics").unwrap() + 1];
    let port = metrics.rsplit(':').next().unwrap();
    assert!(strings(&dw["ports"]).iter().any(|p| p.ends_with(&format!(":{port}"))));
    // Prometheus scrapes that port.
    let prom = c["configs"]["prometheus"]["content"].as_str().unwrap();
    assert!(prom.contains(&format!("driftwatch:{port}")), "{prom}");
    // The producer profile streams a scenario that exists and loads.
    let prod = strings(&c["services"]["producer"]["command"]);
    assert_eq!(prod[0], "produce");
    driftwatch::scenario::Loaded::load(&root().join(&prod[1])).unwrap();
    assert_eq!(strings(&c["services"]["producer"]["profiles"]), ["demo"]);
    // A restart keeps its partitions (static membership, a legal id).
    let id = dw["environment"]["DRIFTWATCH_INSTANCE_ID"].as_str().unwrap();
    assert!(
        id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "{id}"
    );
    // The pipeline validates with the environment compose gives it.
    let env = dw["environment"].as_mapping().unwrap();
    for (k, v) in env {
        // SAFETY of set_var: this test's own variables, before the pipeline reads them.
        unsafe { std::env::set_var(k.as_str().unwrap(), v.as_str().unwrap()) };
    }
    driftwatch::runtime::validate(&root().join(&cmd[1]))
        .await
        .expect("the mounted pipeline validates");
}

#[test]
fn the_dockerfile_copies_what_exists_and_ships_onnx_runtime() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 3, "multi-stage: build, ONNX Runtime, runtime");
    for l in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let parts: Vec<&str> = l.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root().join(src).exists(), "COPY source {src} exists");
        }
    }
    assert!(
        text.contains("onnxruntime==1.31.1"),
        "same ONNX Runtime as scripts/setup.sh"
    );
    assert!(text.contains("ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1.31.1"));
    assert!(text.contains(driftwatch::model::ORT_LIB_NAME));
    assert!(text.contains("--metrics\", \"0.0.0.0:9464\""));
}

/// The image's binary goes through scripts/split-debuginfo.sh: run it on this
/// build's binary and check that the result has no debug info, names its
/// debug file, still runs, and that the debug file holds the line tables.
#[test]
fn split_debuginfo_strips_the_binary_and_keeps_the_line_tables_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("driftwatch");
    std::fs::copy(env!("CARGO_BIN_EXE_driftwatch"), &bin).unwrap();
    let before = std::fs::metadata(&bin).unwrap().len();
    let status = Command::new(root().join("scripts/split-debuginfo.sh"))
        .arg(&bin)
        .status()
        .unwrap();
    assert!(status.success());
    let sections = |f: &std::path::Path| {
        let out = Command::new("readelf").arg("-S").arg(f).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stripped = sections(&bin);
    assert!(!stripped.contains(".debug_line"), "{stripped}");
    assert!(stripped.contains(".gnu_debuglink"));
    assert!(sections(&bin.with_extension("debug")).contains(".debug_line"));
    let after = std::fs::metadata(&bin).unwrap().len();
    assert!(after * 2 < before, "{before} → {after} bytes");
    let out = Command::new(&bin).arg("--version").output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("driftwatch"));
}
