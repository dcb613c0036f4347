//! Crashes: `driftwatch run` killed with SIGKILL at several points of a
//! stream (each run after new input arrived), then aborted at the worst
//! moment (a batch's evaluations delivered, its mark not yet written) three
//! times, and restarted, ends with exactly the alerts of an uninterrupted run
//! of the same input — none lost, none duplicated (by alert_id and by count).
//! Against the embedded broker (delivery recorded in the commit metadata)
//! and against tansu, which drops commit metadata, with a checkpoint topic.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use driftwatch::broker::Broker;

/// A killed instance stays in the group until its session times out: a
/// short one lets the next start without waiting long. A static member
/// (`Member::Static`) does not wait for it: its session is left at
/// librdkafka's default (45 s), so a restart that waited would show.
fn pipeline(
    dir: &std::path::Path,
    topic: &str,
    brokers: &str,
    checkpoints: Option<&str>,
    member: Member,
) -> std::path::PathBuf {
    let mut extra = match member {
        Member::Dynamic => r#", properties: {session.timeout.ms: "6000", heartbeat.interval.ms: "1000"}"#.to_string(),
        Member::Static => String::new(),
    };
    extra += &checkpoint_option(checkpoints);
    ks_pipeline_with(
        dir,
        "crash",
        topic,
        brokers,
        "{reference: {type: first, size: 300}, current: {size: 300, slide: 150}}",
        &extra,
    )
}

/// How the instances of a test join their group.
#[derive(Clone, Copy, PartialEq)]
enum Member {
    /// A new member each start (the default).
    Dynamic,
    /// Static membership: every instance of the test is `--instance-id dw-0`
    /// (through `DRIFTWATCH_INSTANCE_ID`), one after the other.
    Static,
}

impl Member {
    fn env(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Member::Dynamic => vec![],
            Member::Static => vec![("DRIFTWATCH_INSTANCE_ID", "dw-0")],
        }
    }
}

/// Alternating clean and shifted stretches: several alerts over the stream.
fn events() -> Vec<String> {
    let mut out = normal_events(1, 600, 0.0);
    for (i, mean) in [1.0, 0.0, 1.5, 0.0, 1.0, 0.0].iter().enumerate() {
        out.extend(normal_events(10 + i as u64, 450, *mean));
    }
    out
}

/// Runs until every event is accounted for, then stops it with SIGTERM.
fn run_to_the_end(
    broker: &impl Kafka,
    p: &std::path::Path,
    topic: &str,
    group: &str,
    last: i64,
    checkpoints: Option<&str>,
    member: Member,
) {
    let child = start_run_with(p, group, "last", &member.env());
    wait_delivered(broker, topic, group, &BTreeMap::from([(0, last)]), checkpoints);
    stop_run(child);
}

/// Runs `p` with the fault hook `abort-before-mark:n` until it aborts
/// (SIGABRT, checked); returns its log.
fn run_until_abort(p: &std::path::Path, group: &str, name: &str, n: u64, member: Member) -> std::path::PathBuf {
    use std::os::unix::process::ExitStatusExt;
    let fault = format!("abort-before-mark:{n}");
    let mut env = member.env();
    env.push(("DRIFTWATCH_FAULT", &fault));
    let child = start_run_with(p, group, name, &env);
    let log = child.1.clone();
    let status = child.wait_exit(Duration::from_secs(240));
    assert_eq!(status.signal(), Some(6), "{status:?}: {}", log.display());
    log
}

