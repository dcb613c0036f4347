//! The stages of one pipeline, built and checked together: schema, decoder,
//! transform, model, windows and detectors. `validate` is building them.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use crate::alert::{self, Evaluation};
use crate::config::{ConfigError, CurrentConfig, Pipeline, ReferenceConfig};
use crate::decode::{Decoder, Rejection};
use crate::detect::kinds::LabelUse;
use crate::detect::{Detector, Detectors};
use crate::error::RuntimeError;
use crate::model::tokenizer::TextTokenizer;
use crate::model::{Model, ModelError};
use crate::schema::{EventSchema, column_names};
use crate::source::{RawRecord, file};
use crate::transform::Transform;
use crate::window::{CountGroup, Due, ReferenceMode, Sampling, TimeReference, TimeShape, TimeWindows, Windows};

/// Built stages of a pipeline.
pub struct Stages {
    pub pipeline: Pipeline,
    pub schema: Arc<EventSchema>,
    /// How events and label records are encoded (the schema's `format`).
    pub format: &'static dyn crate::decode::Format,
    transform: Option<Transform>,
    model: Option<Model>,
    detectors: Detectors,
    /// With a labels topic: the detectors that compare labels on both
    /// sides (error_rate), run on the windows of joined events.
    labelled: Option<Detectors>,
    /// With a labels topic: the detectors that need labels only in the
    /// reference (cbpe, label_shift). They run on the event windows when
    /// the reference is a file (labelled inline: at hand from the start),
    /// else on the windows of joined events, once the labels have come.
    /// Never on the event windows with a reference of joined events: which
    /// of those are complete when an event window is due depends on how
    /// fast the labels were read, and a run must evaluate as its replay.
    calibrated: Option<Detectors>,
    /// The configured detectors, in the pipeline's order.
    kinds: Vec<Arc<dyn Detector>>,
    /// Schema of batches after transform and model.
    pub scored_schema: SchemaRef,
}

impl Stages {
    /// Loads the schema and model and plans every query; any mismatch between
    /// them is reported against the pipeline file.
    pub async fn build(pipeline: Pipeline) -> Result<Self, RuntimeError> {
        let (schema, format) = load_schema(&pipeline)?;
        let kinds = crate::detect::kinds::build(&pipeline)?;
        // Loaded once: the model input and the text descriptors share it.
        let tokenizer = model_tokenizer(&pipeline)?;
        let mut current = schema.arrow_schema();
        let transform = match &pipeline.transform {
            Some(t) => {
                let descriptors = crate::transform::text_descriptors::all(tokenizer.clone());
                let tr = Transform::new(current.clone(), &t.sql, descriptors)
                    .await
                    .map_err(|e| cfg_err(&pipeline, "transform.sql", e.to_string()))?;
                current = tr.output_schema();
                Some(tr)
            }
            None => None,
        };
        let model = match &pipeline.model {
            Some(m) => {
                let model = load_model(&pipeline, m, &schema, &current, tokenizer)?;
                current = model.output_schema(&current);
                Some(model)
            }
            None => None,
        };
        check_columns(&pipeline, &schema, &current)?;
        let (detectors, [labelled, calibrated]) = plan_detectors(&pipeline, &kinds, &current).await?;
        Ok(Self {
            schema,
            format,
            transform,
            model,
            detectors,
            labelled,
            calibrated,
            kinds,
            scored_schema: current,
            pipeline,
        })
    }

    /// A decoder for this pipeline's events.
    pub fn decoder(&self) -> Decoder {
        Decoder::of(
            self.format,
            self.schema.clone(),
            self.pipeline.batch.max_event_bytes.get(),
        )
    }

    /// Transform and model on a decoded batch.
    pub async fn score(&mut self, batch: RecordBatch) -> Result<RecordBatch, RuntimeError> {
        let batch = match &self.transform {
            Some(t) => t.run(batch).await?,
            None => batch,
        };
        Ok(match &mut self.model {
            Some(m) => m.score(&batch)?,
            None => batch,
        })
    }

