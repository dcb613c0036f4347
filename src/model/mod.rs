//! The model stage: an ONNX Runtime session (ort, loaded dynamically) run on
//! whole batches; outputs become columns `embedding` (FixedSizeList<Float32>),
//! `logits` (FixedSizeList<Float32>) and `predicted_class` (Int64, argmax).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::SessionInputValue;
use ort::value::{DynValue, TensorElementType, TensorRef};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub mod inspect;
mod pool;
pub mod sample;
pub mod tokenizer;

use crate::config::{ModelConfig, Pooling};
use crate::schema::tensor_type;

pub use crate::config::{EMBEDDING_COL, LOGITS_COL, PREDICTED_CLASS_COL, PROBABILITIES_COL};

pub mod input;

/// Version of the ONNX Runtime shared library we load (ort's API 31).
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.31.1";

/// Model-stage failures.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "ONNX Runtime library not found (looked in: {tried}). Run `scripts/setup.sh` to fetch it, or set ORT_DYLIB_PATH to a {ORT_LIB_NAME}"
    )]
    RuntimeMissing { tried: String },
    #[error("ONNX Runtime library {path} could not be loaded: {detail}")]
    RuntimeLoad { path: PathBuf, detail: String },
    #[error("model {path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("model {path} is not a valid ONNX model: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("model {path}: {detail}")]
    Mismatch { path: PathBuf, detail: String },
    #[error("model {path}: inference failed: {detail}")]
    Inference { path: PathBuf, detail: String },
}

/// Which model an alert is about.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelIdentity {
    /// File path as configured.
    pub path: String,
    /// sha256 of the file, hex.
    pub sha256: String,
    /// ONNX metadata: producer, graph name, and custom metadata properties.
    pub metadata: BTreeMap<String, String>,
    /// With `model.sample: {fraction}`: the share of events the model
    /// scores; the statistics on its outputs are then over that sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<f64>,
    /// With `model.sample: {max_rate}`: the events a second of event time
    /// per partition it scores at most (the window's `current_scored` says
    /// how many it scored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<f64>,
}

static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Candidate locations of the ONNX Runtime library, in search order.
pub fn runtime_candidates() -> Vec<PathBuf> {
    let mut v = vec![];
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        v.push(PathBuf::from(p));
    }
    v.push(Path::new(".deps/onnxruntime").join(ORT_LIB_NAME));
    if let Ok(exe) = std::env::current_exe()
        && let Some(d) = exe.parent()
    {
        v.push(d.join(ORT_LIB_NAME));
    }
    v.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".deps/onnxruntime")
            .join(ORT_LIB_NAME),
    );
    v.push(PathBuf::from("/usr/local/lib").join(ORT_LIB_NAME));
    v
}

/// The process-wide ONNX Runtime environment (only one may exist per process).
pub fn environment() -> Result<&'static Environment, ModelError> {
    let r = ENV.get_or_init(|| {
        // An explicit ORT_DYLIB_PATH is obeyed, not silently replaced by another copy.
        if let Ok(p) = std::env::var("ORT_DYLIB_PATH")
            && !Path::new(&p).is_file()
        {
            return Err(format!("missing:ORT_DYLIB_PATH={p} (not a file)"));
        }
        let cands = runtime_candidates();
        let Some(lib) = cands.iter().find(|p| p.is_file()) else {
            return Err(format!(
                "missing:{}",
                cands
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let b = ort::init_from(lib).map_err(|e| format!("load:{}:{e}", lib.display()))?;
        b.with_name("driftwatch")
            .build()
            .map_err(|e| format!("load:{}:{e}", lib.display()))
    });
    match r {
        Ok(e) => Ok(e),
        Err(s) if s.starts_with("missing:") => Err(ModelError::RuntimeMissing {
            tried: s[8..].to_string(),
        }),
        Err(s) => {
            let rest = &s[5..];
            let (p, d) = rest.split_once(':').unwrap_or((rest, ""));
            Err(ModelError::RuntimeLoad {
                path: p.into(),
                detail: d.to_string(),
            })
        }
    }
}

/// A loaded model, ready to score batches.
pub struct Model {
    session: Session,
    path: PathBuf,
    input: Box<dyn input::ModelInput>,
    outputs: Vec<OutputSpec>,
    /// The int64 output of predicted classes (`model.outputs.label`), if any.
    label: Option<String>,
    pooling: Pooling,
    normalize: bool,
    head: Option<Head>,
    batch_size: usize,
    identity: ModelIdentity,
    timings: ModelTimings,
    /// `model.sample`: which events are scored (all when none).
    sampler: Option<sample::Sampler>,
}

/// Where the model stage's time went since the model was loaded (for the
/// benchmark: tokenization must stay a small share of inference).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelTimings {
    /// Turning columns into input tensors (tokenizing, padding).
    pub prepare: std::time::Duration,
    /// ONNX Runtime on those tensors, pooling included (the head included).
    pub infer: std::time::Duration,
    /// Events that came to the model stage, and those it scored (fewer
    /// with `model.sample`).
    pub events: u64,
    pub scored: u64,
}

struct OutputSpec {
    onnx_name: String,
    column: &'static str,
    dim: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("outputs", &self.outputs.iter().map(|o| o.column).collect::<Vec<_>>())
            .finish()
    }
}

