//! Drift scenarios: seeded streams of digit events in phases, for the demo,
//! tests and backtests (`driftwatch produce`).
//!
//! A scenario (`pipelines/scenarios/*.yaml`) lists keys (scanners) and, per
//! key, phases in order: `clean`, `covariate` (a "new scanner": contrast,
//! background, blur on the images; labels unchanged), `label` (class priors
//! changed; images drawn from the same per-class pool), `concept` (labels of
//! some classes remapped; images unchanged). Every image is drawn from the
//! pool with small seeded noise, so long streams are not exact repeats, and
//! the same scenario and seed always give the same events.
//!
//! A text scenario draws paragraphs from a corpus (`corpus:`, see
//! [`crate::corpus`]) instead of images from a pool: its events carry
//! `feed` and `text`. `label` and `concept` phases work as for images;
//! `corruption` (typos, truncation, casing, boilerplate) and `unseen` (a
//! topic the reference never saw, `exclude`d from the other phases) are its
//! covariate shifts.
//!
//! A table scenario streams real rows (`table:`, see [`table`]) in time
//! order, each once: `clean`, `label` (the positive rate resampled from the
//! real rows) and `concept` (labels remapped for a `subgroup`). Every run also
//! writes its ground truth ([`Truth`]): each phase's event-time range and
//! per-partition offsets, what drifted, and the true class priors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Positive, load_yaml};

pub mod table;

/// Pixels per image (8×8).
pub const PIXELS: usize = 64;
/// Pixel intensities are on this scale (scikit-learn's digits).
pub const MAX_INTENSITY: f32 = 16.0;

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name, written into the truth file.
    pub name: String,
    /// Seed of every random draw (image choice, noise). Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Image pool: JSONL with `pixels` (64 intensities 0..16) and `label`,
    /// relative to the scenario file. A scenario has a `pool` or a `corpus`.
    #[serde(default)]
    pub pool: Option<PathBuf>,
    /// Text corpus: a folder of topic folders of articles (see
    /// [`crate::corpus`]), relative to the scenario file; labels are the
    /// topics in name order.
    #[serde(default)]
    pub corpus: Option<PathBuf>,
    /// A table of real rows (see [`table::TableSpec`]), streamed in order
    /// under one key; event times come from the rows' year, `start_time`
    /// and `noise` do not apply.
    #[serde(default)]
    pub table: Option<table::TableSpec>,
    /// Class priors of every phase that does not set its own (`{1: 0.15}`:
    /// the listed classes get these probabilities, the others share the
    /// rest as in the pool). Default: the pool's own frequencies.
    #[serde(default)]
    pub priors: Option<BTreeMap<i64, f64>>,
    /// Classes never drawn except by an `unseen` phase (e.g. a topic the
    /// reference must not know). Default none.
    #[serde(default)]
    pub exclude: Vec<i64>,
    /// Event time of the first event: RFC 3339, or `now` (the time of the
    /// run, to the second). Default 2026-01-01T00:00:00Z. Events are produced
    /// with their event time as the message timestamp: on a real Kafka
    /// cluster, times older than the topic's retention are deleted soon, so
    /// use `now` (or `produce --start-time now`) there.
    #[serde(default = "default_start")]
    pub start_time: String,
    /// Event-time step between consecutive events of one key, in ms. Default 100.
    #[serde(default = "default_interval")]
    pub interval_ms: Positive,
    /// Uniform noise added to every pixel, ± this much (0..16 scale). Default 0.5.
    #[serde(default = "default_noise")]
    pub noise: f32,
    /// Where labels go: `inline` (a `label` field in each event, default),
    /// `none`, or `{topic: NAME, delay_events: N}`: `{event_id, label, ts}`
    /// records on a separate topic (or file), each sent N event steps after
    /// its event, as labels that arrive late.
    #[serde(default)]
    pub labels: LabelsMode,
    /// Keys (e.g. scanners) and their phases, in order. Events of all keys
    /// are interleaved in event time.
    pub keys: BTreeMap<String, Vec<PhaseConfig>>,
}

fn default_start() -> String {
    "2026-01-01T00:00:00Z".into()
}
fn default_interval() -> Positive {
    Positive(100)
}
fn default_noise() -> f32 {
    0.5
}

/// Where labels go: `inline`, `none`, or `{topic: NAME, delay_events: N}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum LabelsMode {
    #[default]
    Inline,
    None,
    /// A separate labels topic, `delay_events` event steps late.
    Topic {
        topic: String,
        delay_events: usize,
    },
}

impl<'de> Deserialize<'de> for LabelsMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Topic {
            topic: String,
            delay_events: usize,
        }
        use serde::de::Error;
        let v = serde_norway::Value::deserialize(d)?;
        match &v {
            serde_norway::Value::String(s) if s == "inline" => Ok(LabelsMode::Inline),
            serde_norway::Value::String(s) if s == "none" => Ok(LabelsMode::None),
            serde_norway::Value::Mapping(_) => {
                let t: Topic = serde_norway::from_value(v).map_err(D::Error::custom)?;
                Ok(LabelsMode::Topic {
                    topic: t.topic,
                    delay_events: t.delay_events,
                })
            }
            _ => Err(D::Error::custom(
                "expected `inline`, `none` or `{topic: NAME, delay_events: N}`",
            )),
        }
    }
}

/// One phase of one key.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PhaseConfig {
    /// Images and labels as in the pool.
    Clean {
        events: Positive,
        /// Shown in the summary and the truth file (default: the kind).
        #[serde(default)]
        name: Option<String>,
    },
    /// Table only: the next rows as they are, whose drift nobody knows (a
    /// real stream). Its truth kind is `real`: alerts in it are neither
    /// detections nor false alarms, only counted.
    Real {
        events: Positive,
        #[serde(default)]
        name: Option<String>,
    },
    /// A new scanner: x' = contrast·((1−blur)·x + blur·box3×3(x)) + background, clamped to 0..16.
    Covariate {
        events: Positive,
        #[serde(default)]
        name: Option<String>,
        /// Multiplies every intensity (default 1).
        #[serde(default = "one")]
        contrast: f32,
        /// Added to every intensity, 0..16 scale (default 0).
        #[serde(default)]
        background: f32,
        /// Share of a 3×3 box blur mixed in, 0..1 (default 0).
        #[serde(default)]
        blur: f32,
    },
    /// Class priors changed: `priors` gives the probability of the listed
    /// classes; the others share the rest in proportion to their pool
    /// frequency. Classes follow the priors systematically (each class as
    /// close to its share as whole events allow); images are drawn at random
    /// from the class's pool.
    Label {
        events: Positive,
        #[serde(default)]
        name: Option<String>,
        priors: BTreeMap<i64, f64>,
    },
    /// Labels remapped (`{3: 8, 8: 3}`: every 3 is labelled 8 and every 8 is 3); images unchanged.
    Concept {
        events: Positive,
        #[serde(default)]
        name: Option<String>,
        remap: BTreeMap<i64, i64>,
        /// Table only: remap only the rows whose columns have these values
        /// (`{MIG: 3}`: people who moved within the country), so the
        /// relationship between those features and the label inverts for a
        /// subgroup. Default: every row.
        #[serde(default)]
        subgroup: BTreeMap<String, serde_json::Value>,
    },
    /// Text only, a covariate shift: each paragraph is corrupted with these
    /// probabilities (each 0..1, default 0): `typos` (every word of 4+
    /// letters has two adjacent letters swapped with probability `typos`),
    /// `truncation` (the text is cut to its first 20–60% of words),
    /// `casing` (upper-cased), `boilerplate` (a fixed sentence appended).
    Corruption {
        events: Positive,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        typos: f64,
        #[serde(default)]
        truncation: f64,
        #[serde(default)]
        casing: f64,
        #[serde(default)]
        boilerplate: f64,
    },
    /// A class the other phases never draw (listed in `exclude`) appears
    /// with probability `share`; the others share the rest as in the pool.
    /// A covariate shift: inputs unlike any of the reference.
    Unseen {
        events: Positive,
        #[serde(default)]
        name: Option<String>,
        class: i64,
        share: f64,
    },
    /// Text only, a covariate shift in the topic mix within texts: with
    /// probability `share` (0..1) a paragraph is followed by one of another
    /// topic, as in digests and round-ups. Each event keeps its own
    /// paragraph's topic as its label, so the topic priors and the labelling
    /// are unchanged.
    Mix {
        events: Positive,
        #[serde(default)]
        name: Option<String>,
        share: f64,
        /// Topics the joined paragraph is drawn from, uniformly (never the
        /// paragraph's own: those of that topic stay as they are). Default:
        /// every topic the scenario draws — which moves the texts towards
        /// the middle of the topics and leaves their mean embedding where
        /// it was; a few topics move it towards those.
        #[serde(default)]
        topics: Vec<i64>,
    },
    /// Text only, a covariate shift in the mix of stories within each
    /// topic: a few stories dominate the feed. Each topic's paragraphs come
    /// from only `articles` of its articles (drawn per key and phase from the
    /// scenario's seed), while the topics keep their priors and every
    /// paragraph its topic's label.
    Stories {
        events: Positive,
        #[serde(default)]
        name: Option<String>,
        articles: Positive,
    },
}

fn one() -> f32 {
    1.0
}

impl PhaseConfig {
    pub fn events(&self) -> usize {
        match self {
            PhaseConfig::Clean { events, .. }
            | PhaseConfig::Real { events, .. }
            | PhaseConfig::Covariate { events, .. }
            | PhaseConfig::Label { events, .. }
            | PhaseConfig::Concept { events, .. }
            | PhaseConfig::Corruption { events, .. }
            | PhaseConfig::Unseen { events, .. }
            | PhaseConfig::Mix { events, .. }
            | PhaseConfig::Stories { events, .. } => events.get(),
        }
    }

