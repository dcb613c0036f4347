//! The pipeline file: one monitored model. Every field is documented here;
//! this is the reference for `pipelines/*.yaml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::{ConfigError, parse_yaml};

/// A positive integer (≥ 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Positive(pub usize);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Positive;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a positive integer")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Positive, E> {
                if v == 0 {
                    Err(E::custom("expected a positive integer, got 0"))
                } else {
                    Ok(Positive(v as usize))
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Positive, E> {
                if v <= 0 {
                    Err(E::custom(format!("expected a positive integer, got {v}")))
                } else {
                    Ok(Positive(v as usize))
                }
            }
        }
        d.deserialize_u64(V)
    }
}

impl Positive {
    pub fn get(self) -> usize {
        self.0
    }
}

/// A significance level in (0, 1).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Alpha(pub f64);

impl<'de> Deserialize<'de> for Alpha {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if v > 0.0 && v < 1.0 {
            Ok(Alpha(v))
        } else {
            Err(serde::de::Error::custom(format!(
                "expected a probability strictly between 0 and 1, got {v}"
            )))
        }
    }
}

impl Default for Alpha {
    fn default() -> Self {
        Alpha(0.01)
    }
}

/// A whole pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Pipeline name: appears in alerts, alert ids and the default consumer group.
    pub name: String,
    /// Event schema file (`schemas/*.yaml`), relative to this pipeline file.
    pub schema: PathBuf,
    /// Where events come from. Needed by `run` and `replay` of a topic;
    /// `compare` and `replay --input` read files and do without.
    #[serde(default)]
    pub source: Option<SourceConfig>,
    /// Micro-batching of decoded events.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Optional SQL over each batch (table `events`) adding derived columns.
    #[serde(default)]
    pub transform: Option<TransformConfig>,
    /// Optional ONNX model whose outputs become columns.
    #[serde(default)]
    pub model: Option<ModelConfig>,
    /// Reference and current windows. Needed by `run`, `replay` and the
    /// demo; `compare` evaluates two whole files and does without.
    #[serde(default)]
    pub window: Option<WindowConfig>,
    /// Labels that arrive late on their own topic, joined to events by event id.
    #[serde(default)]
    pub labels: Option<LabelsConfig>,
    /// Drift detectors, each a query over the `windows` table.
    pub detectors: Vec<DetectorSpec>,
    /// False-alarm budget (`ert`), hysteresis and cooldown of alerts.
    #[serde(default)]
    pub alerting: AlertingConfig,
    /// Where alerts, statistics and dead letters go.
    #[serde(default)]
    pub output: OutputConfig,
    /// Directory of the pipeline file; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The pipeline file itself.
    #[serde(skip)]
    pub path: PathBuf,
}

/// Where events come from: `type: kafka` or `type: file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "SourceSpec")]
pub enum SourceConfig {
    /// A Kafka topic read in a consumer group.
    Kafka(KafkaSource),
    /// A JSONL (one event per line) or Parquet file, read once.
    File(FileSource),
}

/// Source kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceType {
    Kafka,
    File,
}

/// The `source:` section as written: one flat map, so that every key is
/// checked (and located) by serde; [`SourceConfig`] is built from it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `kafka` or `file`.
    #[serde(rename = "type")]
    pub kind: SourceType,
    /// kafka: bootstrap servers, `host:port[,host:port…]`.
    #[serde(default)]
    pub brokers: Option<String>,
    /// kafka: topic of the feature events.
    #[serde(default)]
    pub topic: Option<String>,
    /// kafka: consumer group id; default `driftwatch-<pipeline name>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// kafka: where to start, see [`StartPosition`] (default `committed`).
    #[serde(default)]
    pub start: StartPosition,
    /// kafka: librdkafka properties passed through verbatim (`security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password`, `ssl.ca.location`, …).
    /// Put secrets in the environment: `sasl.password: ${KAFKA_PASSWORD}`.
    /// Each client gets those that apply to it: consumer-only ones
    /// (`fetch.wait.max.ms`, …) not the producers, producer-only ones
    /// (`linger.ms`, …) not the consumers (`source::properties`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// kafka: a topic on the source's brokers where, after each batch whose
    /// evaluations were delivered, the consumer records per partition the
    /// last offset delivered; the next owner of a partition (after a restart
    /// or a rebalance) reads it and does not send those evaluations again.
    /// Default `driftwatch.checkpoints`, created (one partition, compacted)
    /// if missing; pipelines may share it. The offset-commit metadata holds
    /// the same mark, but a group that is rebalancing refuses commits and
    /// some brokers (tansu 0.6) drop the metadata. `null` keeps the mark in
    /// the commit metadata only. The marks outlive the group's offsets: to
    /// evaluate a topic afresh, use a new group id. It also holds each window
    /// key's state (last window start, evaluation count, alert-policy memory,
    /// `first` reference), which a restart restores so that it replays only
    /// the open windows; without it, a `first` reference keeps the commit at
    /// each key's first event.
    #[serde(default, deserialize_with = "explicit")]
    pub checkpoint_topic: Option<Option<String>>,
    /// file: path of a `.jsonl` or `.parquet` file, relative to the pipeline file.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// The default checkpoint topic (see [`SourceSpec::checkpoint_topic`]).
pub const DEFAULT_CHECKPOINT_TOPIC: &str = "driftwatch.checkpoints";

