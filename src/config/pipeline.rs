//! The pipeline file: one monitored model. Every field is documented here;
//! this is the reference for `pipelines/*.yaml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::{ConfigError, load_yaml};

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
    /// Where events come from.
    pub source: SourceConfig,
    /// Micro-batching of decoded events.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Optional SQL over each batch (table `events`) adding derived columns.
    #[serde(default)]
    pub transform: Option<TransformConfig>,
    /// Optional ONNX model whose outputs become columns.
    #[serde(default)]
    pub model: Option<ModelConfig>,
    /// Reference and current windows.
    pub window: WindowConfig,
    /// Drift detectors, each a query over the `windows` table.
    pub detectors: Vec<DetectorConfig>,
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
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// file: path of a `.jsonl` or `.parquet` file, relative to the pipeline file.
    #[serde(default)]
    pub path: Option<PathBuf>,
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
    /// Tensor column fed to the model (a `type: tensor` field or derived column).
    pub input: String,
    /// ONNX input name; default: the model's only input.
    #[serde(default)]
    pub input_name: Option<String>,
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
}

fn one() -> Positive {
    Positive(1)
}
fn default_model_batch() -> Positive {
    Positive(256)
}

/// Which ONNX outputs become which columns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOutputs {
    /// Output appended as column `embedding` (FixedSizeList<Float32>); default `embedding`.
    #[serde(default = "default_embedding")]
    pub embedding: Option<String>,
    /// Output appended as column `logits`, with `predicted_class` = argmax; default `logits`.
    #[serde(default = "default_logits")]
    pub logits: Option<String>,
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
    /// The current window.
    pub current: CurrentConfig,
}

/// Reference window: `{type: first, size: N}` or `{type: file, path: P}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "ReferenceSpec")]
pub enum ReferenceConfig {
    /// The first `size` events of each key after start.
    First { size: Positive },
    /// Events from a JSONL or Parquet file (decoded, transformed and scored like
    /// the stream), shared by all keys.
    File { path: PathBuf },
}

/// Reference kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceType {
    First,
    File,
}

/// The `reference:` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceSpec {
    /// `first` or `file`.
    #[serde(rename = "type")]
    pub kind: ReferenceType,
    /// first: number of events.
    #[serde(default)]
    pub size: Option<Positive>,
    /// file: path, relative to the pipeline file.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

impl TryFrom<ReferenceSpec> for ReferenceConfig {
    type Error = String;
    fn try_from(s: ReferenceSpec) -> Result<Self, String> {
        match s.kind {
            ReferenceType::First => {
                only("a `first` reference", &[("path", s.path.is_some())])?;
                Ok(ReferenceConfig::First {
                    size: s.size.ok_or("a `first` reference needs `size`")?,
                })
            }
            ReferenceType::File => {
                only("a `file` reference", &[("size", s.size.is_some())])?;
                Ok(ReferenceConfig::File {
                    path: s.path.ok_or("a `file` reference needs `path`")?,
                })
            }
        }
    }
}

/// Current window, count-based.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrentConfig {
    /// Events in the window.
    pub size: Positive,
    /// Events between evaluations (default: `size`, tumbling). Smaller than
    /// `size`: overlapping windows; larger: windows with untested gaps.
    #[serde(default)]
    pub slide: Option<Positive>,
}

/// A drift detector, built from its [`DetectorSpec`].
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "DetectorSpec")]
pub enum DetectorConfig {
    /// Two-sample Kolmogorov–Smirnov per numeric column.
    Ks(KsDetector),
    /// MMD² on a vector column (e.g. the CNN embedding).
    Mmd(MmdDetector),
    /// A query of your own over `windows`.
    Sql(SqlDetector),
}

/// Detector kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// Two-sample Kolmogorov–Smirnov per numeric column.
    Ks,
    /// MMD² on a vector column.
    Mmd,
    /// A query of your own over `windows`.
    Sql,
}

/// Multiple-testing correction across a detector's columns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// Each column tested at `alpha`.
    None,
    /// Each column tested at `alpha / columns` (family-wise error ≤ alpha).
    #[default]
    Bonferroni,
}

/// A `detectors:` item as written: one flat map, so every key is checked and
/// located by serde; the options that apply depend on `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSpec {
    /// Detector name, unique in the pipeline; appears in alerts.
    pub name: String,
    /// `ks`, `mmd` or `sql`.
    pub kind: DetectorKind,
    /// Significance level of the detector as a whole (default 0.01).
    #[serde(default)]
    pub alpha: Alpha,
    /// ks, sql: correction across columns, `none` or `bonferroni` (default).
    #[serde(default)]
    pub correction: Option<Correction>,
    /// ks: numeric columns to test.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// mmd: vector column (default `embedding`).
    #[serde(default)]
    pub column: Option<String>,
    /// mmd: permutations for the p-value (default 200; p ≥ 1/(permutations+1)).
    #[serde(default)]
    pub permutations: Option<Positive>,
    /// mmd: seed of the permutations (default 0).
    #[serde(default)]
    pub seed: Option<u64>,
    /// mmd: kernel bandwidth σ; default the median heuristic on the reference.
    #[serde(default)]
    pub sigma: Option<f64>,
    /// sql: a SELECT over `windows` returning an optional `key` column and one
    /// or more test-result columns (`ks_test(…)`, `mmd_test(…)`); GROUP BY key.
    #[serde(default)]
    pub sql: Option<String>,
    /// sql: kind of drift the query watches: covariate (default), label or concept.
    #[serde(default)]
    pub drift_type: Option<crate::alert::DriftType>,
}