    /// Where the model stage's time went so far, if the pipeline has a model.
    pub fn model_timings(&self) -> Option<crate::model::ModelTimings> {
        self.model.as_ref().map(Model::timings)
    }

    /// Handles on the time each detector takes (those on labelled events last).
    pub fn detector_clocks(&self) -> Vec<crate::detect::DetectorClocks> {
        let mut c = vec![self.detectors.clocks()];
        c.extend(self.calibrated.iter().chain(&self.labelled).map(Detectors::clocks));
        c
    }

    /// Decodes and scores a list of records; returns the batches and the rejections.
    pub async fn ingest(&mut self, records: &[RawRecord]) -> Result<(Vec<RecordBatch>, Vec<Rejection>), RuntimeError> {
        let mut dec = self.decoder();
        let (mut out, rejected) = self.ingest_part(&mut dec, records).await?;
        if let Some(b) = dec.flush()? {
            out.push(self.score(b).await?);
        }
        Ok((out, rejected))
    }

    /// [`Self::ingest`] of records that `dec` goes on decoding after: full
    /// batches are scored, the rest stays in `dec`.
    async fn ingest_part(
        &mut self,
        dec: &mut Decoder,
        records: &[RawRecord],
    ) -> Result<(Vec<RecordBatch>, Vec<Rejection>), RuntimeError> {
        let max = self.pipeline.batch.max_events.get();
        let (mut out, mut rejected) = (vec![], vec![]);
        for r in records {
            if let Err(e) = dec.decode(r) {
                rejected.push(*e);
            }
            if dec.len() >= max
                && let Some(b) = dec.flush()?
            {
                out.push(self.score(b).await?);
            }
        }
        Ok((out, rejected))
    }

    /// Fresh windows as the pipeline describes them (reads a reference file).
    pub async fn windows(&mut self) -> Result<Windows, RuntimeError> {
        let w = self.pipeline.window()?.clone();
        let sampling = self.sampling(&w);
        let mut first_for = None;
        let reference = match &w.reference {
            ReferenceConfig::Previous => None,
            ReferenceConfig::FirstFor { duration_ms } => {
                first_for = Some(*duration_ms as i64);
                None
            }
            ReferenceConfig::First { size } => Some(ReferenceMode::First(size.get())),
            ReferenceConfig::File { path } => {
                let p = self.pipeline.resolve(path);
                let what = p.display().to_string();
                let records = read_in_chunks(move || file::open(&p).map_err(crate::source::SourceError::from));
                Some(
                    self.fixed_reference(records, &what, "window.reference.path", sampling.as_ref())
                        .await?,
                )
            }
            ReferenceConfig::Range { topic, from_ms, to_ms } => {
                let (records, what) = self.reference_range(topic.as_deref(), *from_ms, *to_ms)?;
                Some(
                    self.fixed_reference(records, &what, "window.reference", sampling.as_ref())
                        .await?,
                )
            }
        };
        let (key, time) = (key_column(&self.pipeline, &self.schema), self.schema.event_time.clone());
        Ok(match w.current {
            CurrentConfig::Count { size, slide } => {
                let reference = reference.ok_or_else(|| {
                    let m = "this reference needs event-time windows";
                    ConfigError::invalid(&self.pipeline.path, "window.reference", m)
                })?;
                Windows::new(key, time, reference, size.get(), slide.get())
            }
            CurrentConfig::Time { duration_ms, slide_ms } => {
                let reference = match (reference, first_for) {
                    (Some(ReferenceMode::First(n)), _) => TimeReference::First(n),
                    // Sampled, already in table form.
                    (Some(ReferenceMode::Fixed(b)), _) => TimeReference::Fixed(b),
                    (None, Some(ms)) => TimeReference::FirstFor(ms),
                    (None, None) => TimeReference::Previous,
                };
                let shape = TimeShape {
                    duration: duration_ms as i64,
                    slide: slide_ms as i64,
                    lateness: w.allowed_lateness.map_or(0, |d| d.as_millis() as i64),
                };
                let windows = TimeWindows::new(key, time, reference, shape);
                Windows::Time(match sampling {
                    Some(s) => windows.sampled(s),
                    None => windows,
                })
            }
        })
    }