fn file_err(path: &Path, detail: impl Into<String>) -> ModelError {
    ModelError::File {
        path: path.into(),
        detail: detail.into(),
    }
}

fn inference_err(path: &Path, detail: String) -> ModelError {
    ModelError::Inference {
        path: path.into(),
        detail,
    }
}

/// An ONNX Runtime session of the file at `path`.
fn open_session(path: &Path, threads: usize) -> Result<(Session, Vec<u8>), ModelError> {
    let meta = std::fs::metadata(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(file_err(path, "is not a regular file"));
    }
    let bytes = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    let env = environment()?;
    let invalid = |e: String| ModelError::Invalid {
        path: path.into(),
        detail: e,
    };
    let session = Session::builder(env)
        .map_err(|e| invalid(e.to_string()))?
        .with_intra_threads(threads)
        .map_err(|e| invalid(e.to_string()))?
        .commit_from_memory(&bytes)
        .map_err(|e| invalid(e.to_string()))?;
    Ok((session, bytes))
}

/// Checks that `session` has a tensor output `name` of element type `want`;
/// a ZipMap (skl2onnx's default for probabilities) is refused with the fix.
fn check_output(session: &Session, name: &str, want: TensorElementType) -> Result<(), String> {
    let zipmap_fix = "a ZipMap (a sequence of maps): export the model with skl2onnx's `options={'zipmap': False}` (or `options={id(model): {'zipmap': False}}`) to get a probabilities tensor";
    let Some(o) = session.outputs().iter().find(|o| o.name() == name) else {
        let mut msg = format!("no output named `{name}` (outputs: {})", output_names(session));
        if session.outputs().iter().any(|o| o.dtype().tensor_type().is_none()) {
            msg += &format!("; one of them is not a tensor, perhaps {zipmap_fix}");
        }
        return Err(msg);
    };
    match o.dtype().tensor_type() {
        None => Err(format!("output `{name}` is {zipmap_fix}")),
        Some(t) if t != want => Err(format!("output `{name}` is {t:?}, expected {want:?}")),
        Some(_) => Ok(()),
    }
}