/// Tells a key written as `null` (`Some(None)`) from one left out (`None`).
fn explicit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `from`, `to` and `topic` are a `range` reference's alone.
fn no_range(kind: &str, s: &ReferenceSpec) -> Result<(), String> {
    only(
        kind,
        &[
            ("from", s.from.is_some()),
            ("to", s.to.is_some()),
            ("topic", s.topic.is_some()),
        ],
    )
}

fn only(kind: &str, present: &[(&str, bool)]) -> Result<(), String> {
    match present.iter().find(|(_, p)| *p) {
        Some((k, _)) => Err(format!("`{k}` does not apply to {kind}")),
        None => Ok(()),
    }
}

impl TryFrom<SourceSpec> for SourceConfig {
    type Error = String;
    fn try_from(s: SourceSpec) -> Result<Self, String> {
        match s.kind {
            SourceType::Kafka => {
                only("a kafka source", &[("path", s.path.is_some())])?;
                Ok(SourceConfig::Kafka(KafkaSource {
                    brokers: s.brokers.ok_or("a kafka source needs `brokers`")?,
                    topic: s.topic.ok_or("a kafka source needs `topic`")?,
                    group_id: s.group_id,
                    start: s.start,
                    properties: s.properties,
                    checkpoint_topic: s
                        .checkpoint_topic
                        .unwrap_or_else(|| Some(DEFAULT_CHECKPOINT_TOPIC.into())),
                }))
            }
            SourceType::File => {
                only(
                    "a file source",
                    &[
                        ("brokers", s.brokers.is_some()),
                        ("topic", s.topic.is_some()),
                        ("group_id", s.group_id.is_some()),
                        ("properties", !s.properties.is_empty()),
                        ("checkpoint_topic", s.checkpoint_topic.is_some()),
                    ],
                )?;
                Ok(SourceConfig::File(FileSource {
                    path: s.path.ok_or("a file source needs `path`")?,
                }))
            }
        }
    }
}

/// Kafka source options (see [`SourceSpec`] for each).
#[derive(Debug, Clone)]
pub struct KafkaSource {
    pub brokers: String,
    pub topic: String,
    pub group_id: Option<String>,
    pub start: StartPosition,
    pub properties: BTreeMap<String, String>,
    pub checkpoint_topic: Option<String>,
}

/// Start position of a Kafka source: `committed`, `earliest`, `latest`,
/// `{timestamp: RFC3339}` or `{timestamp_ms: N}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum StartPosition {
    /// The group's committed offsets; earliest where there are none.
    #[default]
    Committed,
    /// The beginning of each partition, whatever was committed.
    Earliest,
    /// Only events produced after start.
    Latest,
    /// The first event at or after this time (RFC 3339, e.g. `2026-11-01T00:00:00Z`).
    Timestamp(String),
    /// The first event at or after this time, epoch milliseconds.
    TimestampMs(i64),
}

impl<'de> Deserialize<'de> for StartPosition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StartPosition;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("committed, earliest, latest, {timestamp: RFC3339} or {timestamp_ms: N}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StartPosition, E> {
                match v {
                    "committed" => Ok(StartPosition::Committed),
                    "earliest" => Ok(StartPosition::Earliest),
                    "latest" => Ok(StartPosition::Latest),
                    _ => Err(E::custom(format!(
                        "unknown start `{v}`, expected committed, earliest, latest, {{timestamp: RFC3339}} or {{timestamp_ms: N}}"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<StartPosition, A::Error> {
                let key: String = m
                    .next_key()?
                    .ok_or_else(|| serde::de::Error::custom("empty start position"))?;
                let v = match key.as_str() {
                    "timestamp" => StartPosition::Timestamp(m.next_value()?),
                    "timestamp_ms" => StartPosition::TimestampMs(m.next_value()?),
                    k => return Err(serde::de::Error::unknown_field(k, &["timestamp", "timestamp_ms"])),
                };
                if m.next_key::<String>()?.is_some() {
                    return Err(serde::de::Error::custom("give one of timestamp or timestamp_ms"));
                }
                Ok(v)
            }
        }
        d.deserialize_any(V)
    }
}

impl StartPosition {
    /// Epoch ms for timestamp positions.
    pub fn timestamp_ms(&self) -> Result<Option<i64>, String> {
        match self {
            StartPosition::Timestamp(s) => humantime::parse_rfc3339_weak(s)
                .map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))
                .map(|t| {
                    Some(
                        t.duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis() as i64)
                            .unwrap_or(0),
                    )
                }),
            StartPosition::TimestampMs(ms) => Ok(Some(*ms)),
            _ => Ok(None),
        }
    }
}

/// File source options.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// Path of a `.jsonl` or `.parquet` file, relative to the pipeline file.
    pub path: PathBuf,
}

/// Micro-batching: a batch is flushed when it holds `max_events` or when
/// `linger_ms` has passed since its first event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Maximum events per batch (default 1024).
    #[serde(default = "default_max_events")]
    pub max_events: Positive,
    /// Maximum wait for a batch to fill, in milliseconds (default 100).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Events larger than this many bytes go to the dead-letter topic (default 1 MiB).
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: Positive,
}

fn default_max_events() -> Positive {
    Positive(1024)
}
fn default_linger_ms() -> u64 {
    100
}
fn default_max_event_bytes() -> Positive {
    Positive(1 << 20)
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: default_max_events(),
            linger_ms: default_linger_ms(),
            max_event_bytes: default_max_event_bytes(),
        }
    }
}