    /// How windows are sampled (`window.max_sample`), counting exactly what
    /// the detectors count.
    fn sampling(&self, w: &crate::config::WindowConfig) -> Option<Sampling> {
        let max = w.max_sample?.get();
        let mut groups: Vec<CountGroup> = self.kinds.iter().flat_map(|k| k.counted()).collect();
        // The scored events of a sampled model are counted exactly (`current_scored`).
        groups.extend(
            self.model
                .as_ref()
                .and_then(Model::scored_marker)
                .map(CountGroup::presence),
        );
        let id = self.schema.event_id.clone();
        Some(Sampling::new(max, w.sample_seed.unwrap_or(0), id, groups))
    }

    /// A reference of fixed events (a file's, a topic range's), scored as
    /// its records come; sampled (`sampling`), in table form and bounded
    /// memory. `what` names them, `key` is the config key blamed when none
    /// is valid.
    async fn fixed_reference(
        &mut self,
        mut records: Chunks,
        what: &str,
        key: &str,
        sampling: Option<&Sampling>,
    ) -> Result<ReferenceMode, RuntimeError> {
        let (mut batches, mut summary) = (vec![], crate::window::sample::Summary::default());
        let (mut rows, mut rejected, mut first_rejection) = (0usize, 0usize, None);
        // One decoder for all chunks: batches (and dead-letter counts) as if read at once.
        let mut dec = Some(self.decoder());
        while let Some((scored, bad)) = self.reference_part(&mut records, &mut dec, what).await? {
            rejected += bad.len();
            first_rejection = first_rejection.or_else(|| bad.into_iter().next().map(|r| r.message));
            rows += scored.iter().map(|b| b.num_rows()).sum::<usize>();
            match sampling {
                Some(s) => scored
                    .iter()
                    .try_for_each(|b| summary.add(s, b, &vec![0; b.num_rows()]))
                    .map_err(|e| RuntimeError::Other(format!("sampling the reference {what}: {e}")))?,
                None => batches.extend(scored),
            }
        }
        if let Some(first) = first_rejection {
            tracing::warn!(reference = %what, rejected, first = %first, "reference events rejected");
        }
        if rows == 0 {
            let m = format!("{what} holds no valid event");
            return Err(RuntimeError::Config(ConfigError::invalid(&self.pipeline.path, key, m)));
        }
        tracing::info!(reference = %what, events = rows, rejected, "reference read");
        // Its offsets are not the stream's: `max_rate` measures the stream afresh.
        if let Some(m) = self.model.as_mut() {
            m.restart_sampling();
        }
        if let Some(s) = sampling {
            batches = summary
                .table(s)
                .map_err(|e| RuntimeError::Other(format!("sampling the reference {what}: {e}")))?
                .unwrap_or_default();
        }
        Ok(ReferenceMode::Fixed(batches))
    }

    /// The next chunk of a fixed reference, scored (full batches; the rest
    /// when the records end, and then `dec` is gone); None after that.
    async fn reference_part(
        &mut self,
        records: &mut Chunks,
        dec: &mut Option<Decoder>,
        what: &str,
    ) -> Result<Option<(Vec<RecordBatch>, Vec<Rejection>)>, RuntimeError> {
        let Some(d) = dec else { return Ok(None) };
        match records.recv().await {
            Some(chunk) => {
                let chunk = chunk.map_err(|e| match e {
                    crate::source::SourceError::File(f) => RuntimeError::File(f),
                    e => RuntimeError::Other(format!("window.reference: {what}: {e}")),
                })?;
                Ok(Some(self.ingest_part(d, &chunk).await?))
            }
            None => {
                let last = d.flush()?;
                *dec = None;
                let scored = match last {
                    Some(b) => vec![self.score(b).await?],
                    None => vec![],
                };
                Ok(Some((scored, vec![])))
            }
        }
    }