fn output_names(session: &Session) -> String {
    session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The model's float outputs the config names (embedding, logits,
/// probabilities; logits come from the head when there is one), each
/// checked to be there and of float type, their sizes not yet known; and
/// the label output, if named, checked to be int64.
fn output_specs(session: &Session, cfg: &ModelConfig, with_head: bool) -> Result<Vec<OutputSpec>, String> {
    let logits = if with_head { &None } else { &cfg.outputs.logits };
    if let Some(n) = &cfg.outputs.label {
        check_output(session, n, TensorElementType::Int64)?;
    }
    let mut outputs = vec![];
    let wanted = [
        (&cfg.outputs.embedding, EMBEDDING_COL),
        (logits, LOGITS_COL),
        (&cfg.outputs.probabilities, PROBABILITIES_COL),
    ];
    for (want, column) in wanted {
        if let Some(n) = want {
            check_output(session, n, TensorElementType::Float32)?;
            outputs.push(OutputSpec {
                onnx_name: n.clone(),
                column,
                dim: 0,
            });
        }
    }
    if with_head && outputs.is_empty() {
        return Err("model.head needs the embedding output (model.outputs.embedding)".into());
    }
    Ok(outputs)
}

impl Model {
    /// Loads the model at `path` (already resolved), checks its inputs
    /// against what `input` feeds and its outputs against the config, and
    /// runs one probe inference to learn the output sizes. `head` is the
    /// resolved path of `model.head`, if any.
    pub fn load(
        cfg: &ModelConfig,
        path: &Path,
        mut input: Box<dyn input::ModelInput>,
        head: Option<&Path>,
    ) -> Result<Self, ModelError> {
        let (session, bytes) = open_session(path, cfg.threads.get())?;
        let mismatch = |d: String| ModelError::Mismatch {
            path: path.into(),
            detail: d,
        };
        input.check(&session).map_err(mismatch)?;
        let outputs = output_specs(&session, cfg, head.is_some()).map_err(mismatch)?;
        let identity = identity(&session, path, &bytes);
        let probe = input.probe().map_err(mismatch)?;
        let described = input.probe_description();
        let mut m = Model {
            session,
            path: path.into(),
            input,
            outputs,
            label: cfg.outputs.label.clone(),
            pooling: cfg.pooling,
            normalize: cfg.normalize,
            head: None,
            batch_size: cfg.batch_size.get(),
            identity,
            timings: ModelTimings::default(),
            sampler: None,
        };
        // Probe: one neutral event tells the output sizes and proves the model runs.
        let (outs, _) = m
            .infer(probe.inputs, probe.mask.as_ref(), 1)
            .map_err(|e| mismatch(format!("fails on {described}: {e}")))?;
        for (spec, (_, dim)) in m.outputs.iter_mut().zip(outs) {
            spec.dim = dim;
        }
        if let Some(h) = head {
            let dim = m.outputs[0].dim;
            m.head = Some(Head::load(h, cfg, dim)?);
        }
        Ok(m)
    }

    /// Identity (hash and metadata) for alerts.
    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// Where the time went since load.
    pub fn timings(&self) -> ModelTimings {
        self.timings
    }

    /// Schema after the model stage has appended its columns to `input`.
    pub fn output_schema(&self, input: &Schema) -> SchemaRef {
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        for o in &self.outputs {
            fields.push(Field::new(o.column, tensor_type(o.dim), true));
        }
        if let Some(h) = &self.head {
            fields.push(Field::new(LOGITS_COL, tensor_type(h.dim), true));
        }
        if self.predicts() {
            fields.push(Field::new(PREDICTED_CLASS_COL, DataType::Int64, true));
        }
        Arc::new(Schema::new(fields))
    }

    /// Whether a `predicted_class` column comes out: from the label output,
    /// else the argmax of the logits (the head's included) or probabilities.
    fn predicts(&self) -> bool {
        self.label.is_some()
            || self.head.is_some()
            || self
                .outputs
                .iter()
                .any(|o| o.column == LOGITS_COL || o.column == PROBABILITIES_COL)
    }

    fn failed(&self, detail: String) -> ModelError {
        inference_err(&self.path, detail)
    }

    /// Runs one call of `n` events and returns each float output's values
    /// per event (pooled and normalised as configured) and per-event size,
    /// and the label output's classes.
    fn infer(
        &mut self,
        inputs: Vec<(String, SessionInputValue<'_>)>,
        mask: Option<&input::TokenMask>,
        n: usize,
    ) -> Result<Inferred, ModelError> {
        let path = self.path.clone();
        let failed = |detail: String| inference_err(&path, detail);
        let shaping = Shaping {
            pooling: self.pooling,
            normalize: self.normalize,
            mask,
            n,
        };
        let outs = self.session.run(inputs).map_err(|e| failed(e.to_string()))?;
        let output = |name: &str| outs.get(name).ok_or_else(|| format!("output `{name}` missing"));
        let res = self
            .outputs
            .iter()
            .map(|o| output(&o.onnx_name).and_then(|v| shaping.float_output(v, o)))
            .collect::<Result<Vec<_>, String>>()
            .map_err(failed)?;
        let labels = match &self.label {
            Some(name) => Some(output(name).and_then(|v| label_output(v, name, n)).map_err(failed)?),
            None => None,
        };
        Ok((res, labels))
    }

    /// Scores only the events `sampler` keeps (see [`sample`]).
    pub fn sample_by(&mut self, sampler: sample::Sampler) {
        match sampler.rule() {
            sample::Rule::Fraction(f) => self.identity.sample = Some(f),
            sample::Rule::MaxRate { per_second, .. } => self.identity.max_rate = Some(per_second),
        }
        self.sampler = Some(sampler);
    }

    /// What the scored events depend on beside the file: the sampling rule.
    pub fn sampling_id(&self) -> Option<String> {
        self.sampler.as_ref().map(|s| format!("{:?}", s.rule()))
    }

    /// Forgets the rate measures of `model.sample: {max_rate}`: the events
    /// scored next are of another source (a stream after its reference file).
    pub fn restart_sampling(&mut self) {
        if let Some(s) = self.sampler.as_mut() {
            s.forget_rates();
        }
    }

    /// Where a restart reads a partition from so that the events from
    /// `offset` on are scored as in an uninterrupted run (see [`sample`]).
    pub fn replay_floor(&self, offset: i64) -> i64 {
        self.sampler.as_ref().map_or(offset, |s| s.replay_floor(offset))
    }

    /// The column that is null exactly where an event was not scored (its
    /// first output), when the model scores a sample.
    pub fn scored_marker(&self) -> Option<&str> {
        self.sampler.as_ref()?;
        self.outputs
            .first()
            .map(|o| o.column)
            .or(self.head.as_ref().map(|_| LOGITS_COL))
            .or(self.predicts().then_some(PREDICTED_CLASS_COL))
    }

    /// The batch with the model's output columns (null where an event is
    /// not scored: no input, or left out of `model.sample`).
    pub fn score(&mut self, batch: &RecordBatch) -> Result<RecordBatch, ModelError> {
        self.timings.events += batch.num_rows() as u64;
        let Some(sampler) = self.sampler.as_mut() else {
            self.timings.scored += batch.num_rows() as u64;
            return self.score_all(batch);
        };
        let mask = sampler.mask(batch);
        let failed = |e: datafusion::arrow::error::ArrowError| self.failed(e.to_string());
        let mask = mask.map_err(failed)?;
        let kept = datafusion::arrow::compute::filter_record_batch(batch, &mask).map_err(failed)?;
        self.timings.scored += kept.num_rows() as u64;
        let scored = self.score_all(&kept)?;
        let schema = self.output_schema(batch.schema().as_ref());
        sample::scatter(batch, &mask, &scored, schema).map_err(|e| self.failed(e.to_string()))
    }

    /// Runs the calls of a batch of `n` events: each float output's values
    /// and the label output's classes, at the events' rows.
    fn infer_chunks(&mut self, chunks: Vec<input::Chunk<'_>>, n: usize) -> Result<Outputs, ModelError> {
        let mut columns: Vec<Vec<f32>> = self.outputs.iter().map(|o| vec![0f32; n * o.dim]).collect();
        let mut labels = self.label.as_ref().map(|_| vec![0i64; n]);
        for chunk in chunks {
            let (outs, chunk_labels) = self.infer(chunk.inputs, chunk.mask.as_ref(), chunk.rows.len())?;
            if let (Some(all), Some(got)) = (labels.as_mut(), chunk_labels) {
                for (row, class) in chunk.rows.iter().zip(got) {
                    all[*row] = class;
                }
            }
            for (j, (data, dim)) in outs.into_iter().enumerate() {
                if dim != self.outputs[j].dim {
                    return Err(self.failed(format!(
                        "output `{}` changed size from {} to {dim}",
                        self.outputs[j].onnx_name, self.outputs[j].dim
                    )));
                }
                for (values, row) in data.chunks_exact(dim.max(1)).zip(&chunk.rows) {
                    columns[j][row * dim..(row + 1) * dim].copy_from_slice(values);
                }
            }
        }
        Ok((columns, labels))
    }

    fn score_all(&mut self, batch: &RecordBatch) -> Result<RecordBatch, ModelError> {
        let mismatch = |d: String| ModelError::Mismatch {
            path: self.path.clone(),
            detail: d,
        };
        let n = batch.num_rows();
        let started = std::time::Instant::now();
        let chunks = self.input.chunks(batch, self.batch_size).map_err(mismatch)?;
        let nulls = self.input.nulls(batch).map_err(mismatch)?;
        let prepared = std::time::Instant::now();
        let (columns, labels) = self.infer_chunks(chunks, n)?;
        let head_logits = match &mut self.head {
            Some(h) => Some(h.score(&columns[0], n, self.batch_size)?),
            None => None,
        };
        self.timings.prepare += prepared - started;
        self.timings.infer += prepared.elapsed();
        let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
        let mut predicted = None;
        let outputs = self.outputs.iter().map(|o| (o.column, o.dim));
        let head = self.head.as_ref().map(|h| (LOGITS_COL, h.dim));
        for ((column, dim), data) in outputs.chain(head).zip(columns.into_iter().chain(head_logits)) {
            // The logits decide over the probabilities when both are kept.
            let argmax_of = column == LOGITS_COL || (column == PROBABILITIES_COL && predicted.is_none());
            if argmax_of && labels.is_none() {
                predicted = Some(Int64Array::new(
                    data.chunks(dim.max(1)).map(argmax).collect::<Vec<i64>>().into(),
                    nulls.clone(),
                ));
            }
            arrays.push(float_list(data, dim, nulls.clone()));
        }
        if let Some(l) = labels {
            predicted = Some(Int64Array::new(l.into(), nulls.clone()));
        }
        if let Some(p) = predicted {
            arrays.push(Arc::new(p));
        }
        RecordBatch::try_new(self.output_schema(batch.schema().as_ref()), arrays)
            .map_err(|e| self.failed(e.to_string()))
    }
}

/// How one call's float outputs become per-event values.
struct Shaping<'a> {
    pooling: Pooling,
    normalize: bool,
    /// The tokens each event has, for pooling token embeddings.
    mask: Option<&'a input::TokenMask>,
    /// Events in the call.
    n: usize,
}

impl Shaping<'_> {
    /// Output `o`'s values per event (token embeddings pooled, the
    /// embedding normalised as configured) and their size per event.
    fn float_output(&self, v: &DynValue, o: &OutputSpec) -> Result<(Vec<f32>, usize), String> {
        let n = self.n;
        let (shape, data) = v
            .try_extract_tensor::<f32>()
            .map_err(|e| format!("output `{}`: {e}", o.onnx_name))?;
        if shape.is_empty() || shape[0] != n as i64 {
            return Err(format!(
                "output `{}` has shape {:?}, expected batch {n} first",
                o.onnx_name,
                &shape[..]
            ));
        }
        let mut values = if o.column == EMBEDDING_COL && shape.len() == 3 {
            let (tokens, dim) = (shape[1] as usize, shape[2] as usize);
            let mask = self.mask;
            if mask.is_some_and(|m| m.tokens != tokens) {
                return Err(format!(
                    "output `{}` has {tokens} positions per event, the input {}",
                    o.onnx_name,
                    mask.map_or(0, |m| m.tokens)
                ));
            }
            pool::pool(self.pooling, data, n, tokens, dim, mask.map(|m| m.kept.as_slice()))
        } else {
            data.to_vec()
        };
        let dim = values.len() / n.max(1);
        if self.normalize && o.column == EMBEDDING_COL {
            pool::l2_normalize(&mut values, dim);
        }
        Ok((values, dim))
    }
}