    /// The kind of drift (the truth): `clean`, `covariate`, `label`,
    /// `concept`, or `real` (not known).
    pub fn kind(&self) -> &'static str {
        match self {
            PhaseConfig::Clean { .. } => "clean",
            PhaseConfig::Real { .. } => "real",
            PhaseConfig::Covariate { .. }
            | PhaseConfig::Corruption { .. }
            | PhaseConfig::Unseen { .. }
            | PhaseConfig::Mix { .. }
            | PhaseConfig::Stories { .. } => "covariate",
            PhaseConfig::Label { .. } => "label",
            PhaseConfig::Concept { .. } => "concept",
        }
    }

    pub fn name(&self) -> String {
        let default = match self {
            PhaseConfig::Corruption { .. } => "corruption",
            PhaseConfig::Unseen { .. } => "unseen",
            PhaseConfig::Mix { .. } => "mix",
            PhaseConfig::Stories { .. } => "stories",
            _ => self.kind(),
        };
        match self {
            PhaseConfig::Clean { name, .. }
            | PhaseConfig::Real { name, .. }
            | PhaseConfig::Covariate { name, .. }
            | PhaseConfig::Label { name, .. }
            | PhaseConfig::Concept { name, .. }
            | PhaseConfig::Corruption { name, .. }
            | PhaseConfig::Unseen { name, .. }
            | PhaseConfig::Mix { name, .. }
            | PhaseConfig::Stories { name, .. } => name.clone().unwrap_or_else(|| default.to_string()),
        }
    }
}

/// One image of the pool.
#[derive(Debug, Clone, Deserialize)]
pub struct PoolImage {
    pub pixels: Vec<f32>,
    pub label: i64,
}

/// One paragraph of a text pool.
#[derive(Debug, Clone)]
pub struct PoolText {
    pub text: String,
    pub label: i64,
    /// The article it comes from (its number within the topic).
    pub article: u32,
}

/// The image or text pool, also grouped by class.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Images (an image pool), else empty.
    pub images: Vec<PoolImage>,
    /// Paragraphs (a text pool), else empty.
    pub texts: Vec<PoolText>,
    /// Rows (a table pool), else none.
    pub table: Option<table::Table>,
    /// Classes present, ascending, and the indices of their items.
    pub by_class: BTreeMap<i64, Vec<usize>>,
}

impl Pool {
    /// Reads a pool (JSONL with `pixels` and `label`); every image must have 64 finite pixels.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let err = |line: usize, message: String| ScenarioError::Pool {
            path: path.into(),
            line,
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(0, format!("cannot read: {e}")))?;
        let mut images = vec![];
        for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let img: PoolImage = serde_json::from_str(l).map_err(|e| err(i + 1, e.to_string()))?;
            if img.pixels.len() != PIXELS || img.pixels.iter().any(|v| !v.is_finite()) {
                return Err(err(i + 1, format!("expected {PIXELS} finite pixels")));
            }
            images.push(img);
        }
        if images.is_empty() {
            return Err(err(0, "the pool has no images".into()));
        }
        let by_class = group(images.iter().map(|i| i.label));
        Ok(Pool {
            images,
            texts: vec![],
            table: None,
            by_class,
        })
    }

    /// The paragraphs of a corpus folder, labelled by topic.
    pub fn from_corpus(dir: &Path) -> Result<Self, ScenarioError> {
        let corpus = crate::corpus::Corpus::load(dir).map_err(|e| ScenarioError::Pool {
            path: dir.into(),
            line: 0,
            message: e.message,
        })?;
        let texts: Vec<PoolText> = corpus
            .paragraphs
            .into_iter()
            .map(|p| PoolText {
                text: p.text,
                label: p.topic as i64,
                article: p.article,
            })
            .collect();
        let by_class = group(texts.iter().map(|t| t.label));
        Ok(Pool {
            images: vec![],
            texts,
            table: None,
            by_class,
        })
    }

    /// The rows of a table, labelled by its label column.
    pub fn from_table(spec: &table::TableSpec, dir: &Path) -> Result<Self, ScenarioError> {
        let t = table::Table::load(spec, dir).map_err(|(path, line, message)| ScenarioError::Pool {
            path,
            line,
            message,
        })?;
        let by_class = group(t.rows.iter().map(|r| r.label));
        Ok(Pool {
            images: vec![],
            texts: vec![],
            table: Some(t),
            by_class,
        })
    }

    /// Whether this is a text pool.
    pub fn is_text(&self) -> bool {
        !self.texts.is_empty()
    }

    /// Items in the pool.
    pub fn len(&self) -> usize {
        self.images.len() + self.texts.len() + self.table.as_ref().map_or(0, |t| t.rows.len())
    }

    /// Whether the pool has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The label of item `i`.
    pub fn label(&self, i: usize) -> i64 {
        match &self.table {
            Some(t) => t.rows[i].label,
            None if self.is_text() => self.texts[i].label,
            None => self.images[i].label,
        }
    }

    /// Class frequencies of the pool.
    pub fn priors(&self) -> BTreeMap<i64, f64> {
        let n = self.len() as f64;
        self.by_class.iter().map(|(c, v)| (*c, v.len() as f64 / n)).collect()
    }
}

/// Item indices by class.
fn group(labels: impl Iterator<Item = i64>) -> BTreeMap<i64, Vec<usize>> {
    let mut by_class: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, label) in labels.enumerate() {
        by_class.entry(label).or_default().push(i);
    }
    by_class
}

/// A scenario that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{}:{line}: {message}", path.display())]
    Pool {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{what}: {message}")]
    Output { what: String, message: String },
}

/// A loaded, checked scenario with its pool.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub scenario: Scenario,
    pub pool: Pool,
    pub start_ms: i64,
    /// Per key (in `keys` order) and phase: the class priors images are drawn from.
    pub priors: Vec<Vec<BTreeMap<i64, f64>>>,
    /// A table scenario: the row of each event, in order (one key).
    pub table_order: Vec<usize>,
    /// Per key and phase: the paragraphs a `stories` phase draws each topic
    /// from (empty for other phases).
    pub stories: Vec<Vec<BTreeMap<i64, Vec<usize>>>>,
}

impl Loaded {
    /// Reads and checks a scenario file (unknown keys rejected; errors name file, line and key).
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let mut scenario: Scenario = load_yaml(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        scenario.pool = scenario.pool.map(|p| dir.join(p));
        scenario.corpus = scenario.corpus.map(|p| dir.join(p));
        let pool = match (&scenario.pool, &scenario.corpus, &scenario.table) {
            (Some(p), None, None) => Pool::load(p)?,
            (None, Some(c), None) => Pool::from_corpus(c)?,
            (None, None, Some(t)) => Pool::from_table(t, dir)?,
            _ => {
                return Err(ScenarioError::Config(ConfigError::invalid(
                    path,
                    "pool",
                    "a scenario has one of `pool` (images), `corpus` (texts) or `table` (rows)",
                )));
            }
        };
        Self::new(scenario, pool, path)
    }

    /// Checks a scenario (errors are located in `path`).
    pub fn new(scenario: Scenario, pool: Pool, path: &Path) -> Result<Self, ScenarioError> {
        let bad = |key: String, msg: String| ScenarioError::Config(ConfigError::invalid(path, key, msg));
        let start_ms = start_ms(&scenario.start_time).map_err(|m| bad("start_time".into(), m))?;
        if !(scenario.noise.is_finite() && (0.0..=MAX_INTENSITY).contains(&scenario.noise)) {
            return Err(bad("noise".into(), format!("expected 0..16, got {}", scenario.noise)));
        }
        if scenario.keys.is_empty() {
            return Err(bad("keys".into(), "at least one key with phases is needed".into()));
        }
        let mut base = base_priors(&pool.priors(), &scenario.exclude).map_err(|m| bad("exclude".into(), m))?;
        if let Some(p) = &scenario.priors {
            base = shifted_priors(&base, p).map_err(|m| bad("priors".into(), m))?;
        }
        let mut priors = vec![];
        for (key, phases) in &scenario.keys {
            if phases.is_empty() {
                return Err(bad(format!("keys.{key}"), "at least one phase is needed".into()));
            }
            let mut per_phase = vec![];
            for (i, ph) in phases.iter().enumerate() {
                let at = |(field, m): (&str, String)| bad(format!("keys.{key}[{i}].{field}"), m);
                per_phase.push(phase_priors(ph, &pool, &scenario.exclude, &base).map_err(at)?);
            }
            priors.push(per_phase);
        }
        if let LabelsMode::Topic { topic, .. } = &scenario.labels
            && topic.trim().is_empty()
        {
            return Err(bad("labels.topic".into(), "must not be empty".into()));
        }
        let table_order = match &pool.table {
            Some(t) => plan_table(&scenario, t, &priors).map_err(|(key, m)| bad(key, m))?,
            None => vec![],
        };
        let stories = scenario
            .keys
            .iter()
            .map(|(key, phases)| {
                (0..phases.len())
                    .map(|i| story_members(&scenario, &pool, key, i))
                    .collect()
            })
            .collect();
        Ok(Loaded {
            scenario,
            pool,
            start_ms,
            priors,
            table_order,
            stories,
        })
    }

    /// Events over all keys.
    pub fn total_events(&self) -> usize {
        self.scenario.keys.values().flatten().map(PhaseConfig::events).sum()
    }