    /// The records of a `range` reference, read off the async workers, and
    /// what they are (topic and times, for messages).
    fn reference_range(&self, topic: Option<&str>, from_ms: i64, to_ms: i64) -> Result<(Chunks, String), RuntimeError> {
        use crate::source::range::{self, TopicRange};
        let src = self.pipeline.kafka_source("a `range` reference")?.clone();
        let topic = topic.unwrap_or(&src.topic).to_string();
        let when = |ms: i64| {
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
        };
        let what = format!("topic {topic} from {} to {}", when(from_ms), when(to_ms));
        let name = self.pipeline.name.clone();
        let range = TopicRange::Times {
            from: Some(from_ms),
            to: Some(to_ms),
        };
        Ok((read_in_chunks(move || range::open(&src, &name, &topic, &range)), what))
    }

    /// The join of late labels, when the pipeline has a labels topic.
    pub fn label_join(&self) -> Option<crate::labels::LabelJoin> {
        let l = self.pipeline.labels.as_ref()?;
        crate::labels::LabelJoin::new(
            self.scored_schema.clone(),
            self.schema.event_id.as_deref()?,
            self.schema.event_time.as_deref(),
            self.schema.label.as_deref()?,
            l.horizon_ms.get() as i64,
            l.max_pending.get(),
        )
        .ok()
    }

    /// What the scored events depend on (the model file and the scored
    /// schema): saved window states, whose `first` references hold scored
    /// events, are restored only under the same.
    pub fn scoring_id(&self) -> String {
        use sha2::{Digest, Sha256};
        let model = self.model.as_ref().map_or("none", |m| m.identity().sha256.as_str());
        let schema = Sha256::digest(format!("{:?}", self.scored_schema.fields()).as_bytes());
        let sample = self.model.as_ref().and_then(|m| m.sampling_id());
        let sample = sample.map(|s| format!(";sample={s}")).unwrap_or_default();
        format!("model={model};schema={}{sample}", hex::encode(&schema[..8]))
    }

    /// Where a restart reads a partition from so that the model scores the
    /// events from `offset` on as an uninterrupted run did
    /// (`model.sample: {max_rate}` measures the block before).
    pub fn replay_floor(&self, offset: i64) -> i64 {
        self.model.as_ref().map_or(offset, |m| m.replay_floor(offset))
    }

    /// Names of the detectors on the event windows, or (`labelled`) on the
    /// windows of events joined to their labels.
    pub fn detector_names(&self, labelled: bool) -> Vec<String> {
        self.groups(labelled).iter().flat_map(|d| d.names()).collect()
    }

    /// Whether the reference's labels are at hand from the start: a file
    /// reference (labelled inline), not the stream's first events nor a
    /// range of its topic (whose labels come on the labels topic).
    fn labelled_reference(&self) -> bool {
        matches!(
            self.pipeline.window.as_ref().map(|w| &w.reference),
            Some(ReferenceConfig::File { .. })
        )
    }

    /// The detectors on the event windows, or (`labelled`) on the windows
    /// of joined events.
    fn groups(&self, labelled: bool) -> Vec<&Detectors> {
        let calibrated = self.calibrated.iter().filter(|_| labelled != self.labelled_reference());
        match labelled {
            false => std::iter::once(&self.detectors).chain(calibrated).collect(),
            true => self.labelled.iter().chain(calibrated).collect(),
        }
    }

    /// Runs the detectors of the event windows on a window pair and builds
    /// the evaluation records.
    pub async fn evaluate(&self, due: &Due) -> Result<Vec<Evaluation>, RuntimeError> {
        self.evaluate_with(&self.groups(false), due).await
    }

    /// As [`Self::evaluate`], with the detectors of the windows of joined events.
    pub async fn evaluate_labelled(&self, due: &Due) -> Result<Vec<Evaluation>, RuntimeError> {
        self.evaluate_with(&self.groups(true), due).await
    }