/// SQL transform over each batch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// One SELECT over the table `events` (e.g. `SELECT *, a / b AS ratio FROM events`).
    /// It must keep the source columns `_partition`, `_offset`, `_timestamp` (use `*`).
    pub sql: String,
}

/// The ONNX model stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Path of the `.onnx` file, relative to the pipeline file.
    pub path: PathBuf,
    /// What the model is fed: a column name — a float tensor column (a
    /// `type: tensor` field or a derived column), or, with `tokenizer`, a
    /// text column (short for `{type: text, column: NAME}`) — or a kind of
    /// input with its options, such as table
    /// columns as a scikit-learn model exported by skl2onnx takes them:
    /// `{type: columns, columns: [a, b, …]}` (one ONNX input per column,
    /// named like it, `[batch, 1]`) or `{type: matrix, columns: [a, b, …]}`
    /// (one float32 input `[batch, columns]`). See [`ModelInputConfig`].
    pub input: ModelInputConfig,
    /// ONNX input name of a tensor or matrix input; default: the model's only input.
    #[serde(default)]
    pub input_name: Option<String>,
    /// Makes `input` a text column, tokenized for a transformer model.
    #[serde(default)]
    pub tokenizer: Option<TokenizerConfig>,
    /// How an embedding output per token (`[batch, tokens, hidden]`, such as
    /// a transformer's `last_hidden_state`) becomes one vector per event:
    /// `mean` (default; the mean over the tokens the attention mask keeps,
    /// as sentence-transformers) or `first` (the first token, BERT's CLS).
    /// An output that is already one vector per event is used as it is.
    #[serde(default)]
    pub pooling: Pooling,
    /// L2-normalise the embedding (default false; sentence-transformers
    /// models such as all-MiniLM-L6-v2 end with this step).
    #[serde(default)]
    pub normalize: bool,
    /// A second, small model fed the (pooled) embedding, whose output
    /// becomes `logits` and `predicted_class`: a classifier head trained on
    /// the embeddings of a model that has none.
    #[serde(default)]
    pub head: Option<HeadConfig>,
    /// Per-event input shape, without the batch dimension (default: the
    /// schema field's shape). The model is fed `[batch, ...shape]`.
    #[serde(default)]
    pub shape: Option<Vec<usize>>,
    /// ONNX output names to keep.
    #[serde(default)]
    pub outputs: ModelOutputs,
    /// Intra-op threads of ONNX Runtime (default 1).
    #[serde(default = "one")]
    pub threads: Positive,
    /// Rows per inference call (default 256).
    #[serde(default = "default_model_batch")]
    pub batch_size: Positive,
    /// Score only a share of the events, when the model is slower than the
    /// topic: `{fraction: 0.1}` scores one event in ten, `{max_rate: 500}`
    /// at most about 500 events a second of event time per partition. The
    /// events are chosen by a hash of their event id (the schema must name
    /// `event_id`), so every replay and restart scores the same ones. The
    /// others keep null model outputs: detectors on the outputs (embedding,
    /// predicted class, probabilities) see the scored events only, those on
    /// the event's fields see all. Alerts carry the rule (`model.sample` or
    /// `model.max_rate`) and how many events of the current window were
    /// scored (`window.current_scored`). Default: every event.
    #[serde(default)]
    pub sample: Option<SampleConfig>,
}

/// `model.sample`: one of `fraction` and `max_rate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Share of events scored, in (0, 1].
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Events scored per second of event time, at most, in each partition
    /// of the source (a file is one partition; give the model's rate × the
    /// instances ÷ the partitions). A partition's offsets are cut into
    /// blocks of `rate_block`; each block scores the share `max_rate ×
    /// span ÷ count` of the block before (its events' count and event-time
    /// span), at most all, and a partition's first block read scores all.
    /// A restart reads one block more than the windows need, to measure it.
    #[serde(default)]
    pub max_rate: Option<f64>,
    /// Offsets per rate block of `max_rate` (default 10,000): larger is
    /// steadier, smaller follows a changing rate sooner.
    #[serde(default)]
    pub rate_block: Option<Positive>,
}

impl SampleConfig {
    /// Offsets per rate block of `max_rate`.
    pub fn rate_block(&self) -> usize {
        self.rate_block.map_or(10_000, |b| b.get())
    }
}

/// `model.input`: a column name, or a map `{type: KIND, …}` whose kind is
/// registered in `model::input::KINDS` and whose other keys are that kind's
/// own options (checked by the kind; `driftwatch` documents them on the
/// kind's options struct in `src/model/input/`).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelInputConfig {
    /// One column: a float tensor column, or (with `model.tokenizer`) a text column.
    Column(String),
    /// A registered kind (`type`) and its options as written.
    Tagged {
        kind: String,
        options: serde_json::Map<String, serde_json::Value>,
    },
}

