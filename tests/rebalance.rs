//! Scale-out: three `driftwatch run` instances in one consumer group over a
//! keyed topic of six partitions; one is stopped and another started
//! mid-stream. Per key, the alerts are those of a single-instance run of the
//! same input, none lost and none made up: on each rebalance an instance
//! drops its windows and rebuilds those of the partitions it is assigned by
//! replay (DESIGN §6). Against the embedded broker, with delivery recorded
//! in the commit metadata only (alerts sent twice around a rebalance are
//! counted, not excluded: the group refuses commits while it rebalances) and
//! with a checkpoint topic (none sent twice); and against tansu, which drops
//! commit metadata, with a checkpoint topic. The same with late labels: the
//! labelled windows and the join follow the events partitions.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use driftwatch::broker::Broker;

const KEYS: usize = 6;

/// Count windows of 200 sliding by 100, or (`timed`) event-time windows of
/// 20 s sliding by 10 s over events 100 ms apart: as many events.
fn pipeline(
    dir: &std::path::Path,
    topic: &str,
    brokers: &str,
    checkpoints: Option<&str>,
    timed: bool,
) -> std::path::PathBuf {
    let current = if timed {
        "{duration: 20s, slide: 10s}"
    } else {
        "{size: 200, slide: 100}"
    };
    ks_pipeline_with(
        dir,
        "rebalance",
        topic,
        brokers,
        &format!("{{key: site, reference: {{type: first, size: 200}}, current: {current}}}"),
        &checkpoint_option(checkpoints),
    )
}