    /// The events and label records in emission order (deterministic).
    pub fn emissions(&self) -> Emissions<'_> {
        Emissions::new(self)
    }

    /// The events in emission order, without the late label records.
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.emissions().filter_map(|e| match e {
            Emission::Event(e) => Some(e),
            Emission::Label { .. } => None,
        })
    }
}

/// Epoch ms of a scenario's `start_time` (RFC 3339, or `now`).
fn start_ms(start_time: &str) -> Result<i64, String> {
    let start = if start_time == "now" {
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
    } else {
        start_time.to_string()
    };
    Ok(humantime::parse_rfc3339_weak(&start)
        .map_err(|e| format!("`{start_time}` is not an RFC 3339 time: {e}"))?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

/// A phase's error: the field at fault and what is wrong with it.
type PhaseError = (&'static str, String);

/// Checks a phase against the pool; the class priors its events follow.
/// Errors name the phase's field at fault.
fn phase_priors(
    ph: &PhaseConfig,
    pool: &Pool,
    exclude: &[i64],
    base: &BTreeMap<i64, f64>,
) -> Result<BTreeMap<i64, f64>, PhaseError> {
    kind_fits_pool(ph, pool)?;
    match ph {
        PhaseConfig::Mix { share, topics, .. } => {
            probability("share", *share)?;
            if let Some(t) = topics
                .iter()
                .find(|t| !pool.by_class.contains_key(t) || exclude.contains(t))
            {
                return Err(("topics", format!("{t} is not a topic the scenario draws")));
            }
            match pool.by_class.keys().filter(|c| !exclude.contains(c)).count() {
                2.. => Ok(base.clone()),
                _ => Err(("kind", "`mix` needs two topics the scenario draws".into())),
            }
        }
        PhaseConfig::Corruption {
            typos,
            truncation,
            casing,
            boilerplate,
            ..
        } => {
            probability("typos", *typos)?;
            probability("truncation", *truncation)?;
            probability("casing", *casing)?;
            probability("boilerplate", *boilerplate)?;
            Ok(base.clone())
        }
        PhaseConfig::Unseen { class, share, .. } => {
            if !exclude.contains(class) {
                return Err((
                    "class",
                    format!("class {class} must be listed in `exclude` (the other phases never draw it)"),
                ));
            }
            shifted_priors(base, &[(*class, *share)].into()).map_err(|m| ("share", m))
        }
        PhaseConfig::Covariate {
            contrast,
            background,
            blur,
            ..
        } => {
            check_covariate(*contrast, *background, *blur)?;
            Ok(base.clone())
        }
        PhaseConfig::Label { priors: p, .. } => shifted_priors(base, p).map_err(|m| ("priors", m)),
        PhaseConfig::Concept { remap, subgroup, .. } => {
            check_concept(remap, subgroup, pool, base)?;
            Ok(base.clone())
        }
        PhaseConfig::Clean { .. } | PhaseConfig::Real { .. } | PhaseConfig::Stories { .. } => Ok(base.clone()),
    }
}

fn probability(field: &'static str, v: f64) -> Result<(), PhaseError> {
    match v.is_finite() && (0.0..=1.0).contains(&v) {
        true => Ok(()),
        false => Err((field, format!("expected a probability 0..1, got {v}"))),
    }
}

/// Whether a phase's kind applies to the pool: images, text or a table.
fn kind_fits_pool(ph: &PhaseConfig, pool: &Pool) -> Result<(), PhaseError> {
    let table = pool.table.is_some();
    match ph {
        PhaseConfig::Covariate { .. }
        | PhaseConfig::Corruption { .. }
        | PhaseConfig::Unseen { .. }
        | PhaseConfig::Mix { .. }
        | PhaseConfig::Stories { .. }
            if table =>
        {
            Err((
                "kind",
                format!(
                    "`{}` does not apply to a table: its phases are `clean`, `label` and `concept`",
                    ph.name()
                ),
            ))
        }
        PhaseConfig::Covariate { .. } if pool.is_text() => Err((
            "kind",
            "`covariate` transforms images; a text scenario uses `corruption`, `unseen`, `stories` or `mix`".into(),
        )),
        PhaseConfig::Corruption { .. } | PhaseConfig::Mix { .. } | PhaseConfig::Stories { .. } if !pool.is_text() => {
            Err(("kind", format!("`{}` applies to text (a `corpus`)", ph.name())))
        }
        PhaseConfig::Real { .. } if !table => Err(("kind", "`real` streams the rows of a `table`".into())),
        _ => Ok(()),
    }
}

/// A `covariate` phase's transform: x' = contrast·((1−blur)·x + blur·box(x)) + background.
fn check_covariate(contrast: f32, background: f32, blur: f32) -> Result<(), PhaseError> {
    if !(contrast.is_finite() && contrast > 0.0) {
        return Err(("contrast", format!("expected a positive number, got {contrast}")));
    }
    if !(background.is_finite() && background.abs() <= MAX_INTENSITY) {
        return Err(("background", format!("expected -16..16, got {background}")));
    }
    probability("blur", f64::from(blur)).map_err(|(f, _)| (f, format!("expected 0..1, got {blur}")))
}

/// A `concept` phase's remapped classes (both of the pool) and subgroup
/// (columns of a table, each equal to a string or a number).
fn check_concept(
    remap: &BTreeMap<i64, i64>,
    subgroup: &BTreeMap<String, serde_json::Value>,
    pool: &Pool,
    base: &BTreeMap<i64, f64>,
) -> Result<(), PhaseError> {
    if let Some((from, to)) = remap
        .iter()
        .find(|(f, t)| !base.contains_key(f) || !base.contains_key(t))
    {
        return Err(("remap", format!("{from} → {to}: both must be classes of the pool")));
    }
    if !subgroup.is_empty() && pool.table.is_none() {
        return Err(("subgroup", "a subgroup selects rows of a `table`".into()));
    }
    if let Some((c, v)) = subgroup.iter().find(|(_, v)| table::scalar_text(v).is_none()) {
        return Err(("subgroup", format!("{c}: expected a string or a number, got {v}")));
    }
    Ok(())
}

/// The paragraphs phase `i` of `key` draws each topic from, if it is a
/// `stories` phase: those of `articles` of the topic's articles, drawn with
/// a generator seeded by the scenario's seed, the key and the phase.
fn story_members(scenario: &Scenario, pool: &Pool, key: &str, i: usize) -> BTreeMap<i64, Vec<usize>> {
    let PhaseConfig::Stories { articles, .. } = &scenario.keys[key][i] else {
        return BTreeMap::new();
    };
    let id = format!("{key}/{i}");
    let mut rng = ChaCha8Rng::seed_from_u64(scenario.seed ^ crate::id_hash::fnv1a(id.as_bytes()));
    let mut out = BTreeMap::new();
    for (class, members) in &pool.by_class {
        // A topic's paragraphs come in article order: one id per article.
        let mut ids: Vec<u32> = members.iter().map(|&m| pool.texts[m].article).collect();
        ids.dedup();
        let chosen: Vec<u32> = ids.choose_multiple(&mut rng, articles.get()).copied().collect();
        let kept = members
            .iter()
            .copied()
            .filter(|&m| chosen.contains(&pool.texts[m].article))
            .collect();
        out.insert(*class, kept);
    }
    out
}

/// The row of every event of a table scenario (its one key); errors name
/// the key at fault.
fn plan_table(
    scenario: &Scenario,
    t: &table::Table,
    priors: &[Vec<BTreeMap<i64, f64>>],
) -> Result<Vec<usize>, (String, String)> {
    let Some((key, phases)) = scenario.keys.iter().next().filter(|_| scenario.keys.len() == 1) else {
        return Err((
            "keys".into(),
            "a table is streamed under one key: give exactly one".into(),
        ));
    };
    let interval = scenario.interval_ms.get() as i64;
    if let Some((year, n)) = t
        .per_year
        .iter()
        .find(|(_, n)| **n as i64 * interval > 365 * 86_400_000)
    {
        return Err((
            "interval_ms".into(),
            format!(
                "{n} rows of {year} at {interval} ms apart pass the year's end: at most {} ms",
                365 * 86_400_000 / *n as i64
            ),
        ));
    }
    let takes: Vec<(usize, table::Take)> = phases
        .iter()
        .zip(&priors[0])
        .map(|(ph, p)| match ph {
            PhaseConfig::Label { .. } => (ph.events(), table::Take::ByClass(p)),
            _ if scenario.priors.is_some() => (ph.events(), table::Take::ByClass(p)),
            _ => (ph.events(), table::Take::InOrder),
        })
        .collect();
    let shuffle = scenario.table.as_ref().is_none_or(|s| s.shuffle);
    let sequence = table::sequence(t, shuffle, scenario.seed);
    table::plan(t, &sequence, &takes).map_err(|(i, m)| (format!("keys.{key}[{i}].events"), m))
}

/// `n` clean events of one key from the pool at `pool_path` (JSON text), e.g. for benchmarks.
pub fn clean_events(pool_path: &Path, key: &str, n: usize, seed: u64) -> Result<Vec<String>, ScenarioError> {
    let pool = Pool::load(pool_path)?;
    let scenario = Scenario {
        name: "clean".into(),
        seed,
        pool: Some(pool_path.into()),
        corpus: None,
        table: None,
        priors: None,
        exclude: vec![],
        start_time: default_start(),
        interval_ms: Positive(1),
        noise: default_noise(),
        labels: LabelsMode::Inline,
        keys: [(
            key.to_string(),
            vec![PhaseConfig::Clean {
                events: Positive(n.max(1)),
                name: None,
            }],
        )]
        .into(),
    };
    let l = Loaded::new(scenario, pool, pool_path)?;
    Ok(l.events().map(|e| e.json).collect())
}

/// The pool's class frequencies with the `exclude`d classes at 0 and the
/// others scaled up to sum to 1.
fn base_priors(pool: &BTreeMap<i64, f64>, exclude: &[i64]) -> Result<BTreeMap<i64, f64>, String> {
    if let Some(c) = exclude.iter().find(|c| !pool.contains_key(c)) {
        return Err(format!("class {c} is not in the pool"));
    }
    let kept: f64 = pool.iter().filter(|(c, _)| !exclude.contains(c)).map(|(_, p)| p).sum();
    if kept <= 0.0 {
        return Err("every class is excluded".into());
    }
    Ok(pool
        .iter()
        .map(|(c, p)| (*c, if exclude.contains(c) { 0.0 } else { p / kept }))
        .collect())
}

/// Priors of a label phase: the listed classes get their probability, the
/// others share the rest in proportion to their pool frequency.
fn shifted_priors(base: &BTreeMap<i64, f64>, listed: &BTreeMap<i64, f64>) -> Result<BTreeMap<i64, f64>, String> {
    let mut sum = 0.0;
    for (c, p) in listed {
        if !base.contains_key(c) {
            return Err(format!("class {c} is not in the pool"));
        }
        if !(p.is_finite() && (0.0..=1.0).contains(p)) {
            return Err(format!("class {c}: expected a probability 0..1, got {p}"));
        }
        sum += p;
    }
    if sum > 1.0 + 1e-9 {
        return Err(format!("the listed probabilities add up to {sum}, more than 1"));
    }
    let rest: f64 = base
        .iter()
        .filter(|(c, _)| !listed.contains_key(c))
        .map(|(_, p)| p)
        .sum();
    if rest == 0.0 && (1.0 - sum).abs() > 1e-9 {
        return Err(format!(
            "every class is listed, so the probabilities must add up to 1, not {sum}"
        ));
    }
    Ok(base
        .iter()
        .map(|(c, p)| {
            (
                *c,
                listed
                    .get(c)
                    .copied()
                    .unwrap_or(p / rest.max(f64::MIN_POSITIVE) * (1.0 - sum)),
            )
        })
        .collect())
}

/// What a scenario emits, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Emission {
    Event(Event),
    /// A late label: `{event_id, label, ts}`.
    Label {
        key: String,
        key_index: usize,
        json: String,
        /// Its arrival time (event time of the label), epoch ms.
        ts: i64,
    },
}

/// One generated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub key: String,
    pub key_index: usize,
    /// Phase index within the key.
    pub phase: usize,
    pub event_id: String,
    pub ts: i64,
    /// The label the event is given (after a concept phase's remap).
    pub label: i64,
    /// The event as JSON, as it goes on the topic.
    pub json: String,
}

/// Iterator over a scenario's emissions: step t emits the t-th event of every
/// key that still has one, then the labels that fall due.
pub struct Emissions<'a> {
    l: &'a Loaded,
    keys: Vec<(&'a String, &'a Vec<PhaseConfig>)>,
    rngs: Vec<ChaCha8Rng>,
    step: usize,
    /// Per key: (phase index, events left in it).
    pos: Vec<(usize, usize)>,
    /// Per key: classes drawn so far in a label phase.
    drawn: Vec<BTreeMap<i64, f64>>,
    queue: std::collections::VecDeque<Emission>,
    pending_labels: std::collections::VecDeque<(usize, Emission)>,
    /// A table scenario's event times.
    clock: table::Clock,
}

