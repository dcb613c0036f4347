//! Text through a tokenizer and a transformer: token ids and embeddings equal
//! the Python reference implementations (golden file of
//! scripts/golden_text.py), the news head scores its held-out paragraphs as
//! its metadata says, and bad text input is dead-lettered or truncated.
//! Needs what scripts/setup.sh fetches into .deps (model, tokenizer, corpus).

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{root, write};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema};
use driftwatch::config::ModelConfig;
use driftwatch::model::Model;
use driftwatch::model::tokenizer::TextTokenizer;
use driftwatch::source::RawRecord;

fn minilm() -> PathBuf {
    root().join(".deps/minilm")
}

fn golden() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("tests/data/text/golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The texts of the golden file (with their ids and, for paragraphs, embeddings).
fn golden_texts() -> Vec<serde_json::Value> {
    golden()["texts"].as_array().unwrap().clone()
}

#[test]
fn token_ids_equal_python_tokenizers_on_the_golden_texts() {
    let tok = TextTokenizer::load(&minilm().join("tokenizer.json"), 128).unwrap();
    let texts = golden_texts();
    assert!(texts.len() >= 200, "{}", texts.len());
    let mut truncated = 0;
    for (i, t) in texts.iter().enumerate() {
        let text = t["text"].as_str().unwrap();
        let want: Vec<u32> = t["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.ids(text).unwrap(), want, "text {i}: {text:?}");
        truncated += usize::from(want.len() == 128);
    }
    assert!(truncated >= 6, "the golden set truncates some texts: {truncated}");
}

fn text_batch(texts: &[Option<&str>]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true)]));
    RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(texts.to_vec())) as ArrayRef]).unwrap()
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x.powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Scored in inference calls of 7 texts sorted by length and padded per
/// call, every paragraph's mean-pooled embedding equals onnxruntime + numpy
/// on that paragraph alone; a null text gets a null embedding.
#[test]
fn embeddings_equal_onnxruntime_and_numpy_masked_mean_pooling() {
    let cfg: ModelConfig = serde_norway::from_str(&format!(
        "path: {0}/model.onnx\ninput: text\ntokenizer: {{path: {0}/tokenizer.json}}\n\
         outputs: {{embedding: last_hidden_state, logits: null}}\nbatch_size: 7",
        minilm().display()
    ))
    .unwrap();
    let texts = golden_texts();
    let mut column: Vec<Option<&str>> = texts.iter().map(|t| t["text"].as_str()).collect();
    column.insert(3, None);
    let batch = text_batch(&column);
    let tok = TextTokenizer::load(&minilm().join("tokenizer.json"), 128).unwrap();
    let input = driftwatch::model::input::build(&cfg, &empty_schema(), &batch.schema(), Some(Arc::new(tok))).unwrap();
    let mut model = Model::load(&cfg, &cfg.path, input, None).unwrap();
    let scored = model.score(&batch).unwrap();
    let emb = scored.column_by_name("embedding").unwrap().as_fixed_size_list();
    assert!(emb.is_null(3));
    let mut compared = 0;
    for (i, t) in texts.iter().enumerate() {
        let Some(want) = t["embedding"].as_array() else {
            continue;
        };
        let want: Vec<f64> = want.iter().map(|v| v.as_f64().unwrap()).collect();
        let row = if i < 3 { i } else { i + 1 };
        let got = emb.value(row);
        let got = got.as_primitive::<Float32Type>().values();
        let c = cosine(got, &want);
        assert!(c >= 0.9999, "paragraph {i}: cosine {c}");
        compared += 1;
    }
    assert!(compared >= 50, "{compared}");
}

fn empty_schema() -> driftwatch::schema::EventSchema {
    serde_norway::from_str("name: t\nfields:\n  - {name: text, type: text}\n").unwrap()
}

/// JSON events of the news schema, one per text.
fn news_records(texts: &[&str]) -> Vec<RawRecord> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let json =
                serde_json::json!({"event_id": format!("e{i}"), "ts": 1_000 * i as i64, "feed": "bbc", "text": t});
            record(i, json.to_string().into_bytes())
        })
        .collect()
}

fn record(i: usize, payload: Vec<u8>) -> RawRecord {
    RawRecord {
        payload: Some(payload),
        partition: 0,
        offset: i as i64,
        timestamp_ms: None,
    }
}

async fn news_stages() -> driftwatch::engine::Stages {
    // SAFETY of set_var: before this test's pipeline reads the environment.
    unsafe { std::env::set_var("KAFKA_BROKERS", "localhost:9") };
    driftwatch::runtime::validate(&root().join("pipelines/news.yaml"))
        .await
        .expect("news pipeline validates")
}