fn alert_ids(broker: &impl Kafka, topic: &str, min: usize) -> Vec<String> {
    let mut ids: Vec<String> = read_topic(broker, topic, min, Duration::from_secs(30))
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Evaluations made once the first `n` events are in: the first when the
/// reference (300) and a current window (300) are full, then one per slide of 150.
fn evaluations(n: usize) -> usize {
    if n < 600 { 0 } else { (n - 600) / 150 + 1 }
}

async fn kill_and_restart(broker: &impl Kafka, checkpoints: bool, member: Member) {
    for t in ["ref", "crash"] {
        for s in ["", "-alerts", "-dlq", "-stats", "-checkpoints"] {
            broker.create_topic(&format!("{t}{s}"), 1);
        }
    }
    let cp = |t: &'static str| checkpoints.then_some(t);
    let ev = events();
    produce(broker, "ref", &ev).await;
    let dir = tempfile::tempdir().unwrap();
    let last = ev.len() as i64 - 1;

    // Uninterrupted.
    let p_ref = pipeline(dir.path(), "ref", &broker.bootstrap(), cp("ref-checkpoints"), member);
    run_to_the_end(broker, &p_ref, "ref", "g-ref", last, cp("ref-checkpoints"), member);
    let want = alert_ids(broker, "ref-alerts", 1);
    assert!(want.len() >= 3, "the stream has several alerts: {}", want.len());

    // The same input arrives in parts; each run gets a part it has not
    // seen and is killed with SIGKILL as soon as it has published the
    // evaluations of the part (odd runs: all but the last one, so the kill
    // lands while the part is still in work). A last run finishes.
    let p = pipeline(
        dir.path(),
        "crash",
        &broker.bootstrap(),
        cp("crash-checkpoints"),
        member,
    );
    let mut kills = 0;
    let mut sent = 0;
    for (i, upto) in [900, 1500, 2100, 2700].into_iter().enumerate() {
        produce(broker, "crash", &ev[sent..upto]).await;
        sent = upto;
        let target = evaluations(upto) - i % 2;
        let child = start_run_with(&p, "g-crash", &format!("kill{i}"), &member.env());
        let seen = wait_for(broker, "crash-stats", target);
        child.kill(); // SIGKILL
        if seen >= target {
            kills += 1;
        }
    }
    // The rest arrives, and runs abort right after a batch's new
    // evaluations are delivered, before their mark (the fault hook): the
    // next run evaluates those windows again and finds them on the output
    // topics. The first run aborts after its first such batch; each later
    // one after its second, the first being the one its predecessor left
    // unmarked.
    produce(broker, "crash", &ev[sent..]).await;
    let mut aborts = 0;
    for (i, n) in [1, 2, 2].into_iter().enumerate() {
        let log = run_until_abort(&p, "g-crash", &format!("abort{i}"), n, member);
        aborts += 1;
        if i > 0 {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                text.contains("not sent again"),
                "the unmarked evaluations were recognised: {}",
                log.display()
            );
        }
    }
    run_to_the_end(broker, &p, "crash", "g-crash", last, cp("crash-checkpoints"), member);
    let got = alert_ids(broker, "crash-alerts", want.len());
    let stats = read_topic(broker, "crash-stats", evaluations(ev.len()), Duration::from_secs(30));
    eprintln!(
        "{kills} kills and {aborts} aborts before a mark survived, {} alerts compared, {} evaluations published",
        want.len(),
        stats.len()
    );
    assert_eq!(kills, 4);
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "no alert sent twice: {got:?}");
    assert_eq!(got, want, "exactly the alerts of the uninterrupted run");
    assert_eq!(
        stats.len(),
        evaluations(ev.len()),
        "no evaluation published twice or lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_gives_exactly_the_alerts_of_an_uninterrupted_run() {
    kill_and_restart(&Broker::start(1).unwrap(), false, Member::Dynamic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_on_tansu_gives_exactly_the_alerts_of_an_uninterrupted_run() {
    kill_and_restart(&Tansu::start(), true, Member::Dynamic).await;
}

/// The same with static membership (`--instance-id`), on tansu (librdkafka's
/// mock cluster has no static members): each restart takes the killed
/// instance's place in the group, and the guarantees hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_as_a_static_member_gives_exactly_the_alerts_of_an_uninterrupted_run() {
    kill_and_restart(&Tansu::start(), true, Member::Static).await;
}

/// `events` alternating between partitions 0 and 1.
fn over_two_partitions(events: &[String]) -> Vec<(i32, &str, &str)> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| (i as i32 % 2, "", e.as_str()))
        .collect()
}