impl<'a> Emissions<'a> {
    fn new(l: &'a Loaded) -> Self {
        let keys: Vec<_> = l.scenario.keys.iter().collect();
        // One stream per key, so adding a key does not change the others.
        let rngs = keys
            .iter()
            .map(|(k, _)| ChaCha8Rng::seed_from_u64(l.scenario.seed ^ crate::id_hash::fnv1a(k.as_bytes())))
            .collect();
        let pos = keys.iter().map(|(_, p)| (0, p[0].events())).collect();
        Emissions {
            l,
            keys,
            rngs,
            step: 0,
            pos,
            drawn: vec![BTreeMap::new(); l.scenario.keys.len()],
            queue: Default::default(),
            pending_labels: Default::default(),
            clock: Default::default(),
        }
    }

    fn fill(&mut self) {
        let mut ts = self.l.start_ms + (self.step * self.l.scenario.interval_ms.get()) as i64;
        for k in 0..self.keys.len() {
            let (key, phases) = self.keys[k];
            let (phase, left) = &mut self.pos[k];
            if *phase >= phases.len() {
                continue;
            }
            // A table's rows carry their time (one key: labels are stamped with it).
            if let Some(t) = &self.l.pool.table {
                let row = &t.rows[self.l.table_order[self.step]];
                ts = self.clock.next(row.year, self.l.scenario.interval_ms.get() as i64);
            }
            let ev = generate(
                self.l,
                &mut self.rngs[k],
                &mut self.drawn[k],
                key,
                k,
                *phase,
                self.step,
                ts,
            );
            if let LabelsMode::Topic { delay_events, .. } = &self.l.scenario.labels {
                let json = serde_json::json!({"event_id": ev.event_id, "label": ev.label}).to_string();
                self.pending_labels.push_back((
                    self.step + delay_events,
                    Emission::Label {
                        key: key.clone(),
                        key_index: k,
                        json,
                        ts: 0,
                    },
                ));
            }
            self.queue.push_back(Emission::Event(ev));
            *left -= 1;
            if *left == 0 {
                self.drawn[k].clear();
                *phase += 1;
                if let Some(p) = phases.get(*phase) {
                    *left = p.events();
                }
            }
        }
        let done = self.pos.iter().zip(&self.keys).all(|((p, _), (_, ph))| *p >= ph.len());
        while let Some((due, _)) = self.pending_labels.front() {
            if *due > self.step && !done {
                break;
            }
            if let Some((_, e)) = self.pending_labels.pop_front() {
                self.queue.push_back(stamp_label(e, ts));
            }
        }
        self.step += 1;
    }
}

/// Adds the arrival time to a label record.
fn stamp_label(e: Emission, ts: i64) -> Emission {
    match e {
        Emission::Label {
            key, key_index, json, ..
        } => {
            let mut v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            v["ts"] = ts.into();
            Emission::Label {
                key,
                key_index,
                json: v.to_string(),
                ts,
            }
        }
        other => other,
    }
}

impl Iterator for Emissions<'_> {
    type Item = Emission;
    fn next(&mut self) -> Option<Emission> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            let active = self.pos.iter().zip(&self.keys).any(|((p, _), (_, ph))| *p < ph.len());
            if !active {
                return None;
            }
            self.fill();
        }
    }
}

/// Next class of a label phase: the one furthest behind its share
/// (systematic sampling), so every stretch of the phase has the phase's
/// priors up to ±1 event per class and estimators are judged on their own
/// error, not the sampling noise of the stream.
fn next_class(priors: &BTreeMap<i64, f64>, drawn: &mut BTreeMap<i64, f64>) -> i64 {
    let n: f64 = drawn.values().sum::<f64>() + 1.0;
    let mut best = (f64::NEG_INFINITY, 0);
    for (c, q) in priors {
        let deficit = n * q - drawn.get(c).copied().unwrap_or(0.0);
        if deficit > best.0 {
            best = (deficit, *c);
        }
    }
    *drawn.entry(best.1).or_default() += 1.0;
    best.1
}

#[allow(clippy::too_many_arguments)]
fn generate(
    l: &Loaded,
    rng: &mut ChaCha8Rng,
    drawn: &mut BTreeMap<i64, f64>,
    key: &str,
    k: usize,
    phase: usize,
    step: usize,
    ts: i64,
) -> Event {
    let ph = &l.scenario.keys[key][phase];
    let pool = &l.pool;
    // Phases that change the class mix (or exclude classes) draw class first.
    let by_class = matches!(
        ph,
        PhaseConfig::Label { .. } | PhaseConfig::Unseen { .. } | PhaseConfig::Stories { .. }
    ) || !l.scenario.exclude.is_empty()
        || l.scenario.priors.is_some();
    if let Some(t) = &pool.table {
        return table_event(l, t, ph, key, k, phase, step, ts);
    }
    let item = if by_class {
        let class = next_class(&l.priors[k][phase], drawn);
        let members = l.stories[k][phase].get(&class).unwrap_or(&pool.by_class[&class]);
        members[rng.random_range(0..members.len())]
    } else {
        rng.random_range(0..pool.len())
    };
    let event_id = format!("{key}-{step}");
    let label = match ph {
        PhaseConfig::Concept { remap, .. } => remap.get(&pool.label(item)).copied().unwrap_or(pool.label(item)),
        _ => pool.label(item),
    };
    let mut ev = if pool.is_text() {
        let text = paragraph(l, ph, item, rng);
        serde_json::json!({"event_id": event_id, "ts": ts, "feed": key, "text": text})
    } else {
        image_event(l, rng, ph, &pool.images[item], key, &event_id, ts)
    };
    if l.scenario.labels == LabelsMode::Inline {
        ev["label"] = label.into();
    }
    Event {
        key: key.to_string(),
        key_index: k,
        phase,
        event_id,
        ts,
        label,
        json: ev.to_string(),
    }
}