/// The label output `name`'s classes: one per event of the call's `n`.
fn label_output(v: &DynValue, name: &str, n: usize) -> Result<Vec<i64>, String> {
    let (shape, data) = v
        .try_extract_tensor::<i64>()
        .map_err(|e| format!("output `{name}`: {e}"))?;
    if data.len() != n || shape.first() != Some(&(n as i64)) {
        return Err(format!(
            "output `{name}` has shape {:?}, expected one class per event ([{n}])",
            &shape[..]
        ));
    }
    Ok(data.to_vec())
}

/// A batch's outputs: each float output's values, at the events' rows, and
/// the classes of the label output, if any.
type Outputs = (Vec<Vec<f32>>, Option<Vec<i64>>);

/// One inference call's outputs: each float output's values and size per
/// event, and the classes of the label output, if any.
type Inferred = (Vec<(Vec<f32>, usize)>, Option<Vec<i64>>);

fn float_list(data: Vec<f32>, dim: usize, nulls: Option<NullBuffer>) -> ArrayRef {
    let field = Arc::new(Field::new_list_field(DataType::Float32, false));
    Arc::new(FixedSizeListArray::new(
        field,
        dim as i32,
        Arc::new(Float32Array::from(data)),
        nulls,
    ))
}

/// `model.head`: a second model from the embedding to class scores.
struct Head {
    session: Session,
    path: PathBuf,
    input_name: String,
    output_name: String,
    embedding: usize,
    /// Classes (the output's size per event).
    dim: usize,
}