    /// One offline comparison (`compare`), whose reference is labelled
    /// where it has labels: the detectors of the event windows and those
    /// that need labels only in the reference.
    pub async fn evaluate_offline(&self, due: &Due) -> Result<Vec<Evaluation>, RuntimeError> {
        let groups: Vec<&Detectors> = std::iter::once(&self.detectors).chain(&self.calibrated).collect();
        self.evaluate_with(&groups, due).await
    }

    async fn evaluate_with(&self, groups: &[&Detectors], due: &Due) -> Result<Vec<Evaluation>, RuntimeError> {
        let mut results = vec![];
        for d in groups {
            results.extend(d.evaluate(due).await?);
        }
        // With `model.sample`: how many of the current window's events were scored.
        if let Some(marker) = self.model.as_ref().and_then(Model::scored_marker) {
            let scored = crate::window::sample::present_events(&due.current, marker)
                .map_err(|e| RuntimeError::Other(format!("counting the scored events: {e}")))?;
            for c in results.iter_mut().filter_map(|r| r.coords.as_mut()) {
                c.current_scored = Some(scored);
            }
        }
        Ok(self.evaluations(results))
    }

    fn evaluations(&self, results: Vec<crate::detect::DetectorResult>) -> Vec<Evaluation> {
        let model = self.model.as_ref().map(|m| m.identity());
        let mut evals: Vec<Evaluation> = results
            .iter()
            .map(|r| alert::evaluation(&self.pipeline.name, r, self.drift_type(&r.detector), model))
            .collect();
        // Per key: which detectors drifted on this evaluation.
        let drifted: Vec<(Option<String>, String)> = evals
            .iter()
            .filter(|e| e.drift)
            .map(|e| (e.key.clone(), e.detector.clone()))
            .collect();
        for e in &mut evals {
            e.also_drifted = drifted
                .iter()
                .filter(|(k, d)| *k == e.key && *d != e.detector)
                .map(|(_, d)| d.clone())
                .collect();
        }
        // In the pipeline's order, whichever windows each detector ran on.
        evals.sort_by_key(|e| self.kinds.iter().position(|d| d.name() == e.detector));
        evals
    }

    /// The kind of drift detector `name` watches (covariate when no
    /// detector has that name).
    pub fn drift_type(&self, name: &str) -> alert::DriftType {
        self.kinds
            .iter()
            .find(|d| d.name() == name)
            .map_or(alert::DriftType::Covariate, |d| d.drift_type())
    }

    /// The configured detectors, in the pipeline's order.
    pub fn detector_configs(&self) -> &[Arc<dyn Detector>] {
        &self.kinds
    }

    /// One-line description of what was built, for `validate`.
    pub fn summary(&self) -> String {
        let p = &self.pipeline;
        let mut s = format!(
            "pipeline `{}`: schema `{}` ({} fields), {} detector(s)",
            p.name,
            self.schema.name,
            self.schema.fields.len(),
            p.detectors.len()
        );
        if let Some(m) = &self.model {
            s += &format!(", model {} (sha256 {})", m.identity().path, &m.identity().sha256[..12]);
        }
        s
    }
}

/// The pipeline's `model.tokenizer`, loaded, if it has one.
fn model_tokenizer(pipeline: &Pipeline) -> Result<Option<Arc<TextTokenizer>>, RuntimeError> {
    let Some(t) = pipeline.model.as_ref().and_then(|m| m.tokenizer.as_ref()) else {
        return Ok(None);
    };
    let tokenizer = TextTokenizer::load(&pipeline.resolve(&t.path), t.max_length.get())
        .map_err(|m| ConfigError::invalid(&pipeline.path, "model.tokenizer.path", m))?;
    Ok(Some(Arc::new(tokenizer)))
}

/// The key column: the pipeline's `window.key`, else the schema's `key`.
pub fn key_column(p: &Pipeline, s: &EventSchema) -> Option<String> {
    p.window.as_ref().and_then(|w| w.key.clone()).or_else(|| s.key.clone())
}