/// The text of a text scenario's event drawn as paragraph `item`, as phase
/// `ph` changes it: corrupted, or mixed with another topic's.
fn paragraph(l: &Loaded, ph: &PhaseConfig, item: usize, rng: &mut ChaCha8Rng) -> String {
    let pool = &l.pool;
    match ph {
        PhaseConfig::Corruption {
            typos,
            truncation,
            casing,
            boilerplate,
            ..
        } => corrupt(
            &pool.texts[item].text,
            rng,
            [*truncation, *typos, *casing, *boilerplate],
        ),
        PhaseConfig::Mix { share, topics, .. } if rng.random_bool(*share) => {
            mixed(pool, &l.scenario.exclude, topics, item, rng)
        }
        _ => pool.texts[item].text.clone(),
    }
}

/// The event of a table scenario's `step`-th row (see [`table`]).
#[allow(clippy::too_many_arguments)]
fn table_event(
    l: &Loaded,
    t: &table::Table,
    ph: &PhaseConfig,
    key: &str,
    k: usize,
    phase: usize,
    step: usize,
    ts: i64,
) -> Event {
    let row = &t.rows[l.table_order[step]];
    let label = match ph {
        PhaseConfig::Concept { remap, subgroup, .. } if table::in_subgroup(row, subgroup) => {
            remap.get(&row.label).copied().unwrap_or(row.label)
        }
        _ => row.label,
    };
    let column = l.scenario.table.as_ref().map_or("label", |s| s.label.as_str());
    let inline = (l.scenario.labels == LabelsMode::Inline).then_some((column, label));
    Event {
        key: key.to_string(),
        key_index: k,
        phase,
        event_id: row.id.clone(),
        ts,
        label,
        json: table::event_json(row, ts, inline),
    }
}

/// Appended by a `corruption` phase's `boilerplate`.
const BOILERPLATE: &str = "Click here to subscribe to our newsletter for the latest updates and offers.";

/// `text` corrupted with probabilities `[truncation, typos, casing, boilerplate]`
/// (see [`PhaseConfig::Corruption`]), in that order, with draws from `rng`.
fn corrupt(text: &str, rng: &mut ChaCha8Rng, [truncation, typos, casing, boilerplate]: [f64; 4]) -> String {
    let mut words: Vec<String> = text.split_whitespace().map(String::from).collect();
    if rng.random_bool(truncation) {
        let keep = ((words.len() as f64 * rng.random_range(0.2..0.6)).ceil() as usize).max(1);
        words.truncate(keep);
    }
    for w in &mut words {
        let mut chars: Vec<char> = w.chars().collect();
        if chars.len() >= 4 && rng.random_bool(typos) {
            let at = rng.random_range(0..chars.len() - 1);
            chars.swap(at, at + 1);
            *w = chars.into_iter().collect();
        }
    }
    let mut out = words.join(" ");
    if rng.random_bool(casing) {
        out = out.to_uppercase();
    }
    if rng.random_bool(boilerplate) {
        out.push(' ');
        out.push_str(BOILERPLATE);
    }
    out
}

/// Paragraph `item` followed by one of another topic, the topic drawn
/// uniformly among `topics` (all if empty) not in `exclude` (see
/// [`PhaseConfig::Mix`]).
fn mixed(pool: &Pool, exclude: &[i64], topics: &[i64], item: usize, rng: &mut ChaCha8Rng) -> String {
    let own = &pool.texts[item];
    let others: Vec<&Vec<usize>> = pool
        .by_class
        .iter()
        .filter(|(c, _)| **c != own.label && !exclude.contains(c))
        .filter(|(c, _)| topics.is_empty() || topics.contains(c))
        .map(|(_, members)| members)
        .collect();
    // A paragraph of the only listed topic has no other to join.
    if others.is_empty() {
        return own.text.clone();
    }
    let members = others[rng.random_range(0..others.len())];
    let other = &pool.texts[members[rng.random_range(0..members.len())]];
    format!("{} {}", own.text, other.text)
}

/// A covariate phase's transform of an 8×8 image: blurred towards the
/// mean of each pixel's 3×3 neighbourhood (by `blur`), then scaled by
/// `contrast` and raised by `background`.
fn covariate_shift(px: &mut [f32], contrast: f32, background: f32, blur: f32) {
    let src = px.to_vec();
    for (i, v) in px.iter_mut().enumerate() {
        let (r, c) = ((i / 8) as i32, (i % 8) as i32);
        let mut s = 0.0;
        let mut n = 0.0;
        for dr in -1..=1 {
            for dc in -1..=1 {
                let (rr, cc) = (r + dr, c + dc);
                if (0..8).contains(&rr) && (0..8).contains(&cc) {
                    s += src[(rr * 8 + cc) as usize];
                    n += 1.0;
                }
            }
        }
        *v = contrast * ((1.0 - blur) * *v + blur * s / n) + background;
    }
}

/// The JSON of an image event: the pool image with noise and the phase's transform.
fn image_event(
    l: &Loaded,
    rng: &mut ChaCha8Rng,
    ph: &PhaseConfig,
    img: &PoolImage,
    key: &str,
    event_id: &str,
    ts: i64,
) -> serde_json::Value {
    let noise = l.scenario.noise;
    let mut px: Vec<f32> = img
        .pixels
        .iter()
        .map(|&v| {
            if noise > 0.0 {
                v + rng.random_range(-noise..noise)
            } else {
                v
            }
        })
        .collect();
    if let PhaseConfig::Covariate {
        contrast,
        background,
        blur,
        ..
    } = ph
    {
        covariate_shift(&mut px, *contrast, *background, *blur);
    }
    for v in &mut px {
        *v = (v.clamp(0.0, MAX_INTENSITY) * 100.0).round() / 100.0;
    }
    let mean = px.iter().sum::<f32>() / PIXELS as f32;
    let ink = px.iter().filter(|&&v| v > 4.0).count() as f32 / PIXELS as f32;
    // As the nearest f64 of their two decimals: JSON numbers hold f64, and an
    // f32 written as f64 prints its whole expansion (0.30000001192092896),
    // which tripled the events' size. Read back as f32, the value is the same.
    let pixels: Vec<f64> = px.iter().map(|&v| (f64::from(v) * 100.0).round() / 100.0).collect();
    serde_json::json!({
        "event_id": event_id,
        "ts": ts,
        "scanner": key,
        "pixels": pixels,
        "mean_intensity": mean,
        "ink_fraction": ink,
    })
}

/// Ground truth of one produced scenario: what a backtest is scored against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Truth {
    pub scenario: String,
    pub seed: u64,
    /// Topic (Kafka) or file (JSONL) the events went to.
    pub destination: String,
    /// Where late labels went, if on their own topic or file.
    pub labels_destination: Option<String>,
    pub phases: Vec<TruthPhase>,
}

/// One phase of one key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TruthPhase {
    pub key: String,
    pub name: String,
    /// `clean`, `covariate`, `label`, `concept` or `real` (not known).
    pub kind: String,
    /// Whether something drifted in this phase (every kind but `clean` and `real`).
    pub drift: bool,
    pub events: usize,
    /// Event time of the first and last event, epoch ms.
    pub start_ms: i64,
    pub end_ms: i64,
    /// Partition and offsets of the first and last event (for a JSONL file:
    /// partition 0 and 0-based line numbers).
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    /// True class priors the phase's images are drawn from.
    pub priors: BTreeMap<i64, f64>,
}

impl Truth {
    /// Reads a truth file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Output {
            what: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        serde_json::from_str(&text).map_err(|e| ScenarioError::Output {
            what: path.display().to_string(),
            message: format!("not a truth file: {e}"),
        })
    }

    /// Writes it as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<(), ScenarioError> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|e| ScenarioError::Output {
            what: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Events of `phase`'s key before it.
    pub fn events_before(&self, phase: &TruthPhase) -> i64 {
        self.phases
            .iter()
            .take_while(|p| !std::ptr::eq(*p, phase))
            .filter(|p| p.key == phase.key)
            .map(|p| p.events as i64)
            .sum()
    }

    /// The phase holding an event of `key` at `partition`/`offset`.
    pub fn phase_at(&self, key: &str, partition: i32, offset: i64) -> Option<&TruthPhase> {
        self.phases
            .iter()
            .find(|p| p.key == key && p.partition == partition && (p.first_offset..=p.last_offset).contains(&offset))
    }
}

/// Builds the truth as events are placed: `place(event, partition, offset)`.
pub struct TruthBuilder<'a> {
    l: &'a Loaded,
    truth: Truth,
    /// (key index, phase) → index in `truth.phases`.
    index: BTreeMap<(usize, usize), usize>,
}

impl<'a> TruthBuilder<'a> {
    pub fn new(l: &'a Loaded, destination: &str, labels_destination: Option<String>) -> Self {
        TruthBuilder {
            l,
            truth: Truth {
                scenario: l.scenario.name.clone(),
                seed: l.scenario.seed,
                destination: destination.into(),
                labels_destination,
                phases: vec![],
            },
            index: BTreeMap::new(),
        }
    }

    /// Records where an event landed.
    pub fn place(&mut self, ev: &Event, partition: i32, offset: i64) {
        let idx = *self.index.entry((ev.key_index, ev.phase)).or_insert_with(|| {
            let ph = &self.l.scenario.keys[&ev.key][ev.phase];
            self.truth.phases.push(TruthPhase {
                key: ev.key.clone(),
                name: ph.name(),
                kind: ph.kind().into(),
                drift: !matches!(ph.kind(), "clean" | "real"),
                events: 0,
                start_ms: ev.ts,
                end_ms: ev.ts,
                partition,
                first_offset: offset,
                last_offset: offset,
                priors: self.l.priors[ev.key_index][ev.phase].clone(),
            });
            self.truth.phases.len() - 1
        });
        let p = &mut self.truth.phases[idx];
        p.events += 1;
        p.start_ms = p.start_ms.min(ev.ts);
        p.end_ms = p.end_ms.max(ev.ts);
        p.first_offset = p.first_offset.min(offset);
        p.last_offset = p.last_offset.max(offset);
    }