impl Head {
    fn load(path: &Path, cfg: &ModelConfig, embedding: usize) -> Result<Self, ModelError> {
        let (session, _) = open_session(path, cfg.threads.get())?;
        let mismatch = |d: String| ModelError::Mismatch {
            path: path.into(),
            detail: d,
        };
        let [input] = session.inputs() else {
            return Err(mismatch(format!(
                "a head has one input (the embedding), this one has {}",
                session.inputs().len()
            )));
        };
        let input_name = input.name().to_string();
        let configured = cfg.head.as_ref().and_then(|h| h.output.clone());
        let output_name = match (configured, session.outputs()) {
            (Some(n), outs) if outs.iter().any(|o| o.name() == n) => n,
            (Some(n), _) => {
                return Err(mismatch(format!(
                    "no output named `{n}` (outputs: {})",
                    output_names(&session)
                )));
            }
            (None, [only]) => only.name().to_string(),
            (None, _) => {
                return Err(mismatch(format!(
                    "has outputs {}; set model.head.output",
                    output_names(&session)
                )));
            }
        };
        let mut head = Head {
            session,
            path: path.into(),
            input_name,
            output_name,
            embedding,
            dim: 0,
        };
        let probe = head
            .score(&vec![0f32; embedding], 1, 1)
            .map_err(|e| mismatch(format!("fails on one embedding of {embedding} zeros: {e}")))?;
        head.dim = probe.len();
        Ok(head)
    }