impl ModelInputConfig {
    /// The column of a one-column input.
    pub fn column(&self) -> Option<&str> {
        match self {
            ModelInputConfig::Column(c) => Some(c),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for ModelInputConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ModelInputConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a column name or {type: KIND, ...} (e.g. {type: columns, columns: [...]})")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ModelInputConfig, E> {
                Ok(ModelInputConfig::Column(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<ModelInputConfig, A::Error> {
                let mut options = serde_json::Map::<String, serde_json::Value>::deserialize(
                    serde::de::value::MapAccessDeserializer::new(m),
                )?;
                let kind = match options.remove("type") {
                    Some(serde_json::Value::String(k)) => k,
                    _ => {
                        return Err(serde::de::Error::custom(
                            "a model input map needs `type`, the input's kind",
                        ));
                    }
                };
                Ok(ModelInputConfig::Tagged { kind, options })
            }
        }
        d.deserialize_any(V)
    }
}

/// A Hugging Face tokenizer for a text `input`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// Path of the `tokenizer.json`, relative to the pipeline file.
    pub path: PathBuf,
    /// Tokens per text, special tokens included; longer texts are truncated
    /// (never rejected). Default 128. Sequences are padded to the longest of
    /// their inference batch, whatever padding the tokenizer file asks for.
    #[serde(default = "default_max_tokens")]
    pub max_length: Positive,
    /// ONNX input of the token ids; default `input_ids`.
    #[serde(default)]
    pub input_ids: Option<String>,
    /// ONNX input of the attention mask; default `attention_mask` if the model has it.
    #[serde(default)]
    pub attention_mask: Option<String>,
    /// ONNX input of the token type ids; default `token_type_ids` if the model has it.
    #[serde(default)]
    pub token_type_ids: Option<String>,
}

fn default_max_tokens() -> Positive {
    Positive(128)
}

/// How a per-token output becomes one vector per event (see `model.pooling`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps (all, without a mask).
    #[default]
    Mean,
    /// The first token.
    First,
}

/// A classifier head: an ONNX model from the embedding to class scores.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// Path of the `.onnx` file, relative to the pipeline file. Its one
    /// input is fed `[batch, embedding size]` float32.
    pub path: PathBuf,
    /// Its output that becomes `logits`; default: its only output.
    #[serde(default)]
    pub output: Option<String>,
}

fn one() -> Positive {
    Positive(1)
}
fn default_model_batch() -> Positive {
    Positive(256)
}

/// Which ONNX outputs become which columns (`null` for none).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOutputs {
    /// Output appended as column `embedding` (FixedSizeList<Float32>); default `embedding`.
    #[serde(default = "default_embedding")]
    pub embedding: Option<String>,
    /// Output appended as column `logits`, with `predicted_class` = argmax; default `logits`.
    #[serde(default = "default_logits")]
    pub logits: Option<String>,
    /// Output of class probabilities `[batch, classes]` appended as column
    /// `probabilities` (skl2onnx: `probabilities`, exported with
    /// `options={'zipmap': False}`), with `predicted_class` = argmax unless
    /// `label` is given; default none.
    #[serde(default)]
    pub probabilities: Option<String>,
    /// Int64 output of the predicted class, `[batch]` (skl2onnx: `label`),
    /// appended as `predicted_class`; default none.
    #[serde(default)]
    pub label: Option<String>,
}

fn default_embedding() -> Option<String> {
    Some("embedding".into())
}
fn default_logits() -> Option<String> {
    Some("logits".into())
}

impl Default for ModelOutputs {
    fn default() -> Self {
        Self {
            embedding: default_embedding(),
            logits: default_logits(),
            probabilities: None,
            label: None,
        }
    }
}

/// Windows: one reference and one sliding current window per key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Column keying the windows (e.g. `scanner`); default: the schema's `key`,
    /// or one window for all events.
    #[serde(default)]
    pub key: Option<String>,
    /// The reference window.
    pub reference: ReferenceConfig,
    /// The current window: `{size: N, slide: M}` (events) or
    /// `{duration: 1h, slide: 15m}` (event time).
    pub current: CurrentConfig,
    /// Event-time windows only: how far behind the newest event time of
    /// its partition an event may be and still count (default `0s`: events
    /// must come in time order per partition). Later ones are late: counted
    /// (`window.late_events` of the next evaluation of their key, and the
    /// metric), never added. A key's windows close once every partition the
    /// key was seen in has passed their end by this much.
    #[serde(default, with = "humantime_serde_opt")]
    pub allowed_lateness: Option<std::time::Duration>,
    /// Event-time windows only: windows of any size in bounded memory. Each
    /// window (and a `first`, `file` or `range` reference) keeps for the
    /// tests of raw values (ks, mmd, distances, out_of_range, cbpe, sql
    /// detectors reading `_counted IS NULL`) a sample of at most this many
    /// events, chosen by a seeded hash of the event id (the schema's
    /// `event_id`, else partition and offset): the same sample in a run,
    /// its replay and after a restart. The categorical tests (chi2,
    /// label_shift, error_rate, missing_share, unseen_categories,
    /// dead_letter_rate) still count every event exactly. Alerts and stats
    /// give each window's events (`reference_size`, `current_size`) and
    /// sample (`reference_sample`, `current_sample`). Default: no sampling,
    /// windows hold every event.
    #[serde(default)]
    pub max_sample: Option<Positive>,
    /// Seed of the sample's hash (default 0): another seed, another sample.
    #[serde(default)]
    pub sample_seed: Option<u64>,
}

/// An optional `humantime` duration (`0s`, `90s`, `15m`) in YAML.
mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::time::Duration>, D::Error> {
        // Zero is a lateness (the default); window lengths are checked apart.
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(s.trim())
                .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration such as 0s, 90s or 5m: {e}")))
        })
        .transpose()
    }
}