/// Per key (site `s{k}`, partition k): a reference, then clean and shifted
/// stretches in an order of its own, so each key alerts at its own points.
/// Returned in three parts, produced at different times. With `timed`,
/// each event has an event time, 100 ms after the key's previous one; the
/// key's last comes 30 s later, closing its windows.
fn events(timed: bool) -> [Vec<(i32, String, String)>; 3] {
    let mut parts: [Vec<(i32, String, String)>; 3] = Default::default();
    for k in 0..KEYS {
        let site = format!("s{k}");
        let mut stream = normal_events(100 + k as u64, 200, 0.0);
        let shifts = [0.0, 1.5, 0.0, 1.0, 0.0, 2.0];
        for i in 0..shifts.len() {
            let mean = shifts[(i + k) % shifts.len()];
            stream.extend(normal_events(1000 * k as u64 + i as u64, 250, mean));
        }
        let n = stream.len();
        for (j, e) in stream.into_iter().enumerate() {
            let part = (3 * j / n).min(2);
            let ts = match timed {
                true => format!(r#""ts": {}, "#, j * 100 + 30_000 * usize::from(j + 1 == n)),
                false => String::new(),
            };
            let ev = format!(r#"{{{ts}"site": "{site}", {}"#, &e[1..]);
            parts[part].push((k as i32, site.clone(), ev));
        }
    }
    parts
}

/// Alert ids per key.
fn alerts_by_key(broker: &impl Kafka, topic: &str, min: usize) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in read_topic(broker, topic, min, Duration::from_secs(30)) {
        out.entry(a["key"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(a["alert_id"].as_str().unwrap().to_string());
    }
    for ids in out.values_mut() {
        ids.sort();
    }
    out
}

async fn produce_part(broker: &impl Kafka, topic: &str, part: &[(i32, String, String)]) {
    let recs: Vec<(i32, &str, &str)> = part.iter().map(|(p, k, e)| (*p, k.as_str(), e.as_str())).collect();
    produce_keyed(broker, topic, &recs).await;
}

async fn scale_out(broker: &impl Kafka, checkpoints: bool, timed: bool) {
    let cp = |t: &'static str| checkpoints.then_some(t);
    for t in ["one", "three"] {
        broker.create_topic(t, KEYS as i32);
        for s in ["-alerts", "-dlq", "-stats", "-checkpoints"] {
            broker.create_topic(&format!("{t}{s}"), 1);
        }
    }
    let parts = events(timed);
    let last: BTreeMap<i32, i64> = (0..KEYS as i32)
        .map(|k| {
            let n = parts.iter().flatten().filter(|(p, _, _)| *p == k).count();
            (k, n as i64 - 1)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();

    // One instance, all the input at once.
    for part in &parts {
        produce_part(broker, "one", part).await;
    }
    let p1 = pipeline(dir.path(), "one", &broker.bootstrap(), cp("one-checkpoints"), timed);
    let single = start_run(&p1, "g-one", "single");
    wait_delivered(broker, "one", "g-one", &last, cp("one-checkpoints"));
    stop_run(single);
    let want = alerts_by_key(broker, "one-alerts", 1);
    assert_eq!(want.len(), KEYS, "every key alerts: {want:?}");

    // Three instances; the input arrives in three parts; `b` stops after
    // the first, `d` starts after the second.
    let p3 = pipeline(dir.path(), "three", &broker.bootstrap(), cp("three-checkpoints"), timed);
    let a = start_run(&p3, "g-three", "a");
    let b = start_run(&p3, "g-three", "b");
    let c = start_run(&p3, "g-three", "c");
    produce_part(broker, "three", &parts[0]).await;
    let evaluations = parts[0].len() / KEYS / 100 - 2;
    assert!(wait_for(broker, "three-stats", evaluations) >= evaluations);
    stop_run(b);
    produce_part(broker, "three", &parts[1]).await;
    let d = start_run(&p3, "g-three", "d");
    produce_part(broker, "three", &parts[2]).await;
    wait_delivered(broker, "three", "g-three", &last, cp("three-checkpoints"));
    for x in [a, c, d] {
        stop_run(x);
    }
    let mut got = alerts_by_key(broker, "three-alerts", want.values().map(Vec::len).sum());
    let total: usize = want.values().map(Vec::len).sum();
    // Sent twice: evaluations delivered while the group was already
    // rebalancing, whose commit the group refused; their next owner sent
    // them again (see the README, "Delivery").
    let mut twice = 0;
    for ids in got.values_mut() {
        let n = ids.len();
        ids.dedup();
        twice += n - ids.len();
    }
    eprintln!("{total} alerts over {KEYS} keys compared; {twice} sent twice");
    assert_eq!(got, want, "per key, the alerts of the single-instance run, none lost");
    if checkpoints {
        assert_eq!(twice, 0, "with a checkpoint topic, no alert is sent twice");
        // Nor any other evaluation: the statistics topics hold as many.
        let one = read_topic(broker, "one-stats", 1, Duration::from_secs(30)).len();
        let three = read_topic(broker, "three-stats", one, Duration::from_secs(30)).len();
        assert_eq!(three, one, "evaluations published, three instances vs one");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_one_leaving_and_one_joining_give_the_alerts_of_one() {
    scale_out(&Broker::start(1).unwrap(), false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_checkpoints_a_rebalance_sends_no_alert_twice() {
    scale_out(&Broker::start(1).unwrap(), true, false).await;
}

/// The same with event-time windows: each instance rebuilds the windows of
/// the partitions it is given from the saved key states and the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_event_time_windows_a_rebalance_gives_the_evaluations_of_one_instance() {
    scale_out(&Broker::start(1).unwrap(), true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_tansu_give_the_alerts_of_one() {
    scale_out(&Tansu::start(), true, false).await;
}

/// Concept drift on late labels, scaled out: six keys over six partitions,
/// their labels on a labels topic of six partitions keyed like the events.
/// Each instance reads the labels partitions numbered like the events
/// partitions it holds, and rebuilds its labelled windows and the join on
/// every rebalance; three instances, one stopped and one started while
/// events and labels arrive, publish per key exactly the error-rate
/// evaluations and alerts of one instance, none twice (checkpoint topic).
async fn scale_out_with_late_labels(broker: &impl Kafka) {
    use driftwatch::scenario::{Emission, Loaded};
    let dir = tempfile::tempdir().unwrap();
    for t in ["lone", "lthree"] {
        broker.create_topic(t, KEYS as i32);
        broker.create_topic(&format!("{t}.labels"), KEYS as i32);
        for s in ["-alerts", "-dlq", "-stats", "-checkpoints"] {
            broker.create_topic(&format!("{t}{s}"), 1);
        }
    }
    // Per key a clean stretch, then labels swapped: the error rate rises.
    let keys: String = (0..KEYS)
        .map(|k| {
            format!(
                "  s{k}:\n    - {{kind: clean, events: {}}}\n    - {{kind: concept, events: 800, remap: {{3: 8, 8: 3, 5: 9, 9: 5}}}}\n",
                700 + 50 * k
            )
        })
        .collect();
    let s = write(
        dir.path(),
        "labels.scenario.yaml",
        &format!(
            "name: scaled-labels\npool: {}\nseed: 11\nlabels: {{topic: unused, delay_events: 150}}\nkeys:\n{keys}",
            root().join("models/digits_train.jsonl").display()
        ),
    );
    let l = Loaded::load(&s).unwrap();
    // (events or labels, partition, key, payload, timestamp), in emission order.
    let emitted: Vec<(bool, i32, String, String, i64)> = l
        .emissions()
        .map(|e| match e {
            Emission::Event(ev) => (true, ev.key_index as i32, ev.key, ev.json, ev.ts),
            Emission::Label {
                key,
                key_index,
                json,
                ts,
                ..
            } => (false, key_index as i32, key, json, ts),
        })
        .collect();
    let produce_range = |t: &'static str, range: std::ops::Range<usize>| {
        let producer: rdkafka::producer::FutureProducer = broker.client_config().create().unwrap();
        let recs = emitted[range].to_vec();
        async move {
            let mut fs = vec![];
            for (event, p, key, json, ts) in &recs {
                let topic = if *event { t.to_string() } else { format!("{t}.labels") };
                let r = rdkafka::producer::FutureRecord::to(&topic)
                    .payload(json.as_bytes())
                    .key(key.as_bytes())
                    .partition(*p)
                    .timestamp(*ts);
                fs.push(producer.send_result(r).expect("queue"));
            }
            for f in fs {
                f.await.expect("delivery future").expect("delivered");
            }
        }
    };
    let pipeline = |t: &str| {
        let cp = format!("{t}-checkpoints");
        error_rate_pipeline(dir.path(), "scaled-labels", t, &broker.bootstrap(), Some(&cp))
    };
    // Per key, evaluations at 600, 700, … joined events.
    let total: usize = (0..KEYS).map(|k| (700 + 50 * k + 800 - 600) / 100 + 1).sum();
    let n = emitted.len();
    // Evaluations per key: (key, window end) of each.
    let windows = |t: &str| -> BTreeMap<String, Vec<i64>> {
        let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for e in read_topic(broker, &format!("{t}-stats"), total, Duration::from_secs(30)) {
            out.entry(e["key"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(e["window"]["current_offsets"][0]["last"].as_i64().unwrap());
        }
        for v in out.values_mut() {
            v.sort();
        }
        out
    };

    produce_range("lone", 0..n).await;
    let p1 = pipeline("lone");
    let single = start_run(&p1, "g-lone", "single");
    assert_eq!(wait_for(broker, "lone-stats", total), total);
    stop_run(single);
    let want = alerts_by_key(broker, "lone-alerts", 1);
    assert_eq!(want.len(), KEYS, "every key's concept drift alerts: {want:?}");

    let p3 = pipeline("lthree");
    let a = start_run(&p3, "g-lthree", "a");
    let b = start_run(&p3, "g-lthree", "b");
    let c = start_run(&p3, "g-lthree", "c");
    produce_range("lthree", 0..n / 2).await;
    assert!(wait_for(broker, "lthree-stats", KEYS) >= KEYS);
    stop_run(b);
    produce_range("lthree", n / 2..3 * n / 4).await;
    let d = start_run(&p3, "g-lthree", "d");
    produce_range("lthree", 3 * n / 4..n).await;
    assert_eq!(wait_for(broker, "lthree-stats", total), total);
    // Anything sent twice would come within moments.
    std::thread::sleep(Duration::from_secs(3));
    for x in [a, c, d] {
        stop_run(x);
    }
    let got = alerts_by_key(broker, "lthree-alerts", want.values().map(Vec::len).sum());
    eprintln!(
        "{} concept alerts over {KEYS} keys and {total} labelled evaluations compared",
        want.values().map(Vec::len).sum::<usize>()
    );
    assert_eq!(
        windows("lthree"),
        windows("lone"),
        "per key, the same labelled windows evaluated, none twice"
    );
    assert_eq!(got, want, "per key, the concept alerts of the single-instance run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_late_labels_give_the_concept_alerts_of_one() {
    scale_out_with_late_labels(&Broker::start(1).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_late_labels_on_tansu_give_the_concept_alerts_of_one() {
    scale_out_with_late_labels(&Tansu::start()).await;
}