/// The pipeline's own model stage (tokenizer, MiniLM, pooling, head) scores
/// the held-out quarter of the news paragraphs with the accuracy that
/// training wrote into the head's metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_news_head_scores_its_held_out_paragraphs_as_its_metadata_says() {
    let mut stages = news_stages().await;
    let corpus = driftwatch::corpus::Corpus::load(&root().join(".deps/bbc")).unwrap();
    let quarter: Vec<_> = corpus.paragraphs.iter().filter(|p| p.article % 20 == 0).collect();
    let texts: Vec<&str> = quarter.iter().map(|p| p.text.as_str()).collect();
    let (batches, rejected) = stages.ingest(&news_records(&texts)).await.unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    let predicted: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            let p = b.column_by_name("predicted_class").unwrap().as_primitive::<Int64Type>();
            p.values().to_vec()
        })
        .collect();
    let right = predicted
        .iter()
        .zip(&quarter)
        .filter(|(p, q)| **p == q.topic as i64)
        .count();
    let meta = driftwatch::model::inspect::inspect(&root().join("models/news_head.onnx"))
        .unwrap()
        .metadata;
    assert_eq!(quarter.len().to_string(), meta["heldout_quarter_paragraphs"]);
    let stated: f64 = meta["heldout_quarter_accuracy"].parse().unwrap();
    let measured = right as f64 / quarter.len() as f64;
    assert!(
        (measured - stated).abs() <= 0.003,
        "measured {measured}, metadata says {stated}"
    );
    assert!(measured >= 0.85, "{measured}");
}

/// A text field that is not a string and a payload that is not UTF-8 are
/// dead-lettered with a reason; an empty text is scored; a text far over
/// `max_length` tokens is truncated, not rejected (the descriptors say so);
/// an event over `batch.max_event_bytes` is dead-lettered naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_text_input_is_dead_lettered_or_truncated_never_a_panic() {
    let mut stages = news_stages().await;
    let long = "The committee will publish its report next week. ".repeat(2_000);
    let mut records = news_records(&["", &long, "Shares fell sharply on Monday."]);
    let not_a_string = r#"{"event_id": "n", "ts": 1, "feed": "bbc", "text": 42}"#;
    records.push(record(3, not_a_string.as_bytes().to_vec()));
    let mut not_utf8 = br#"{"event_id": "u", "ts": 1, "feed": "bbc", "text": "caf"#.to_vec();
    not_utf8.extend_from_slice(&[0xe9, b'"', b'}']);
    records.push(record(4, not_utf8));
    let huge = "word ".repeat(300_000);
    records.extend(news_records(&[&huge]).into_iter().map(|mut r| {
        r.offset = 5;
        r
    }));
    let (batches, rejected) = stages.ingest(&records).await.unwrap();
    let reasons: Vec<(i64, String)> = rejected.iter().map(|r| (r.offset, r.message.clone())).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].0 == 3 && reasons[0].1.contains("text"), "{reasons:?}");
    assert!(reasons[1].0 == 4, "{reasons:?}");
    assert!(
        reasons[2].0 == 5 && reasons[2].1.contains("max_event_bytes"),
        "{reasons:?}"
    );
    let b = &batches[0];
    assert_eq!(b.num_rows(), 3);
    let tokens = b.column_by_name("tokens").unwrap().as_primitive::<Int64Type>();
    assert_eq!(
        tokens.values().to_vec()[..2],
        [2, 128],
        "empty: [CLS] [SEP]; long: truncated"
    );
    let truncated = b
        .column_by_name("truncated")
        .unwrap()
        .as_primitive::<datafusion::arrow::datatypes::Int32Type>();
    assert_eq!(truncated.values().to_vec(), vec![0, 1, 0]);
    let emb = b.column_by_name("embedding").unwrap().as_fixed_size_list();
    assert_eq!(emb.null_count(), 0);
    assert!(
        emb.value(0)
            .as_primitive::<Float32Type>()
            .values()
            .iter()
            .all(|v| v.is_finite())
    );
}

/// `input: {type: text, column: text}` is what `input: text` with a
/// tokenizer means: the same embeddings and predictions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_input_kind_scores_as_the_column_shorthand_does() {
    let dir = tempfile::tempdir().unwrap();
    let news = std::fs::read_to_string(root().join("pipelines/news.yaml")).unwrap();
    let tagged = news
        .replace("input: text", "input: {type: text, column: text}")
        .replace("../", &format!("{}/", root().display()));
    let p = write(dir.path(), "tagged.yaml", &tagged);
    let mut shorthand = news_stages().await;
    let mut kind = driftwatch::runtime::validate(&p)
        .await
        .expect("tagged text input validates");
    let records = news_records(&["Shares fell sharply on Monday.", "", "The striker scored twice."]);
    let (a, _) = shorthand.ingest(&records).await.unwrap();
    let (b, _) = kind.ingest(&records).await.unwrap();
    for column in ["embedding", "predicted_class"] {
        let data = |batches: &[RecordBatch]| -> Vec<_> {
            batches
                .iter()
                .map(|x| x.column_by_name(column).unwrap().to_data())
                .collect()
        };
        assert_eq!(data(&a), data(&b), "{column}");
    }
}