/// A duration as written (`90s`, `15m`, `1h`, `7d`): positive, whole milliseconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration such as 90s, 15m, 1h or 7d: {e}"))?;
    if d.as_millis() == 0 {
        return Err(format!("`{s}`: a duration must be at least 1ms"));
    }
    Ok(d)
}

/// Reference window: `{type: first, size: N}`, `{type: file, path: P}`,
/// `{type: range, from: T, to: T}` or (event-time windows) `{type: previous}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "ReferenceSpec")]
pub enum ReferenceConfig {
    /// The first `size` events of each key after start.
    First { size: Positive },
    /// Event-time windows: each key's events from its first event's time
    /// for `duration` (`{type: first, duration: 7d}`: its first week).
    FirstFor { duration_ms: u64 },
    /// Events from a JSONL or Parquet file (decoded, transformed and scored like
    /// the stream), shared by all keys.
    File { path: PathBuf },
    /// Event-time windows: the window of the same duration just before the
    /// current one ("this hour against the last"). A window with nothing
    /// before it is not evaluated.
    Previous,
    /// A fixed time range of a Kafka topic (`{type: range, from: 2026-11-02T00:00:00Z,
    /// to: 2026-11-09T00:00:00Z}`: the training week), read once at each
    /// start on the source's brokers, by the records' timestamps as
    /// `replay --from/--to` reads them: `[from, to)`, canonical order.
    /// Decoded, transformed and scored like the stream, and shared by all
    /// keys, as a file reference is. `topic` defaults to the source's. The
    /// range must still be in the topic at every start (retention): copy
    /// it to a file reference otherwise.
    Range {
        topic: Option<String>,
        from_ms: i64,
        to_ms: i64,
    },
}

/// Reference kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceType {
    First,
    File,
    Previous,
    Range,
}

/// The `reference:` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceSpec {
    /// `first`, `file`, `range` or `previous`.
    #[serde(rename = "type")]
    pub kind: ReferenceType,
    /// first: number of events.
    #[serde(default)]
    pub size: Option<Positive>,
    /// first, with event-time windows: how much event time, from each
    /// key's first event (`7d`, `1h`); instead of `size`.
    #[serde(default)]
    pub duration: Option<String>,
    /// file: path, relative to the pipeline file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// range: first time included (RFC 3339, or epoch ms).
    #[serde(default)]
    pub from: Option<TimePoint>,
    /// range: first time not included (RFC 3339, or epoch ms).
    #[serde(default)]
    pub to: Option<TimePoint>,
    /// range: the topic read (default: the source's).
    #[serde(default)]
    pub topic: Option<String>,
}

/// A point in time as written: RFC 3339 text or epoch milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TimePoint {
    Ms(i64),
    Text(String),
}

impl TimePoint {
    /// Epoch milliseconds.
    pub fn ms(&self) -> Result<i64, String> {
        match self {
            TimePoint::Ms(ms) => Ok(*ms),
            TimePoint::Text(t) => humantime::parse_rfc3339_weak(t)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64)
                .ok_or_else(|| format!("`{t}` is neither epoch ms nor an RFC 3339 time such as 2026-11-02T00:00:00Z")),
        }
    }
}

impl TryFrom<ReferenceSpec> for ReferenceConfig {
    type Error = String;
    fn try_from(s: ReferenceSpec) -> Result<Self, String> {
        match s.kind {
            ReferenceType::First => first_reference(s),
            ReferenceType::File => {
                only(
                    "a `file` reference",
                    &[("size", s.size.is_some()), ("duration", s.duration.is_some())],
                )?;
                no_range("a `file` reference", &s)?;
                Ok(ReferenceConfig::File {
                    path: s.path.ok_or("a `file` reference needs `path`")?,
                })
            }
            ReferenceType::Previous => {
                only(
                    "a `previous` reference",
                    &[
                        ("size", s.size.is_some()),
                        ("path", s.path.is_some()),
                        ("duration", s.duration.is_some()),
                    ],
                )?;
                no_range("a `previous` reference", &s)?;
                Ok(ReferenceConfig::Previous)
            }
            ReferenceType::Range => range_reference(s),
        }
    }
}

/// A `first` reference: the first `size` events, or those of the first
/// `duration` of event time.
fn first_reference(s: ReferenceSpec) -> Result<ReferenceConfig, String> {
    only("a `first` reference", &[("path", s.path.is_some())])?;
    no_range("a `first` reference", &s)?;
    match (s.size, s.duration) {
        (Some(size), None) => Ok(ReferenceConfig::First { size }),
        (None, Some(d)) => Ok(ReferenceConfig::FirstFor {
            duration_ms: parse_duration(&d)?.as_millis() as u64,
        }),
        (Some(_), Some(_)) => Err("a `first` reference takes `size` or `duration`, not both".into()),
        (None, None) => Err("a `first` reference needs `size` (events) or `duration` (event time)".into()),
    }
}

/// A `range` reference: the events of a span of event time (`from`, `to`).
fn range_reference(s: ReferenceSpec) -> Result<ReferenceConfig, String> {
    only(
        "a `range` reference",
        &[
            ("size", s.size.is_some()),
            ("path", s.path.is_some()),
            ("duration", s.duration.is_some()),
        ],
    )?;
    let (Some(from), Some(to)) = (&s.from, &s.to) else {
        return Err("a `range` reference needs `from` and `to` (RFC 3339 times or epoch ms)".into());
    };
    let (from_ms, to_ms) = (from.ms()?, to.ms()?);
    if from_ms >= to_ms {
        return Err(format!(
            "a `range` reference's `from` ({from_ms} ms) must be before its `to` ({to_ms} ms)"
        ));
    }
    Ok(ReferenceConfig::Range {
        topic: s.topic,
        from_ms,
        to_ms,
    })
}