/// Loads and builds a pipeline file: what `validate` does.
pub async fn validate(path: &Path) -> Result<Stages, RuntimeError> {
    let p = Pipeline::load(path)?;
    Stages::build(p).await
}

/// A problem with the pipeline's `key`, at its place in the pipeline file.
fn cfg_err(pipeline: &Pipeline, key: impl Into<String>, msg: impl Into<String>) -> RuntimeError {
    ConfigError::invalid(&pipeline.path, key, msg).into()
}

/// The pipeline's schema file and the format of its events.
fn load_schema(pipeline: &Pipeline) -> Result<(Arc<EventSchema>, &'static dyn crate::decode::Format), RuntimeError> {
    let schema_path = pipeline.resolve(&pipeline.schema);
    if !schema_path.is_file() {
        let m = format!("schema file {} not found", schema_path.display());
        return Err(cfg_err(pipeline, "schema", m));
    }
    let schema = Arc::new(EventSchema::load(&schema_path)?);
    let format = crate::decode::format(&schema.format).ok_or_else(|| {
        let known: Vec<&str> = crate::decode::FORMATS.iter().map(|f| f.name()).collect();
        let m = format!(
            "unknown format `{}`: known formats are {}",
            schema.format,
            known.join(", ")
        );
        ConfigError::invalid(&schema_path, "format", m)
    })?;
    Ok((schema, format))
}

/// The model of the pipeline's `model` section over columns `current`;
/// problems of the model file itself are problems of that section.
fn load_model(
    pipeline: &Pipeline,
    m: &crate::config::ModelConfig,
    schema: &EventSchema,
    current: &SchemaRef,
    tokenizer: Option<Arc<TextTokenizer>>,
) -> Result<Model, RuntimeError> {
    let input =
        crate::model::input::build(m, schema, current, tokenizer).map_err(|e| cfg_err(pipeline, e.key, e.message))?;
    let path = pipeline.resolve(&m.path);
    let head = m.head.as_ref().map(|h| pipeline.resolve(&h.path));
    let mut model = Model::load(m, &path, input, head.as_deref()).map_err(|e| match e {
        ModelError::File { path: ref p, .. } | ModelError::Invalid { path: ref p, .. } => {
            let key = if Some(p) == head.as_ref() {
                "model.head.path"
            } else {
                "model.path"
            };
            cfg_err(pipeline, key, e.to_string())
        }
        ModelError::Mismatch { .. } => cfg_err(pipeline, "model", e.to_string()),
        other => other.into(),
    })?;
    if let Some(sample) = &m.sample {
        let id = schema.event_id.as_deref().ok_or_else(|| {
            let m = "sampling chooses events by a hash of their id: the schema must name its `event_id`";
            cfg_err(pipeline, "model.sample", m)
        })?;
        use crate::model::sample::{Rule, Sampler};
        let (rule, key) = match (sample.fraction, sample.max_rate) {
            (Some(f), _) => (Rule::Fraction(f), "model.sample.fraction"),
            (None, Some(per_second)) => {
                let block = sample.rate_block() as i64;
                (Rule::MaxRate { per_second, block }, "model.sample.max_rate")
            }
            (None, None) => return Err(cfg_err(pipeline, "model.sample", "give `fraction` or `max_rate`")),
        };
        let sampler = Sampler::new(rule, id, schema.event_time.as_deref()).map_err(|e| cfg_err(pipeline, key, e))?;
        model.sample_by(sampler);
    }
    Ok(model)
}