/// A static member killed with SIGKILL and started again with the same
/// `--instance-id` gets its partitions back at once, not after the dead
/// one's session (45 s) times out, and goes on where the killed one stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarted_after_kill_9_gets_its_partitions_back_at_once() {
    let broker = Tansu::start();
    broker.create_topic("static", 2);
    for s in ["-alerts", "-dlq", "-stats", "-checkpoints"] {
        broker.create_topic(&format!("static{s}"), 1);
    }
    let ev = events();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        dir.path(),
        "static",
        &broker.bootstrap(),
        Some("static-checkpoints"),
        Member::Static,
    );
    let assigned = |run: &Running| run.log_text().matches("partition assigned").count();
    produce_keyed(&broker, "static", &over_two_partitions(&ev[..900])).await;
    let first = start_run_with(&p, "g-static", "first", &Member::Static.env());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while assigned(&first) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "first run assigned: {}",
            first.log_tail(10)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    first.kill();

    let started = std::time::Instant::now();
    let second = start_run_with(&p, "g-static", "second", &Member::Static.env());
    while assigned(&second) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the restarted static member waits for its partitions: {}",
            second.log_tail(10)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    eprintln!("a restarted static member had both partitions after {took:?}");
    // It goes on: the evaluations of all 1500 events are published.
    produce_keyed(&broker, "static", &over_two_partitions(&ev[900..1500])).await;
    assert_eq!(wait_for(&broker, "static-stats", evaluations(1500)), evaluations(1500));
    stop_run(second);
}