/// The current window: by count (`size`, `slide` in events) or by event
/// time (`duration`, `slide` as durations).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "CurrentSpec")]
pub enum CurrentConfig {
    /// The last `size` events of the key, evaluated every `slide` events.
    Count { size: Positive, slide: Positive },
    /// Windows `[start, start + duration)` of event time, starting at every
    /// multiple of `slide` since the Unix epoch (UTC): tumbling when `slide`
    /// = `duration` (hourly windows start on the hour), overlapping when
    /// smaller. Each closes when the watermark passes its end (see
    /// `allowed_lateness`); one with no event is not evaluated.
    Time { duration_ms: u64, slide_ms: u64 },
}

/// The `current:` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrentSpec {
    /// Count windows: events in the window.
    #[serde(default)]
    size: Option<Positive>,
    /// Event-time windows: the window's length (`1h`, `15m`, `1d`).
    #[serde(default)]
    duration: Option<String>,
    /// Count windows: events between evaluations (default: `size`,
    /// tumbling; smaller: overlapping windows; larger: untested gaps).
    /// Event-time windows: time between window starts (default:
    /// `duration`), e.g. `15m`.
    #[serde(default)]
    slide: Option<serde_norway::Value>,
}

impl TryFrom<CurrentSpec> for CurrentConfig {
    type Error = String;
    fn try_from(s: CurrentSpec) -> Result<Self, String> {
        match (s.size, s.duration) {
            (Some(_), Some(_)) => Err("give `size` (events) or `duration` (event time), not both".into()),
            (None, None) => Err("the current window needs `size` (events) or `duration` (event time)".into()),
            (Some(size), None) => {
                let slide = match s.slide {
                    None => size,
                    Some(v) => serde_norway::from_value::<Positive>(v)
                        .map_err(|_| "`slide` of a count window is a number of events ≥ 1".to_string())?,
                };
                Ok(CurrentConfig::Count { size, slide })
            }
            (None, Some(d)) => {
                let duration = parse_duration(&d)?;
                let slide = match s.slide {
                    None => duration,
                    Some(serde_norway::Value::String(v)) => parse_duration(&v)?,
                    Some(_) => return Err("`slide` of an event-time window is a duration such as 15m".into()),
                };
                Ok(CurrentConfig::Time {
                    duration_ms: duration.as_millis() as u64,
                    slide_ms: slide.as_millis() as u64,
                })
            }
        }
    }
}

/// A `detectors:` item as written: its `name` and `kind`, and the kind's
/// options, which `detect::kinds` checks and builds (each kind declares and
/// documents its own: `driftwatch kinds` lists them).
#[derive(Debug, Clone, Deserialize)]
pub struct DetectorSpec {
    /// Detector name, unique in the pipeline; appears in alerts.
    pub name: String,
    /// The detector kind: one of `detect::kinds::KINDS` (`driftwatch kinds`
    /// lists them with their options).
    pub kind: String,
    /// The options of the kind (see its file in `src/detect/kinds/`).
    #[serde(flatten)]
    pub options: serde_norway::Mapping,
}

/// Names of the columns the model stage appends.
/// Panes a sampled window may be made of (see `window.max_sample`).
const MAX_PANES: u64 = 1000;

pub const EMBEDDING_COL: &str = "embedding";
pub const LOGITS_COL: &str = "logits";
pub const PREDICTED_CLASS_COL: &str = "predicted_class";
pub const PROBABILITIES_COL: &str = "probabilities";

/// Late labels: records `{"event_id": …, "label": …, "ts": …}` on their own
/// topic (same brokers and properties as the source), joined to events by
/// event id. A label joins when its `ts` (event time of the label, epoch ms or
/// RFC 3339; the message timestamp when absent) is at most `horizon_ms` after
/// its event's event time; later labels are counted, not kept, and events
/// whose label has not come within the horizon count as unlabelled. Joined
/// events form their own windows (same `window` settings: the first labelled
/// events are the reference, the last ones the current window), on which the
/// `error_rate` and `label_shift` detectors run; the other detectors run on
/// every event. Memory is bounded by `max_pending`.
///
/// The labels topic must be partitioned like the events topic: as many
/// partitions, each label produced with its event's key (so it lands in the
/// partition numbered like its event's, as for a Kafka Streams join). An
/// instance reads the labels partitions numbered like the events partitions
/// it holds and, on each rebalance, rebuilds its labelled windows and the
/// join from the committed offsets of both; so several instances in one
/// group split the labels as they split the events. One instance holding
/// every events partition reads every labels partition, whatever the counts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsConfig {
    /// Topic of label records.
    pub topic: String,
    /// How long after its event (event time, ms) a label may arrive and still join.
    pub horizon_ms: Positive,
    /// Events waiting for a label, plus labels waiting for their event, at
    /// most (default 100000); beyond it the oldest are dropped and counted.
    #[serde(default = "default_max_pending")]
    pub max_pending: Positive,
    /// Consumer group whose committed offsets record how far the labels were
    /// read (default: the pipeline's group + `-labels`). The labels reader
    /// does not join it: it follows the events partitions (see above).
    #[serde(default)]
    pub group_id: Option<String>,
}