/// The columns the windows, the label join and a reference file need.
fn check_columns(pipeline: &Pipeline, schema: &EventSchema, current: &SchemaRef) -> Result<(), RuntimeError> {
    if let Some(k) = key_column(pipeline, schema)
        && current.field_with_name(&k).is_err()
    {
        let m = format!("no column `{k}` (columns: {})", column_names(current));
        return Err(cfg_err(pipeline, "window.key", m));
    }
    if let Some(l) = &pipeline.labels {
        let need = |what: &str, v: &Option<String>| {
            v.clone().ok_or_else(|| {
                let m = format!(
                    "joining labels from `{}` needs the schema to name its `{what}` field",
                    l.topic
                );
                cfg_err(pipeline, "labels", m)
            })
        };
        let id = need("event_id", &schema.event_id)?;
        let label = need("label", &schema.label)?;
        crate::labels::LabelJoin::new(current.clone(), &id, schema.event_time.as_deref(), &label, 0, 1)
            .map_err(|e| cfg_err(pipeline, "labels", e))?;
    }
    if let Some(ReferenceConfig::File { path }) = pipeline.window.as_ref().map(|w| &w.reference) {
        let p = pipeline.resolve(path);
        if !p.is_file() {
            return Err(cfg_err(
                pipeline,
                "window.reference.path",
                format!("file {} not found", p.display()),
            ));
        }
    }
    Ok(())
}

/// Checks each detector against the scored columns and plans its queries,
/// in three groups: on the event windows, and with a labels topic, on the
/// windows of joined events (`Joined`) and where their reference labels
/// are (`Reference`; see [`Stages`]).
async fn plan_detectors(
    pipeline: &Pipeline,
    kinds: &[Arc<dyn Detector>],
    current: &SchemaRef,
) -> Result<(Detectors, [Option<Detectors>; 2]), RuntimeError> {
    let at = |i: usize, key: &str| match key {
        "" => format!("detectors[{i}]"),
        key => format!("detectors[{i}].{key}"),
    };
    for (i, d) in kinds.iter().enumerate() {
        d.check(current)
            .map_err(|e| cfg_err(pipeline, at(i, &e.key), e.message))?;
    }
    let plan_err = |e: crate::detect::DetectError| {
        let i = kinds.iter().position(|d| d.name() == e.detector()).unwrap_or(0);
        cfg_err(pipeline, at(i, kinds[i].query_key()), e.to_string())
    };
    let late = pipeline.labels.is_some();
    let group = |only: LabelUse| -> Vec<Arc<dyn Detector>> {
        let runs_here = |d: &&Arc<dyn Detector>| {
            if late {
                d.labels() == only
            } else {
                only == LabelUse::None
            }
        };
        kinds.iter().filter(runs_here).cloned().collect()
    };
    let events = Detectors::new(current, &group(LabelUse::None))
        .await
        .map_err(plan_err)?;
    let mut labelled = [None, None];
    for (slot, only) in labelled.iter_mut().zip([LabelUse::Joined, LabelUse::Reference]) {
        let g = group(only);
        if !g.is_empty() {
            *slot = Some(Detectors::new(current, &g).await.map_err(plan_err)?);
        }
    }
    Ok((events, labelled))
}

/// Records read in chunks off the async workers (the first error ends them).
type Chunks = tokio::sync::mpsc::Receiver<Result<Vec<RawRecord>, crate::source::SourceError>>;

/// Records per chunk of a fixed reference: what is held at once while it is read.
const REFERENCE_CHUNK: usize = 20_000;

/// Reads the source `open` gives on a blocking thread, a chunk at a time,
/// so that a large reference is scored (and sampled) as it is read.
fn read_in_chunks<S>(open: impl FnOnce() -> Result<S, crate::source::SourceError> + Send + 'static) -> Chunks
where
    S: IntoIterator<Item = Result<RawRecord, crate::source::SourceError>>,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(REFERENCE_CHUNK);
        let source = match open() {
            Ok(s) => s,
            Err(e) => return drop(tx.blocking_send(Err(e))),
        };
        for r in source {
            match r {
                Ok(r) => chunk.push(r),
                Err(e) => return drop(tx.blocking_send(Err(e))),
            }
            if chunk.len() == REFERENCE_CHUNK && tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
                return; // the reader is gone
            }
        }
        if !chunk.is_empty() {
            drop(tx.blocking_send(Ok(chunk)));
        }
    });
    rx
}