    /// The truth, phases ordered by key then phase.
    pub fn finish(self) -> Truth {
        let mut t = self.truth;
        let order: BTreeMap<usize, (usize, usize)> = self.index.iter().map(|(k, v)| (*v, *k)).collect();
        let mut phases: Vec<_> = t.phases.into_iter().enumerate().collect();
        phases.sort_by_key(|(i, _)| order.get(i).copied());
        t.phases = phases.into_iter().map(|(_, p)| p).collect();
        t
    }
}

/// Writes a scenario to JSONL files: events to `events`, late labels (if the
/// scenario sends them on their own topic) to `labels`.
pub fn write_jsonl(l: &Loaded, events: &Path, labels: Option<&Path>) -> Result<Truth, ScenarioError> {
    use std::io::Write;
    let io = |p: &Path, e: std::io::Error| ScenarioError::Output {
        what: p.display().to_string(),
        message: e.to_string(),
    };
    let open = |p: &Path| {
        std::fs::File::create(p)
            .map(std::io::BufWriter::new)
            .map_err(|e| io(p, e))
    };
    let late = matches!(l.scenario.labels, LabelsMode::Topic { .. });
    let mut labels = match (late, labels) {
        (true, Some(p)) => Some((p, open(p)?)),
        (true, None) => {
            return Err(ScenarioError::Output {
                what: "labels".into(),
                message: "the scenario sends labels separately: give a file for them (--labels-out)".into(),
            });
        }
        (false, _) => None,
    };
    let mut out = open(events)?;
    let mut truth = TruthBuilder::new(
        l,
        &events.display().to_string(),
        labels.as_ref().map(|(p, _)| p.display().to_string()),
    );
    let mut line = 0i64;
    for em in l.emissions() {
        match em {
            Emission::Event(ev) => {
                writeln!(out, "{}", ev.json).map_err(|e| io(events, e))?;
                truth.place(&ev, 0, line);
                line += 1;
            }
            Emission::Label { json, .. } => {
                if let Some((p, w)) = labels.as_mut() {
                    writeln!(w, "{json}").map_err(|e| io(p, e))?;
                }
            }
        }
    }
    out.flush().map_err(|e| io(events, e))?;
    if let Some((p, mut w)) = labels {
        w.flush().map_err(|e| io(p, e))?;
    }
    Ok(truth.finish())
}

/// Produces a scenario to Kafka: events to `topic`, key `i` (in `keys`
/// order) to partition `i mod partitions`, so each key's events stay in
/// order; late labels to the scenario's labels topic, same partitioning.
/// Waits for every delivery (acks=all) and records the offsets in the truth.
pub async fn produce_kafka(
    l: &Loaded,
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    partitions: i32,
) -> Result<Truth, ScenarioError> {
    use rdkafka::producer::FutureRecord;
    let labels_topic = match &l.scenario.labels {
        LabelsMode::Topic { topic, .. } => Some(topic.clone()),
        _ => None,
    };
    let mut truth = TruthBuilder::new(l, topic, labels_topic.clone());
    let kafka = |e: rdkafka::error::KafkaError| ScenarioError::Output {
        what: format!("produce to {topic}"),
        message: e.to_string(),
    };
    let mut inflight = std::collections::VecDeque::new();
    let mut first = FirstOffsets::default();
    for em in l.emissions() {
        let (t, key, k, json, ts, ev) = match &em {
            Emission::Event(ev) => (topic, &ev.key, ev.key_index, &ev.json, ev.ts, Some(ev.clone())),
            Emission::Label {
                key,
                key_index,
                json,
                ts,
            } => (
                labels_topic.as_deref().unwrap_or(topic),
                key,
                *key_index,
                json,
                *ts,
                None,
            ),
        };
        // The message timestamp is the event time, so time ranges (replay
        // --from/--to) select by event time.
        let rec = FutureRecord::to(t)
            .payload(json.as_bytes())
            .key(key.as_bytes())
            .timestamp(ts)
            .partition((k as i32) % partitions.max(1));
        inflight.push_back((producer.send_result(rec).map_err(|(e, _)| kafka(e))?, ev, t.to_string()));
        // Bounded in flight, so a long scenario does not queue in memory.
        while inflight.len() > 20_000 {
            if let Some((f, ev, t)) = inflight.pop_front() {
                first.note(&t, settle(f, ev, &mut truth, &t).await?);
            }
        }
    }
    while let Some((f, ev, t)) = inflight.pop_front() {
        first.note(&t, settle(f, ev, &mut truth, &t).await?);
    }
    first.check_kept(producer)?;
    Ok(truth.finish())
}

/// The first offset written to each partition by one `produce`.
#[derive(Default)]
struct FirstOffsets(std::collections::BTreeMap<(String, i32), i64>);

impl FirstOffsets {
    fn note(&mut self, topic: &str, (partition, offset): (i32, i64)) {
        let first = self.0.entry((topic.to_string(), partition)).or_insert(offset);
        *first = (*first).min(offset);
    }