    /// Class scores of the `n` embeddings in `embeddings`, `batch` at a time.
    fn score(&mut self, embeddings: &[f32], n: usize, batch: usize) -> Result<Vec<f32>, ModelError> {
        let failed = |detail: String| inference_err(&self.path, detail);
        let mut out = Vec::with_capacity(n * self.dim);
        for part in embeddings.chunks(batch.max(1) * self.embedding.max(1)) {
            let k = part.len() / self.embedding.max(1);
            let tensor = TensorRef::from_array_view(([k, self.embedding], part)).map_err(|e| failed(e.to_string()))?;
            let outs = self
                .session
                .run(vec![(self.input_name.clone(), SessionInputValue::from(tensor))])
                .map_err(|e| failed(e.to_string()))?;
            let (shape, data) = outs
                .get(&self.output_name)
                .ok_or_else(|| failed(format!("output `{}` missing", self.output_name)))?
                .try_extract_tensor::<f32>()
                .map_err(|e| failed(format!("output `{}`: {e}", self.output_name)))?;
            if shape.len() != 2 || shape[0] != k as i64 {
                return Err(failed(format!(
                    "output `{}` has shape {:?}, expected [{k}, classes]",
                    self.output_name,
                    &shape[..]
                )));
            }
            out.extend_from_slice(data);
        }
        Ok(out)
    }
}

fn argmax(xs: &[f32]) -> i64 {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best as i64
}

fn identity(session: &Session, path: &Path, bytes: &[u8]) -> ModelIdentity {
    let mut metadata = BTreeMap::new();
    if let Ok(m) = session.metadata() {
        for (k, v) in [
            ("producer", m.producer()),
            ("graph_name", m.name()),
            ("description", m.description()),
            ("domain", m.domain()),
        ] {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                metadata.insert(k.to_string(), v);
            }
        }
        if let Some(v) = m.version() {
            metadata.insert("model_version".into(), v.to_string());
        }
        if let Ok(keys) = m.custom_keys() {
            for k in keys {
                if let Some(v) = m.custom(&k) {
                    metadata.insert(k, v);
                }
            }
        }
    }
    ModelIdentity {
        path: path.display().to_string(),
        sha256: hex::encode(Sha256::digest(bytes)),
        metadata,
        sample: None,
        max_rate: None,
    }
}