fn default_max_pending() -> Positive {
    Positive(100_000)
}

/// When evaluations become alerts: the false-alarm budget and alert shaping.
///
/// Sliding windows test overlapping data again and again, so a per-test α of
/// 0.05 would mean false alarms all day. With `ert` the pipeline states the
/// expected number of evaluations between false alarms (per key), and the
/// per-evaluation budget α = 1/ert is split evenly (Bonferroni) across the
/// detectors that give p-values; each detector splits its share across its
/// columns by its `correction`. Under no drift each detector's p-values are
/// uniform, so the chance that any detector fires on an evaluation is at most
/// 1/ert, and the mean run between false alarms is at least `ert`
/// evaluations. Distance detectors have thresholds, not p-values, and are not
/// part of this budget.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// Expected run time between false alarms, in evaluations per key
    /// (e.g. 1000). Replaces the detectors' `alpha`, which must then be left out.
    #[serde(default)]
    pub ert: Option<Positive>,
    /// Alert only when at least `k` of the last `m` evaluations of a detector
    /// (same key) drifted. Default: every drifting evaluation alerts.
    #[serde(default)]
    pub hysteresis: Option<Hysteresis>,
    /// After an alert, this many further evaluations of the same detector and
    /// key do not alert (default 0).
    #[serde(default)]
    pub cooldown: usize,
}

/// `k` of the last `m` evaluations.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Hysteresis {
    /// Drifting evaluations needed (1 ≤ k ≤ m).
    pub k: Positive,
    /// Evaluations looked at, the current one included.
    pub m: Positive,
}

/// Outputs. Kafka topics are written on the source's brokers unless `brokers` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Brokers for the output topics (default: the source's).
    #[serde(default)]
    pub brokers: Option<String>,
    /// Topic of drift alerts (default `driftwatch.alerts`).
    #[serde(default = "default_alerts_topic")]
    pub alerts_topic: String,
    /// Topic receiving every evaluation, drift or not (default: none).
    #[serde(default)]
    pub stats_topic: Option<String>,
    /// Topic of events that could not be decoded (default `driftwatch.dead-letters`).
    #[serde(default = "default_dlq_topic")]
    pub dead_letter_topic: String,
    /// librdkafka producer properties (default: the source's `properties`,
    /// less those only consumers read).
    #[serde(default)]
    pub properties: Option<BTreeMap<String, String>>,
}

fn default_alerts_topic() -> String {
    "driftwatch.alerts".into()
}
fn default_dlq_topic() -> String {
    "driftwatch.dead-letters".into()
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            alerts_topic: default_alerts_topic(),
            stats_topic: None,
            dead_letter_topic: default_dlq_topic(),
            properties: None,
        }
    }
}