/// Late labels across crashes: concept drift (labels remapped) whose labels
/// come on their own topic, in three parts, long after the events (so the
/// events mark runs far ahead of the labelled evaluations). `run` is killed
/// with SIGKILL after each part's labelled evaluations are out, and aborts
/// twice at the worst moment, then finishes: the
/// concept-drift (error-rate) evaluations on the joined events, and its
/// alerts, are exactly those of an uninterrupted run. A restart reads the
/// events and the labels again from where the join and the labelled windows
/// need them, joined events enter the labelled windows in the events'
/// order, and labelled evaluations have a delivery mark of their own.
/// Without a checkpoint topic (marks in the commit metadata, windows
/// rebuilt by replay alone) and with one (labelled windows restored from
/// their saved states and references).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_late_labels_gives_exactly_the_concept_alerts_of_an_uninterrupted_run() {
    late_labels(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_late_labels_and_saved_window_states_gives_exactly_the_concept_alerts() {
    late_labels(true).await;
}

async fn late_labels(checkpoints: bool) {
    use driftwatch::scenario::{Loaded, produce_kafka};
    let broker = Broker::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut pipelines = vec![];
    for t in ["lref", "lcrash"] {
        for s in [
            "",
            ".labels",
            ".labels-all",
            "-alerts",
            "-dlq",
            "-stats",
            "-checkpoints",
        ] {
            broker.create_topic(&format!("{t}{s}"), 1).unwrap();
        }
        let s = write(
            dir.path(),
            &format!("{t}.scenario.yaml"),
            &format!(
                "name: {t}\npool: {}\nseed: 5\nlabels: {{topic: {t}.labels-all, delay_events: 150}}\nkeys:\n  s:\n    - {{kind: clean, events: 1200}}\n    - {{kind: concept, events: 1200, remap: {{3: 8, 8: 3, 5: 9, 9: 5}}}}\n",
                root().join("models/digits_train.jsonl").display()
            ),
        );
        let l = Loaded::load(&s).unwrap();
        let producer: rdkafka::producer::FutureProducer = broker.client_config().create().unwrap();
        produce_kafka(&l, &producer, t, 1).await.unwrap();
        let cp = checkpoints.then(|| format!("{t}-checkpoints"));
        pipelines.push(error_rate_pipeline(
            dir.path(),
            "labels-crash",
            t,
            &broker.bootstrap(),
            cp.as_deref(),
        ));
    }
    // 2400 events, all labelled: evaluations at 600, 700, …, 2400 joined events.
    let total = 19;
    let labels = |t: &str| -> Vec<String> {
        read_topic(&broker, &format!("{t}.labels-all"), 2400, Duration::from_secs(30))
            .iter()
            .map(|v| v.to_string())
            .collect()
    };
    produce(&broker, "lref.labels", &labels("lref")).await;
    let child = start_run(&pipelines[0], "g-lref", "lref");
    assert_eq!(wait_for(&broker, "lref-stats", total), total);
    if !checkpoints {
        // The status line (every 5 s in tests) sums the run up.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let done =
            |t: &str| t.contains(" status ") && t.contains("labels_joined=2400") && t.contains("first_waiting=None");
        while !done(&child.log_text()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            done(&child.log_text()),
            "a status line with the join's counts: {}",
            child.log_tail(5)
        );
    }
    stop_run(child);
    let want = alert_ids(&broker, "lref-alerts", 1);
    assert!(!want.is_empty(), "the concept drift alerts");

    // The labels come in parts; a run is killed once the evaluations of
    // its part are out (evaluations at 600, 700, … joined events).
    let all = labels("lcrash");
    let mut kills = 0;
    let mut sent = 0;
    // The events group's commit: (offset, metadata).
    let committed = || -> (i64, String) {
        let c: rdkafka::consumer::BaseConsumer = broker.client_config().set("group.id", "g-lcrash").create().unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition("lcrash", 0);
        match rdkafka::consumer::Consumer::committed_offsets(&c, tpl, Duration::from_secs(10)) {
            Ok(t) => match t.elements()[0].offset() {
                rdkafka::Offset::Offset(o) => (o, t.elements()[0].metadata().to_string()),
                _ => (-1, String::new()),
            },
            Err(_) => (-1, String::new()),
        }
    };
    let until = |ok: &dyn Fn((i64, String)) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while !ok(committed()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        committed()
    };
    for (i, upto) in [1000, 1800].into_iter().enumerate() {
        // With window states saved, the first part of the labels comes
        // once every event is read and marked: no events batch follows
        // it, yet the events commit must follow the labelled windows
        // (the last one 800–999, its reference saved).
        let labels_first = !(checkpoints && i == 0);
        if labels_first {
            produce(&broker, "lcrash.labels", &all[sent..upto]).await;
        }
        let child = start_run(&pipelines[1], "g-lcrash", &format!("kill{i}"));
        if !labels_first {
            let c = until(&|(_, m)| m.starts_with("dw1:hw=2399;"));
            assert!(c.1.starts_with("dw1:hw=2399;"), "every event read: {c:?}");
            produce(&broker, "lcrash.labels", &all[sent..upto]).await;
        }
        sent = upto;
        let target = (upto - 600) / 100 + 1;
        let seen = wait_for(&broker, "lcrash-stats", target);
        assert!(
            seen >= target,
            "{seen} of {target} labelled evaluations published before kill {i}: {}",
            child.log_tail(6)
        );
        kills += 1;
        if !labels_first {
            let c = until(&|(o, _)| o >= 600);
            assert!(c.0 >= 600, "the events commit follows the labelled windows: {c:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
        child.kill(); // SIGKILL
    }
    // The rest arrives; runs abort right after a batch of new labelled
    // evaluations is delivered and before its mark (the fault hook), twice.
    produce(&broker, "lcrash.labels", &all[sent..]).await;
    for (i, n) in [1, 2].into_iter().enumerate() {
        run_until_abort(&pipelines[1], "g-lcrash", &format!("abort{i}"), n, Member::Dynamic);
        kills += 1;
    }
    let child = start_run(&pipelines[1], "g-lcrash", "last");
    assert_eq!(wait_for(&broker, "lcrash-stats", total), total);
    // Anything sent twice would come within moments.
    std::thread::sleep(Duration::from_secs(3));
    stop_run(child);
    let stats = read_topic(&broker, "lcrash-stats", total, Duration::from_secs(30));
    let got = alert_ids(&broker, "lcrash-alerts", want.len());
    eprintln!(
        "{kills} kills and aborts with late labels survived, {} concept alerts compared, {} evaluations published",
        want.len(),
        stats.len()
    );
    assert_eq!(kills, 4);
    assert_eq!(stats.len(), total, "no labelled evaluation lost or sent twice");
    let ends = |topic: &str| -> Vec<i64> {
        read_topic(&broker, topic, total, Duration::from_secs(30))
            .iter()
            .map(|e| e["window"]["current_offsets"][0]["last"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ends("lcrash-stats"), ends("lref-stats"), "the same windows evaluated");
    assert_eq!(got, want, "exactly the alerts of the uninterrupted run");
}

/// Keys sharing a partition, each at its own rate, with a file reference,
/// windows that overlap and an alert policy with memory (2 of 3, then a
/// cooldown): the committed offset is the oldest any key needs, so a
/// restart replays rows that younger keys had let go. Their saved states
/// (window start, evaluation count, policy memory; in the checkpoint topic)
/// make each key skip those rows. Killed three times with SIGKILL and
/// aborted twice before a mark, the run publishes exactly the evaluations
/// of an uninterrupted run — same windows, same numbers, same alert
/// decisions — and the same alerts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_keys_sharing_a_partition_gives_exactly_the_evaluations_of_an_uninterrupted_run() {
    keys_sharing_a_partition("{size: 200, slide: 50}", false).await;
}

/// The same with event-time windows (20 s sliding by 10 s; an event every
/// 100 ms of event time, so a's windows hold about 100 events, c's 33):
/// windows close on the partition's watermark, and a restart rebuilds the
/// held rows, the closed windows and the late counts from the key states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_event_time_windows_gives_exactly_the_evaluations_of_an_uninterrupted_run() {
    keys_sharing_a_partition("{duration: 20s, slide: 10s}", true).await;
}

/// The same with sampled event-time windows (`max_sample: 40`: a's windows
/// of about 100 events test the 40 with the lowest id hashes, the file
/// reference 40 of its 300): a restart rebuilds the same samples, so the
/// statistics and sample sizes are those of an uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_sampled_event_time_windows_gives_exactly_the_evaluations_of_an_uninterrupted_run() {
    keys_sharing_a_partition("{duration: 20s, slide: 10s}, max_sample: 40", true).await;
}

/// Three keys in one partition at different rates, `current` windows; with
/// `timed`, events carry an event time (`ts`, 100 ms apart).
async fn keys_sharing_a_partition(current: &str, timed: bool) {
    let broker = Broker::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let schema = match timed {
        true => SCHEMA_X.replace(
            "fields:\n",
            "event_time: ts\nfields:\n  - {name: ts, type: timestamp, nullable: true}\n",
        ),
        false => SCHEMA_X.to_string(),
    };
    write(dir.path(), "x.schema.yaml", &schema);
    write(
        dir.path(),
        "ref.jsonl",
        &(normal_events(99, 300, 0.0).join("\n") + "\n"),
    );
    let pipeline = |t: &str| {
        for s in ["", "-alerts", "-dlq", "-stats", "-checkpoints"] {
            broker.create_topic(&format!("{t}{s}"), 1).unwrap();
        }
        write(
            dir.path(),
            &format!("{t}.yaml"),
            &format!(
                "name: keys
schema: x.schema.yaml
source: {{type: kafka, brokers: \"{}\", topic: {t}, checkpoint_topic: {t}-checkpoints, properties: {{session.timeout.ms: \"6000\", heartbeat.interval.ms: \"1000\"}}}}
batch: {{max_events: 50, linger_ms: 10}}
window: {{key: site, reference: {{type: file, path: ref.jsonl}}, current: {current}}}
alerting: {{hysteresis: {{k: 2, m: 3}}, cooldown: 1}}
detectors:
  - {{name: x_ks, kind: ks, columns: [x], alpha: 0.001}}
output: {{alerts_topic: {t}-alerts, dead_letter_topic: {t}-dlq, stats_topic: {t}-stats}}
",
                broker.bootstrap()
            ),
        )
    };
    // Per site: clean and shifted stretches; interleaved a, b, a, c, a, b.
    let site = |name: &str, seed: u64, parts: &[(usize, f64)]| -> Vec<String> {
        let mut out = vec![];
        for (i, (n, mean)) in parts.iter().enumerate() {
            for e in normal_events(seed * 10 + i as u64, *n, *mean) {
                out.push(e.replacen('{', &format!(r#"{{"site": "{name}", "#), 1));
            }
        }
        out
    };
    let mut a = site("a", 1, &[(400, 0.0), (300, 1.0), (350, 0.0), (300, 1.2)]).into_iter();
    let mut b = site("b", 2, &[(300, 0.0), (250, 1.0), (350, 0.0)]).into_iter();
    let mut c = site("c", 3, &[(200, 0.0), (150, 1.5), (100, 0.0)]).into_iter();
    let ev: Vec<String> = (0..2700)
        .map(|i| match i % 6 {
            0 | 2 | 4 => a.next(),
            1 | 5 => b.next(),
            _ => c.next(),
        })
        .map(|e| e.expect("as many events as the pattern takes"))
        .enumerate()
        .map(|(i, e)| match timed {
            // The last event is 30 s later: it closes every window, so the
            // end of the stream is evaluated (and marked) at it.
            // Every 97th event is 5 s late: counted, in the restarted runs too.
            true => {
                let ts = i as i64 * 100 + 30_000 * i64::from(i == 2699) - 5_000 * i64::from(i % 97 == 96);
                e.replacen('{', &format!(r#"{{"ts": {ts}, "#), 1)
            }
            false => e,
        })
        .collect();
    let last = ev.len() as i64 - 1;
    // Where an evaluation is made: after the last event of its window
    // (count), or once an event at or past its end is read (event time).
    let end = |e: &serde_json::Value| match timed {
        true => e["window"]["window_end_ms"].as_i64().unwrap() / 100,
        false => e["window"]["current_offsets"][0]["last"].as_i64().unwrap(),
    };
    let evaluations = |topic: &str, n: usize| -> Vec<(String, u64, bool, i64, u64, String)> {
        let mut v: Vec<_> = read_topic(&broker, topic, n, Duration::from_secs(30))
            .iter()
            .map(|e| {
                (
                    e["alert_id"].as_str().unwrap().to_string(),
                    e["evaluation"].as_u64().unwrap(),
                    e["alert"].as_bool().unwrap(),
                    end(e),
                    e["window"]["late_events"].as_u64().unwrap_or(0),
                    format!("{} {} {}", e["statistic"], e["p_value"], e["window"]["current_sample"]),
                )
            })
            .collect();
        v.sort();
        v
    };

    let p_ref = pipeline("kref");
    produce(&broker, "kref", &ev).await;
    run_to_the_end(
        &broker,
        &p_ref,
        "kref",
        "g-kref",
        last,
        Some("kref-checkpoints"),
        Member::Dynamic,
    );
    let want = evaluations("kref-stats", 1);
    let want_alerts = alert_ids(&broker, "kref-alerts", 1);
    assert!(want.len() > 30, "{}", want.len());
    if timed {
        // Each late event is reported once, by its key's next evaluation
        // (one stats record per detector: here one).
        let late: u64 = want.iter().map(|e| e.4).sum();
        assert!(late >= 20, "late events reported: {late}");
    }
    if current.contains("max_sample") {
        assert!(
            want.iter().any(|e| e.5.ends_with(" 40")),
            "windows sampled to 40: {want:?}"
        );
    }
    assert!(want_alerts.len() >= 3, "several alerts: {want_alerts:?}");
    // The policy holds some drifting evaluations back: its memory matters.
    assert!(want_alerts.len() < want.iter().filter(|e| e.2).count() + 10);

    let p = pipeline("kcrash");
    let mut kills = 0;
    let mut sent = 0;
    for (i, upto) in [800, 1400, 2000].into_iter().enumerate() {
        produce(&broker, "kcrash", &ev[sent..upto]).await;
        sent = upto;
        let target = want.iter().filter(|e| e.3 < upto as i64).count() - i % 2;
        let child = start_run(&p, "g-kcrash", &format!("kill{i}"));
        let seen = wait_for(&broker, "kcrash-stats", target);
        child.kill(); // SIGKILL
        if seen >= target {
            kills += 1;
        }
    }
    produce(&broker, "kcrash", &ev[sent..]).await;
    let mut aborts = 0;
    for (i, n) in [1, 2].into_iter().enumerate() {
        run_until_abort(&p, "g-kcrash", &format!("abort{i}"), n, Member::Dynamic);
        aborts += 1;
    }
    run_to_the_end(
        &broker,
        &p,
        "kcrash",
        "g-kcrash",
        last,
        Some("kcrash-checkpoints"),
        Member::Dynamic,
    );
    let got = evaluations("kcrash-stats", want.len());
    let got_alerts = alert_ids(&broker, "kcrash-alerts", want_alerts.len());
    eprintln!(
        "{kills} kills and {aborts} aborts with 3 keys in one partition survived, {} evaluations and {} alerts compared",
        want.len(),
        want_alerts.len()
    );
    assert_eq!(kills, 3);
    assert_eq!(got, want, "the same evaluations: windows, numbers and alert decisions");
    assert_eq!(got_alerts, want_alerts, "exactly the alerts of the uninterrupted run");
}