impl TryFrom<DetectorSpec> for DetectorConfig {
    type Error = String;
    fn try_from(s: DetectorSpec) -> Result<Self, String> {
        let mmd_only = [
            ("column", s.column.is_some()),
            ("permutations", s.permutations.is_some()),
            ("seed", s.seed.is_some()),
            ("sigma", s.sigma.is_some()),
        ];
        match s.kind {
            DetectorKind::Ks => {
                only("kind ks", &mmd_only)?;
                only(
                    "kind ks",
                    &[("sql", s.sql.is_some()), ("drift_type", s.drift_type.is_some())],
                )?;
                let columns = s.columns.ok_or("kind ks needs `columns`")?;
                if columns.is_empty() {
                    return Err("`columns` needs at least one column".into());
                }
                Ok(DetectorConfig::Ks(KsDetector {
                    name: s.name,
                    columns,
                    alpha: s.alpha,
                    correction: s.correction.unwrap_or_default(),
                }))
            }
            DetectorKind::Mmd => {
                only(
                    "kind mmd",
                    &[
                        ("columns", s.columns.is_some()),
                        ("correction", s.correction.is_some()),
                        ("sql", s.sql.is_some()),
                        ("drift_type", s.drift_type.is_some()),
                    ],
                )?;
                if s.sigma.is_some_and(|v| !(v > 0.0 && v.is_finite())) {
                    return Err("`sigma` must be a positive number".into());
                }
                Ok(DetectorConfig::Mmd(MmdDetector {
                    name: s.name,
                    column: s.column.unwrap_or_else(|| "embedding".into()),
                    alpha: s.alpha,
                    permutations: s.permutations.unwrap_or(Positive(200)),
                    seed: s.seed.unwrap_or(0),
                    sigma: s.sigma,
                }))
            }
            DetectorKind::Sql => {
                only("kind sql", &mmd_only)?;
                only("kind sql", &[("columns", s.columns.is_some())])?;
                Ok(DetectorConfig::Sql(SqlDetector {
                    name: s.name,
                    sql: s.sql.ok_or("kind sql needs `sql`")?,
                    alpha: s.alpha,
                    correction: s.correction.unwrap_or_default(),
                    drift_type: s.drift_type,
                }))
            }
        }
    }
}

/// `kind: ks` (fields as in [`DetectorSpec`]).
#[derive(Debug, Clone)]
pub struct KsDetector {
    pub name: String,
    pub columns: Vec<String>,
    pub alpha: Alpha,
    pub correction: Correction,
}

/// `kind: mmd` (fields as in [`DetectorSpec`]).
#[derive(Debug, Clone)]
pub struct MmdDetector {
    pub name: String,
    pub column: String,
    pub alpha: Alpha,
    pub permutations: Positive,
    pub seed: u64,
    pub sigma: Option<f64>,
}

/// `kind: sql` (fields as in [`DetectorSpec`]).
#[derive(Debug, Clone)]
pub struct SqlDetector {
    pub name: String,
    pub sql: String,
    pub alpha: Alpha,
    pub correction: Correction,
    pub drift_type: Option<crate::alert::DriftType>,
}

impl DetectorConfig {
    pub fn name(&self) -> &str {
        match self {
            DetectorConfig::Ks(d) => &d.name,
            DetectorConfig::Mmd(d) => &d.name,
            DetectorConfig::Sql(d) => &d.name,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            DetectorConfig::Ks(_) => "ks",
            DetectorConfig::Mmd(_) => "mmd",
            DetectorConfig::Sql(_) => "sql",
        }
    }
    /// (alpha, correction) of the detector.
    pub fn alpha(&self) -> (f64, Correction) {
        match self {
            DetectorConfig::Ks(d) => (d.alpha.0, d.correction),
            DetectorConfig::Mmd(d) => (d.alpha.0, Correction::None),
            DetectorConfig::Sql(d) => (d.alpha.0, d.correction),
        }
    }
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
    /// librdkafka producer properties (default: the source's `properties`).
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
    /// schema, model or SQL engine (see `runtime::validate` for those).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut p: Pipeline = load_yaml(path)?;
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

    fn check(&self) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(self.err("name", "must be non-empty and use only letters, digits, '-', '_', '.'"));
        }
        if let SourceConfig::Kafka(k) = &self.source {
            if k.brokers.trim().is_empty() {
                return Err(self.err("source.brokers", "must not be empty"));
            }
            if k.topic.trim().is_empty() {
                return Err(self.err("source.topic", "must not be empty"));
            }
            if let Err(e) = k.start.timestamp_ms() {
                return Err(self.err("source.start", e));
            }
        }
        if self.detectors.is_empty() {
            return Err(self.err("detectors", "at least one detector is needed"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.detectors.iter().enumerate() {
            if !names.insert(d.name()) {
                return Err(self.err(
                    format!("detectors[{i}].name"),
                    format!("duplicate detector name `{}`", d.name()),
                ));
            }
        }
        Ok(())
    }
}