impl Pipeline {
    /// Loads a pipeline file and checks what can be checked without the
    /// schema, model or SQL engine (see `runtime::validate` for those; the
    /// detectors' options are checked by `detect::kinds::build`).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.into(),
            source,
        })?;
        Self::parse(path, &raw)
    }

    /// As [`Pipeline::load`], on text already read: `path` names it in
    /// errors, and relative paths in it are resolved from its folder.
    pub fn parse(path: &Path, raw: &str) -> Result<Self, ConfigError> {
        let mut p: Pipeline = parse_yaml(path, raw)?;
        p.path = path.to_path_buf();
        p.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        p.check()?;
        Ok(p)
    }

    /// Resolves a path relative to the pipeline file.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn err(&self, key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
        ConfigError::invalid(&self.path, key, msg)
    }

    /// The `window` section, or an error saying who needs it.
    pub fn window(&self) -> Result<&WindowConfig, ConfigError> {
        self.window.as_ref().ok_or_else(|| {
            self.err(
                "window",
                "this pipeline has no `window` section: `run`, `replay` and the demo need one (only `compare` does without)",
            )
        })
    }

    /// The Kafka source, or an error naming the command (`what`) that needs it.
    pub fn kafka_source(&self, what: &str) -> Result<&KafkaSource, ConfigError> {
        match &self.source {
            Some(SourceConfig::Kafka(k)) => Ok(k),
            _ => Err(self.err(
                "source",
                format!("{what} needs a kafka source (`source: {{type: kafka, …}}`)"),
            )),
        }
    }

    /// What applies to count windows only, or to event-time windows only.
    fn check_window(&self, w: &WindowConfig) -> Result<(), ConfigError> {
        let timed = matches!(w.current, CurrentConfig::Time { .. });
        if matches!(w.reference, ReferenceConfig::Range { .. }) && !matches!(self.source, Some(SourceConfig::Kafka(_)))
        {
            let m = "a `range` reference reads a Kafka topic on the source's brokers: it needs a kafka source (use a `file` reference with files)";
            return Err(self.err("window.reference", m));
        }
        if matches!(w.reference, ReferenceConfig::Range { .. }) && self.labels.is_some() {
            // Its events' labels are on the labels topic, which nothing joins to them.
            let m = "a `range` reference with a `labels` topic is not supported: the range's labels would have to be joined from the labels topic; use a `first` reference, or a `file` reference with labels inline";
            return Err(self.err("window.reference", m));
        }
        if !timed && matches!(w.reference, ReferenceConfig::Previous) {
            let m = "a `previous` reference needs event-time windows (`current: {duration: 1h}`)";
            return Err(self.err("window.reference", m));
        }
        if !timed && matches!(w.reference, ReferenceConfig::FirstFor { .. }) {
            let m = "a `first` reference by `duration` needs event-time windows; count windows take `size`";
            return Err(self.err("window.reference", m));
        }
        if !timed && w.allowed_lateness.is_some() {
            let m = "`allowed_lateness` applies to event-time windows (`current: {duration: …}`)";
            return Err(self.err("window.allowed_lateness", m));
        }
        self.check_sampling(w)
    }

    /// `max_sample` and `sample_seed`.
    fn check_sampling(&self, w: &WindowConfig) -> Result<(), ConfigError> {
        if w.sample_seed.is_some() && w.max_sample.is_none() {
            return Err(self.err(
                "window.sample_seed",
                "`sample_seed` seeds `max_sample`'s sample; give `max_sample` too",
            ));
        }
        let Some(max) = w.max_sample else { return Ok(()) };
        let CurrentConfig::Time { duration_ms, slide_ms } = w.current else {
            let m = "`max_sample` applies to event-time windows (`current: {duration: …}`): a count window holds `size` events, so make `size` smaller instead";
            return Err(self.err("window.max_sample", m));
        };
        if max.get() < 2 {
            return Err(self.err("window.max_sample", "a sample needs at least 2 events"));
        }
        // A window is a union of panes of gcd(duration, slide), each held apart.
        let panes = duration_ms / crate::window::sample::pane_width(duration_ms as i64, slide_ms as i64) as u64;
        if panes > MAX_PANES {
            let m = format!(
                "with `max_sample`, a window is held as {panes} panes of gcd(duration, slide) (at most {MAX_PANES}): choose a slide that divides the duration (e.g. 1h sliding by 15m)"
            );
            return Err(self.err("window.current", &m));
        }
        Ok(())
    }

    /// `model.sample`: one rule, `rate_block` only with `max_rate`.
    fn check_model_sample(&self, s: &SampleConfig) -> Result<(), ConfigError> {
        match (s.fraction, s.max_rate) {
            (Some(_), Some(_)) => Err(self.err("model.sample", "give `fraction` or `max_rate`, not both")),
            (None, None) => Err(self.err(
                "model.sample",
                "give `fraction` (a share of events) or `max_rate` (events a second per partition)",
            )),
            (Some(_), None) if s.rate_block.is_some() => Err(self.err(
                "model.sample.rate_block",
                "`rate_block` measures the rate of `max_rate`; a `fraction` needs none",
            )),
            (None, Some(r)) if !(r > 0.0 && r.is_finite()) => Err(self.err(
                "model.sample.max_rate",
                format!("must be a positive number of events a second, got {r}"),
            )),
            (None, Some(_)) if s.rate_block() < 2 => {
                Err(self.err("model.sample.rate_block", "a rate block needs at least 2 offsets"))
            }
            _ => Ok(()),
        }
    }

    /// A Kafka source's brokers, topic, start and checkpoint topic (one of
    /// its own).
    fn check_kafka_source(&self, k: &KafkaSource) -> Result<(), ConfigError> {
        if k.brokers.trim().is_empty() {
            return Err(self.err("source.brokers", "must not be empty"));
        }
        if k.topic.trim().is_empty() {
            return Err(self.err("source.topic", "must not be empty"));
        }
        if let Err(e) = k.start.timestamp_ms() {
            return Err(self.err("source.start", e));
        }
        if let Some(c) = &k.checkpoint_topic {
            let outputs = [
                Some(&self.output.alerts_topic),
                self.output.stats_topic.as_ref(),
                Some(&self.output.dead_letter_topic),
            ];
            if c.trim().is_empty() {
                return Err(self.err("source.checkpoint_topic", "must not be empty"));
            }
            if *c == k.topic || outputs.contains(&Some(c)) {
                return Err(self.err(
                    "source.checkpoint_topic",
                    format!("`{c}` is already the source or an output topic; checkpoints need a topic of their own"),
                ));
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        if let Some(h) = self.alerting.hysteresis
            && h.k > h.m
        {
            return Err(self.err("alerting.hysteresis.k", format!("k = {} exceeds m = {}", h.k.0, h.m.0)));
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(self.err("name", "must be non-empty and use only letters, digits, '-', '_', '.'"));
        }
        if let Some(SourceConfig::Kafka(k)) = &self.source {
            self.check_kafka_source(k)?;
        }
        if let Some(w) = &self.window {
            self.check_window(w)?;
        }
        if let Some(s) = self.model.as_ref().and_then(|m| m.sample.as_ref()) {
            self.check_model_sample(s)?;
        }
        if self.detectors.is_empty() {
            return Err(self.err("detectors", "at least one detector is needed"));
        }
        if let Some(l) = &self.labels {
            if l.topic.trim().is_empty() {
                return Err(self.err("labels.topic", "must not be empty"));
            }
            if matches!(self.source, Some(SourceConfig::File(_))) {
                return Err(self.err("labels", "a labels topic needs a kafka source"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.detectors.iter().enumerate() {
            if !names.insert(d.name.as_str()) {
                return Err(self.err(
                    format!("detectors[{i}].name"),
                    format!("duplicate detector name `{}`", d.name),
                ));
            }
        }
        Ok(())
    }
}