/// `validate` names the file and the key at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_the_tokenizer_or_model_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let news = std::fs::read_to_string(root().join("pipelines/news.yaml")).unwrap();
    let abs = |s: &str| s.replace("../", &format!("{}/", root().display()));
    let broken = write(dir.path(), "broken.json", "{\"model\": 3}");
    let cases = [
        (
            news.replace("../.deps/minilm/tokenizer.json", "../.deps/minilm/missing.json"),
            "missing.json: cannot read",
        ),
        (
            news.replace("../.deps/minilm/tokenizer.json", &broken.display().to_string()),
            "is not a Hugging Face tokenizer.json",
        ),
        (
            news.replace("../.deps/minilm/model.onnx", "../models/digits_cnn.onnx"),
            "no input named `input_ids` for the token ids",
        ),
        (
            news.replace("input: text", "input: label"),
            "column `label` is Int64, not text",
        ),
        (
            news.replace("input: text", "input: {type: text, column: label}"),
            "column `label` is Int64, not text",
        ),
        (
            news.replace("input: text", "input: {type: text, columns: [text]}"),
            "unknown field `columns`",
        ),
        (
            format!(
                "{}{}",
                &news[..news.find("model:").unwrap()],
                &news[news.find("window:").unwrap()..]
            ),
            "text_tokens counts tokens: it needs the pipeline's model.tokenizer",
        ),
    ];
    for (i, (yaml, want)) in cases.iter().enumerate() {
        let p = write(dir.path(), &format!("p{i}.yaml"), &abs(yaml));
        unsafe { std::env::set_var("KAFKA_BROKERS", "localhost:9") };
        let e = match driftwatch::runtime::validate(&p).await {
            Ok(_) => panic!("case {i} validated"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(want), "case {i}: {e}");
        assert!(
            e.contains(&format!("p{i}.yaml")),
            "case {i} names the pipeline file: {e}"
        );
    }
}

/// The text scenario end to end on two seeds: no alert on clean phases;
/// corrupted text and an unseen topic caught on the embeddings (and the
/// accuracy corruption costs, estimated before labels), a topic mix
/// dominated by a few stories on the embeddings alone, the topic
/// priors by the predicted-topic chi-square, the relabelling by the error
/// rate alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_demo_flags_each_drift_in_its_phase_and_nothing_on_clean_text() {
    use driftwatch::demo::Verdict;
    for seed in [7, 11] {
        let opts = driftwatch::demo::DemoOptions {
            pipeline: root().join("pipelines/news.yaml"),
            scenario: root().join("pipelines/scenarios/news.yaml"),
            seed: Some(seed),
            live: false,
        };
        let s = driftwatch::demo::run(opts).await.expect("text demo runs");
        assert_eq!((s.received, s.dead_lettered), (3_000, 0));
        assert!(s.false_alarms().is_empty(), "seed {seed}: {:?}", s.false_alarms());
        let detected = |name: &str| {
            let phase = s.truth.phases.iter().find(|p| p.name == name).unwrap();
            s.alerts_in(phase)
                .into_iter()
                .filter(|(_, v)| matches!(v, Verdict::Detected { .. }))
                .map(|(d, _)| d)
                .collect::<Vec<_>>()
        };
        assert!(detected("corrupted").contains(&"embedding_mmd".into()), "seed {seed}");
        // CBPE on the head's softmax: each window's estimated accuracy
        // beside the realised one (labels are inline here). On clean text
        // the two agree; a relabelling costs accuracy CBPE cannot see.
        let gaps = |phase: &str| -> Vec<f64> {
            let phases: Vec<_> = s.truth.phases.iter().filter(|p| p.name == phase).collect();
            s.evaluations
                .iter()
                .filter(|e| e.detector == "estimated_accuracy")
                .filter(|e| {
                    phases
                        .iter()
                        .any(|p| (p.start_ms..=p.end_ms).contains(&e.window.current_end_ms))
                })
                .filter_map(|e| {
                    let d = e.tests.first()?.details.as_ref()?;
                    Some((d["estimated_accuracy"].as_f64()? - d["realised_accuracy"].as_f64()?).abs())
                })
                .collect()
        };
        let clean = gaps("clean again");
        assert_eq!(clean.len(), 8, "seed {seed}");
        let mean = clean.iter().sum::<f64>() / 8.0;
        assert!(
            mean <= 0.035,
            "seed {seed}: |estimated − realised| on clean windows {clean:?}"
        );
        let relabelled = gaps("business as politics");
        assert!(relabelled.iter().all(|g| *g > 0.15), "seed {seed}: {relabelled:?}");
        assert!(
            detected("tech arrives").contains(&"embedding_mmd".into()),
            "seed {seed}"
        );
        // A few stories dominate each topic: the embeddings move; neither
        // the predicted topics nor the labelling do.
        let stories = detected("few stories");
        assert!(stories.contains(&"embedding_mmd".into()), "seed {seed}: {stories:?}");
        for other in ["predicted_topic_chi2", "error_rate"] {
            assert!(!stories.contains(&other.into()), "seed {seed}: {stories:?}");
        }
        assert!(
            detected("mostly sport").contains(&"predicted_topic_chi2".into()),
            "seed {seed}"
        );
        assert_eq!(detected("business as politics"), ["error_rate"], "seed {seed}");
    }
}