    /// Fails when a partition no longer starts at or before what was
    /// written: the broker deleted events before anything could read them
    /// (the embedded broker keeps about 5 MiB per partition, as retention would).
    fn check_kept(&self, producer: &rdkafka::producer::FutureProducer) -> Result<(), ScenarioError> {
        use rdkafka::producer::Producer;
        for ((topic, partition), first) in &self.0 {
            let (low, high) = producer
                .client()
                .fetch_watermarks(topic, *partition, std::time::Duration::from_secs(10))
                .map_err(|e| ScenarioError::Output {
                    what: format!("check of {topic} partition {partition}"),
                    message: e.to_string(),
                })?;
            if low > *first {
                return Err(ScenarioError::Output {
                    what: format!("produce to {topic}"),
                    message: format!(
                        "the broker already deleted {} of the {} events written to partition {partition} (offsets {first} to {}; it now starts at {low}): the topic cannot hold the scenario. The embedded broker keeps about 5 MiB per partition: give the topic more partitions (`driftwatch broker --topic {topic}:8`) or use a real broker",
                        low - first,
                        high - first,
                        low - 1,
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Waits for one delivery; its partition and offset.
async fn settle(
    f: rdkafka::producer::DeliveryFuture,
    ev: Option<Event>,
    truth: &mut TruthBuilder<'_>,
    topic: &str,
) -> Result<(i32, i64), ScenarioError> {
    match f.await {
        Ok(Ok(d)) => {
            if let Some(ev) = ev {
                truth.place(&ev, d.partition, d.offset);
            }
            Ok((d.partition, d.offset))
        }
        Ok(Err((e, _))) => Err(ScenarioError::Output {
            what: format!("produce to {topic}"),
            message: e.to_string(),
        }),
        Err(_) => Err(ScenarioError::Output {
            what: format!("produce to {topic}"),
            message: "the producer was dropped before delivery".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn scenario(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("s.yaml");
        let pool = root().join("models/digits_train.jsonl");
        std::fs::write(&p, format!("name: t\npool: {}\n{body}", pool.display())).unwrap();
        p
    }

    #[test]
    fn the_same_seed_gives_the_same_stream_and_phases_do_what_they_say() {
        let d = tempfile::tempdir().unwrap();
        let p = scenario(
            d.path(),
            "seed: 3\nkeys:\n  a:\n    - {kind: clean, events: 400}\n    - {kind: covariate, events: 400, contrast: 0.5, background: 2}\n    - {kind: label, events: 3000, priors: {0: 0.5}}\n    - {kind: concept, events: 400, remap: {3: 8}}\n  b:\n    - {kind: clean, events: 10}\n",
        );
        let l = Loaded::load(&p).unwrap();
        let a: Vec<_> = l.emissions().collect();
        let b: Vec<_> = l.emissions().collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 4210);
        let evs: Vec<&Event> = a
            .iter()
            .filter_map(|e| if let Emission::Event(e) = e { Some(e) } else { None })
            .collect();
        let mean = |ph: usize| {
            let v: Vec<f64> = evs
                .iter()
                .filter(|e| e.key == "a" && e.phase == ph)
                .map(|e| {
                    serde_json::from_str::<serde_json::Value>(&e.json).unwrap()["mean_intensity"]
                        .as_f64()
                        .unwrap()
                })
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        // contrast 0.5 and background 2 move the mean intensity.
        assert!((mean(1) - (0.5 * mean(0) + 2.0)).abs() < 0.5, "{} {}", mean(0), mean(1));
        // Half of the label phase is zeros.
        let zeros = evs.iter().filter(|e| e.phase == 2 && e.label == 0).count();
        assert!((zeros as f64 / 3000.0 - 0.5).abs() < 0.04, "{zeros}");
        // The concept phase has no 3s left: they are all labelled 8.
        assert!(!evs.iter().any(|e| e.phase == 3 && e.key == "a" && e.label == 3));
        // Events interleave in event time.
        assert!(evs.windows(2).all(|w| w[0].ts <= w[1].ts));
    }

    #[test]
    fn late_labels_follow_their_events_by_the_delay() {
        let d = tempfile::tempdir().unwrap();
        let p = scenario(
            d.path(),
            "labels: {topic: labels, delay_events: 5}\nkeys:\n  a:\n    - {kind: clean, events: 20}\n",
        );
        let l = Loaded::load(&p).unwrap();
        let ems: Vec<_> = l.emissions().collect();
        assert_eq!(ems.len(), 40);
        // The first label comes after the 6th event, and events carry no label.
        let first_label = ems.iter().position(|e| matches!(e, Emission::Label { .. })).unwrap();
        assert_eq!(first_label, 6);
        let Emission::Event(e0) = &ems[0] else { panic!() };
        assert!(!e0.json.contains("\"label\""));
        let Emission::Label { json, .. } = &ems[first_label] else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["event_id"], "a-0");
        assert_eq!(v["label"], e0.label);
        assert_eq!(v["ts"], e0.ts + 500);
    }

    #[test]
    fn truth_records_phase_boundaries_and_priors() {
        let d = tempfile::tempdir().unwrap();
        let p = scenario(
            d.path(),
            "keys:\n  a:\n    - {kind: clean, events: 3, name: ref}\n    - {kind: label, events: 2, priors: {1: 1.0}}\n  b:\n    - {kind: clean, events: 4}\n",
        );
        let l = Loaded::load(&p).unwrap();
        let t = write_jsonl(&l, &d.path().join("e.jsonl"), None).unwrap();
        let lines = std::fs::read_to_string(d.path().join("e.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 9);
        assert_eq!(t.phases.len(), 3);
        let (a0, a1, b0) = (&t.phases[0], &t.phases[1], &t.phases[2]);
        assert_eq!((a0.name.as_str(), a0.events, a0.drift), ("ref", 3, false));
        assert_eq!((a1.kind.as_str(), a1.first_offset, a1.last_offset), ("label", 6, 8));
        assert_eq!(a1.priors[&1], 1.0);
        assert_eq!(a1.start_ms, a0.start_ms + 300);
        assert_eq!((b0.first_offset, b0.last_offset), (1, 7));
        // The label phase only has ones.
        for line in lines.lines().skip(6).step_by(2) {
            assert!(line.contains("\"label\":1"), "{line}");
        }
        let back = d.path().join("t.json");
        t.write(&back).unwrap();
        let again = Truth::load(&back).unwrap();
        assert_eq!(again.phases.len(), t.phases.len());
        for (x, y) in again.phases.iter().zip(&t.phases) {
            assert_eq!(
                (&x.name, x.first_offset, x.last_offset, x.end_ms),
                (&y.name, y.first_offset, y.last_offset, y.end_ms)
            );
            assert!(
                x.priors
                    .iter()
                    .zip(&y.priors)
                    .all(|(a, b)| a.0 == b.0 && (a.1 - b.1).abs() < 1e-12)
            );
        }
    }

    #[test]
    fn corruption_applies_each_change_with_its_probability() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let text = "Shares in the carmaker fell sharply after it warned of lower profits";
        assert_eq!(corrupt(text, &mut rng, [0.0; 4]), text);
        let all = corrupt(text, &mut rng, [1.0; 4]);
        assert!(all.ends_with(BOILERPLATE), "{all}");
        let body = all.strip_suffix(BOILERPLATE).unwrap().trim_end();
        assert_eq!(body, body.to_uppercase(), "upper-cased");
        let words = body.split_whitespace().count();
        assert!((3..=7).contains(&words), "cut to 20-60% of 12 words: {body}");
        assert_ne!(body, text[..body.len()].to_uppercase(), "typos swapped letters");
    }

    #[test]
    fn excluded_classes_appear_only_in_an_unseen_phase() {
        let d = tempfile::tempdir().unwrap();
        let p = scenario(
            d.path(),
            "exclude: [0]\nkeys:\n  a:\n    - {kind: clean, events: 200}\n    - {kind: unseen, events: 200, class: 0, share: 0.5}\n",
        );
        let l = Loaded::load(&p).unwrap();
        let labels: Vec<(usize, i64)> = l.events().map(|e| (e.phase, e.label)).collect();
        assert!(labels.iter().filter(|(p, _)| *p == 0).all(|(_, c)| *c != 0));
        let zeros = labels.iter().filter(|(p, c)| *p == 1 && *c == 0).count();
        assert_eq!(zeros, 100, "systematic draws give the share exactly");
        assert_eq!(l.scenario.keys["a"][1].kind(), "covariate");
    }

    /// A corpus of three topics (a, b, c), ten one-paragraph articles
    /// each, whose words name their topic.
    fn text_scenario(dir: &Path, body: &str) -> PathBuf {
        for topic in ["a", "b", "c"] {
            std::fs::create_dir_all(dir.join("bbc").join(topic)).unwrap();
            for i in 0..10 {
                let words = format!("{topic}{i} ").repeat(8);
                std::fs::write(
                    dir.join(format!("bbc/{topic}/{i:03}.txt")),
                    format!("T\n\n{}\n", words.trim()),
                )
                .unwrap();
            }
        }
        let p = dir.join("s.yaml");
        std::fs::write(&p, format!("name: t\ncorpus: bbc\n{body}")).unwrap();
        p
    }

    #[test]
    fn a_mix_phase_joins_paragraphs_of_two_drawn_topics_and_keeps_the_label() {
        let d = tempfile::tempdir().unwrap();
        let p = text_scenario(
            d.path(),
            "exclude: [2]\nkeys:\n  a:\n    - {kind: clean, events: 200}\n    - {kind: mix, events: 400, share: 0.5}\n",
        );
        let l = Loaded::load(&p).unwrap();
        let mut joined = 0;
        for e in l.events() {
            let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
            let text = v["text"].as_str().unwrap();
            let own = ["a", "b"][e.label as usize];
            let words: Vec<&str> = text.split_whitespace().collect();
            assert!(words[..8].iter().all(|w| w.starts_with(own)), "{text}");
            assert!(!text.contains('c'), "an excluded topic is never mixed in: {text}");
            match words.len() {
                8 => {}
                16 => {
                    assert_eq!(e.phase, 1, "only the mix phase joins: {text}");
                    assert!(words[8..].iter().all(|w| !w.starts_with(own)), "{text}");
                    joined += 1;
                }
                n => panic!("{n} words: {text}"),
            }
        }
        assert!((160..=240).contains(&joined), "about half of 400: {joined}");
        assert_eq!(l.scenario.keys["a"][1].kind(), "covariate");
        assert_eq!(l.scenario.keys["a"][1].name(), "mix");
        for (body, at) in [
            (
                "exclude: [1, 2]\nkeys:\n  a:\n    - {kind: mix, events: 5, share: 0.5}\n",
                "keys.a[0].kind",
            ),
            (
                "keys:\n  a:\n    - {kind: mix, events: 5, share: 1.5}\n",
                "keys.a[0].share",
            ),
            (
                "exclude: [2]\nkeys:\n  a:\n    - {kind: mix, events: 5, share: 0.5, topics: [2]}\n",
                "keys.a[0].topics: 2 is not a topic the scenario draws",
            ),
        ] {
            let e = Loaded::load(&text_scenario(d.path(), body)).unwrap_err().to_string();
            assert!(e.contains(at), "{e}");
        }
        let images = scenario(d.path(), "keys:\n  a:\n    - {kind: mix, events: 5, share: 0.5}\n");
        let e = Loaded::load(&images).unwrap_err().to_string();
        assert!(e.contains("applies to text"), "{e}");
    }

    #[test]
    fn each_phase_check_names_the_field_at_fault() {
        let d = tempfile::tempdir().unwrap();
        let phase = |p: &str| format!("keys:\n  a:\n    - {{kind: {p}, events: 5}}\n");
        // (pool, phase kind and fields, error after `keys.a[0].`)
        let cases = [
            ("table", "covariate", "kind: `covariate` does not apply to a table"),
            ("text", "covariate", "kind: `covariate` transforms images"),
            ("image", "corruption", "kind: `corruption` applies to text"),
            ("image", "real", "kind: `real` streams the rows of a `table`"),
            ("text", "corruption, casing: 2", "casing: expected a probability"),
            ("text", "unseen, class: 1, share: 0.5", "class: class 1 must be listed"),
            ("image", "covariate, contrast: 0", "contrast: expected a positive"),
            ("image", "covariate, background: 20", "background: expected -16..16"),
            ("image", "covariate, blur: 1.5", "blur: expected 0..1, got 1.5"),
            (
                "image",
                "concept, remap: {3: 11}",
                "remap: 3 → 11: both must be classes",
            ),
            (
                "image",
                "concept, remap: {}, subgroup: {g: a}",
                "subgroup: a subgroup selects rows",
            ),
            (
                "table",
                "concept, remap: {}, subgroup: {g: [a]}",
                "subgroup: g: expected a string",
            ),
        ];
        for (pool, p, at) in cases {
            let body = phase(p);
            let file = match pool {
                "table" => table_scenario(d.path(), &body),
                "text" => text_scenario(d.path(), &body),
                _ => scenario(d.path(), &body),
            };
            let e = Loaded::load(&file).unwrap_err().to_string();
            assert!(e.contains(&format!("keys.a[0].{at}")), "{p}: {e}");
        }
    }

    #[test]
    fn a_stories_phase_draws_each_topic_from_its_few_articles_at_its_prior() {
        let d = tempfile::tempdir().unwrap();
        let p = text_scenario(
            d.path(),
            "seed: 5\nkeys:\n  a:\n    - {kind: clean, events: 300}\n    - {kind: stories, events: 300, articles: 2}\n  b:\n    - {kind: stories, events: 300, articles: 2}\n",
        );
        let l = Loaded::load(&p).unwrap();
        let mut seen: BTreeMap<(String, usize), BTreeMap<i64, std::collections::BTreeSet<String>>> = BTreeMap::new();
        for e in l.events() {
            let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
            // One-paragraph articles: the first word names the article.
            let first = v["text"].as_str().unwrap().split(' ').next().unwrap().to_string();
            seen.entry((e.key.clone(), e.phase))
                .or_default()
                .entry(e.label)
                .or_default()
                .insert(first);
        }
        for ((key, phase), by_topic) in &seen {
            assert_eq!(by_topic.len(), 3, "{key}/{phase}: every topic keeps appearing");
            let articles: Vec<usize> = by_topic.values().map(|a| a.len()).collect();
            match (key.as_str(), phase) {
                ("a", 0) => assert!(articles.iter().all(|n| *n >= 8), "{articles:?}"),
                _ => assert_eq!(articles, [2, 2, 2], "{key}/{phase}"),
            }
        }
        // Keys draw their own articles, the same ones for the same seed.
        assert_ne!(seen[&("a".into(), 1)], seen[&("b".into(), 0)]);
        assert_eq!(l.stories, Loaded::load(&p).unwrap().stories);
        assert_eq!(l.scenario.keys["a"][1].kind(), "covariate");
        let e = Loaded::load(&text_scenario(
            d.path(),
            "keys:\n  a:\n    - {kind: stories, events: 5, articles: 0}\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("keys.a[0]: expected a positive integer"), "{e}");
    }

    /// A table of 40 rows of 2015 then 40 of 2016: `g` alternates a, b;
    /// label 1 on every fourth row.
    fn table_scenario(dir: &Path, body: &str) -> PathBuf {
        let rows: String = (0..80)
            .map(|i| {
                let year = 2015 + i / 40;
                let g = if i % 2 == 0 { "a" } else { "b" };
                format!(
                    "{{\"id\": {i}, \"year\": {year}, \"g\": \"{g}\", \"y\": {}, \"junk\": 1}}\n",
                    i32::from(i % 4 == 0)
                )
            })
            .collect();
        std::fs::write(dir.join("rows.jsonl"), rows).unwrap();
        let p = dir.join("s.yaml");
        std::fs::write(
            &p,
            format!("name: t\ntable: {{files: [rows.jsonl], id: id, label: y, year: year, drop: [junk], shuffle: false}}\n{body}"),
        )
        .unwrap();
        p
    }

    fn events(l: &Loaded) -> Vec<Event> {
        l.emissions()
            .filter_map(|e| if let Emission::Event(e) = e { Some(e) } else { None })
            .collect()
    }

    #[test]
    fn a_table_streams_each_row_once_in_time_order() {
        let d = tempfile::tempdir().unwrap();
        let p = table_scenario(
            d.path(),
            "interval_ms: 1000\nlabels: {topic: t.labels, delay_events: 5}\nkeys:\n  x:\n    - {kind: real, events: 20}\n    - {kind: label, events: 20, priors: {1: 0.5}}\n    - {kind: concept, events: 10, remap: {0: 1, 1: 0}, subgroup: {g: a}}\n",
        );
        let l = Loaded::load(&p).unwrap();
        let evs = events(&l);
        assert_eq!(evs.len(), 50);
        let ids: Vec<i64> = evs.iter().map(|e| e.event_id.parse().unwrap()).collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 50, "each row once");
        assert_eq!(
            &ids[..20],
            &(0..20).collect::<Vec<_>>()[..],
            "a real phase takes rows in order"
        );
        // The label phase: half of its events are of class 1 (rows 20, 24, …).
        assert_eq!(evs[20..40].iter().filter(|e| e.label == 1).count(), 10);
        // The concept phase flips only the subgroup's labels.
        for e in &evs[40..] {
            let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
            let id: i64 = e.event_id.parse().unwrap();
            let real = i64::from(id % 4 == 0);
            let flipped = if v["g"] == "a" { 1 - real } else { real };
            assert_eq!(e.label, flipped, "{v}");
            assert!(
                v.get("y").is_none() && v.get("junk").is_none(),
                "labels on a topic, dropped columns gone: {v}"
            );
        }
        // Event time: 1 January of the row's year, 1 s per earlier row of it.
        let v: serde_json::Value = serde_json::from_str(&evs[1].json).unwrap();
        assert_eq!(v["ts"], table::year_start_ms(2015) + 1000);
        assert!(evs.windows(2).all(|w| w[0].ts < w[1].ts));
        assert!(evs.iter().any(|e| e.ts >= table::year_start_ms(2016)));
        // Scenario-wide priors: a clean phase draws by class too.
        let p = table_scenario(
            d.path(),
            "priors: {1: 0.5}\nkeys:\n  x:\n    - {kind: clean, events: 30}\n",
        );
        let evs = events(&Loaded::load(&p).unwrap());
        assert_eq!(evs.iter().filter(|e| e.label == 1).count(), 15);
        let truth = write_jsonl(&Loaded::load(&p).unwrap(), &d.path().join("e.jsonl"), None).unwrap();
        assert_eq!((truth.phases[0].kind.as_str(), truth.phases[0].drift), ("clean", false));
    }

    #[test]
    fn bad_tables_say_where() {
        let d = tempfile::tempdir().unwrap();
        for (body, expect) in [
            (
                "keys:\n  x:\n    - {kind: clean, events: 81}\n",
                "keys.x[0].events: the table's 80 rows run out after 80",
            ),
            (
                "keys:\n  x:\n    - {kind: clean, events: 5}\n    - {kind: label, events: 40, priors: {1: 1.0}}\n",
                "keys.x[1].events: the rows of class 1 (20 in the table) run out after 18",
            ),
            ("keys:\n  x:\n    - {kind: covariate, events: 5}\n", "keys.x[0].kind"),
            (
                "keys:\n  x:\n    - {kind: clean, events: 5}\n  z:\n    - {kind: clean, events: 5}\n",
                "one key",
            ),
            (
                "interval_ms: 999999999\nkeys:\n  x:\n    - {kind: clean, events: 5}\n",
                "interval_ms",
            ),
            (
                "keys:\n  x:\n    - {kind: concept, events: 5, remap: {0: 1}, subgroup: {g: [1]}}\n",
                "keys.x[0].subgroup",
            ),
        ] {
            let p = table_scenario(d.path(), body);
            let e = Loaded::load(&p).expect_err(body).to_string();
            assert!(e.contains(expect), "{body}: {e}");
        }
        // A subgroup, or a `real` phase, needs a table.
        for body in [
            "keys:\n  a:\n    - {kind: concept, events: 3, remap: {3: 8}, subgroup: {g: a}}\n",
            "keys:\n  a:\n    - {kind: real, events: 3}\n",
        ] {
            let e = Loaded::load(&scenario(d.path(), body)).expect_err(body).to_string();
            assert!(e.contains("keys.a[0]") && e.contains("table"), "{e}");
        }
        // Rows out of time order, and a missing label, name file and row.
        let p = table_scenario(d.path(), "keys:\n  x:\n    - {kind: clean, events: 1}\n");
        std::fs::write(
            d.path().join("rows.jsonl"),
            "{\"id\": 1, \"year\": 2016, \"y\": 1}\n{\"id\": 2, \"year\": 2015, \"y\": 0}\n",
        )
        .unwrap();
        let e = Loaded::load(&p).unwrap_err().to_string();
        assert!(e.contains("rows.jsonl:2") && e.contains("time order"), "{e}");
        std::fs::write(d.path().join("rows.jsonl"), "{\"id\": 1, \"year\": 2016}\n").unwrap();
        let e = Loaded::load(&p).unwrap_err().to_string();
        assert!(e.contains("rows.jsonl:1") && e.contains("no integer `y`"), "{e}");
    }

    #[test]
    fn bad_scenarios_say_where() {
        let d = tempfile::tempdir().unwrap();
        for (body, expect) in [
            ("keys:\n  a:\n    - {kind: drift, events: 3}\n", "keys.a[0]"),
            ("keys:\n  a:\n    - {kind: clean, events: 0}\n", "positive"),
            (
                "keys:\n  a:\n    - {kind: label, events: 3, priors: {1: 0.7, 2: 0.6}}\n",
                "more than 1",
            ),
            (
                "keys:\n  a:\n    - {kind: label, events: 3, priors: {12: 0.5}}\n",
                "class 12",
            ),
            (
                "keys:\n  a:\n    - {kind: covariate, events: 3, contrast: -1}\n",
                "keys.a[0].contrast",
            ),
            (
                "keys:\n  a:\n    - {kind: concept, events: 3, remap: {3: 11}}\n",
                "keys.a[0].remap",
            ),
            ("keys:\n  a:\n    - {kind: clean, events: 3, colour: red}\n", "colour"),
            ("keys: {}\n", "at least one key"),
            (
                "keys:\n  a:\n    - {kind: corruption, events: 3, typos: 0.5}\n",
                "keys.a[0].kind",
            ),
            (
                "exclude: [4]\nkeys:\n  a:\n    - {kind: unseen, events: 3, class: 5, share: 0.3}\n",
                "keys.a[0].class",
            ),
            (
                "exclude: [12]\nkeys:\n  a:\n    - {kind: clean, events: 3}\n",
                "class 12",
            ),
            ("bogus: 1\nkeys:\n  a:\n    - {kind: clean, events: 3}\n", "bogus"),
        ] {
            let p = scenario(d.path(), body);
            let e = Loaded::load(&p).expect_err(body).to_string();
            assert!(e.contains(expect), "{body}: {e}");
            assert!(e.contains("s.yaml"), "{e}");
        }
        let p = d.path().join("p.yaml");
        std::fs::write(
            &p,
            "name: t\npool: nowhere.jsonl\nkeys:\n  a:\n    - {kind: clean, events: 3}\n",
        )
        .unwrap();
        let e = Loaded::load(&p).unwrap_err().to_string();
        assert!(e.contains("nowhere.jsonl") && e.contains("cannot read"), "{e}");
    }
}
