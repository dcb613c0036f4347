//! The model stage: an ONNX Runtime session (ort, loaded dynamically) run on
//! whole batches; outputs become columns `embedding` (FixedSizeList<Float32>),
//! `logits` (FixedSizeList<Float32>) and `predicted_class` (Int64, argmax).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::SessionInputValue;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub mod inspect;

use crate::config::ModelConfig;
use crate::schema::tensor_type;

pub use crate::config::{EMBEDDING_COL, LOGITS_COL, PREDICTED_CLASS_COL};

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
    batch_size: usize,
    identity: ModelIdentity,
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

impl Model {
    /// Loads the model at `path` (already resolved), checks its inputs
    /// against what `input` feeds and its outputs against the config, and
    /// runs one probe inference to learn the output sizes.
    pub fn load(cfg: &ModelConfig, path: &Path, mut input: Box<dyn input::ModelInput>) -> Result<Self, ModelError> {
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
            .with_intra_threads(cfg.threads.get())
            .map_err(|e| invalid(e.to_string()))?
            .commit_from_memory(&bytes)
            .map_err(|e| invalid(e.to_string()))?;
        let mismatch = |d: String| ModelError::Mismatch {
            path: path.into(),
            detail: d,
        };
        let names = |o: &[ort::value::Outlet]| o.iter().map(|o| o.name().to_string()).collect::<Vec<_>>().join(", ");
        input.check(&session).map_err(mismatch)?;
        let mut outputs = vec![];
        for (want, column) in [
            (&cfg.outputs.embedding, EMBEDDING_COL),
            (&cfg.outputs.logits, LOGITS_COL),
        ] {
            if let Some(n) = want {
                if !session.outputs().iter().any(|o| o.name() == n) {
                    return Err(mismatch(format!(
                        "no output named `{n}` (outputs: {})",
                        names(session.outputs())
                    )));
                }
                outputs.push(OutputSpec {
                    onnx_name: n.clone(),
                    column,
                    dim: 0,
                });
            }
        }
        let identity = identity(&session, path, &bytes);
        let probe = input.probe().map_err(mismatch)?;
        let mut m = Model {
            session,
            path: path.into(),
            input,
            outputs,
            batch_size: cfg.batch_size.get(),
            identity,
        };
        // Probe: one neutral event tells the output sizes and proves the model runs.
        let outs = m.infer(probe, 1)?;
        for (spec, (_, dim)) in m.outputs.iter_mut().zip(outs) {
            spec.dim = dim;
        }
        Ok(m)
    }

    /// Identity (hash and metadata) for alerts.
    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// Schema after the model stage has appended its columns to `input`.
    pub fn output_schema(&self, input: &Schema) -> SchemaRef {
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        for o in &self.outputs {
            fields.push(Field::new(o.column, tensor_type(o.dim), true));
        }
        if self.outputs.iter().any(|o| o.column == LOGITS_COL) {
            fields.push(Field::new(PREDICTED_CLASS_COL, DataType::Int64, true));
        }
        Arc::new(Schema::new(fields))
    }

    /// Runs `n` events' inputs and returns each output's flat values and per-event size.
    fn infer(
        &mut self,
        inputs: Vec<(String, SessionInputValue<'_>)>,
        n: usize,
    ) -> Result<Vec<(Vec<f32>, usize)>, ModelError> {
        let outs = self.session.run(inputs).map_err(|e| ModelError::Inference {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        let mut res = vec![];
        for o in &self.outputs {
            let v = outs.get(&o.onnx_name).ok_or_else(|| ModelError::Inference {
                path: self.path.clone(),
                detail: format!("output `{}` missing", o.onnx_name),
            })?;
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(|e| ModelError::Inference {
                path: self.path.clone(),
                detail: format!("output `{}`: {e}", o.onnx_name),
            })?;
            if shape.is_empty() || shape[0] != n as i64 {
                return Err(ModelError::Inference {
                    path: self.path.clone(),
                    detail: format!(
                        "output `{}` has shape {:?}, expected batch {n} first",
                        o.onnx_name,
                        &shape[..]
                    ),
                });
            }
            res.push((data.to_vec(), data.len() / n.max(1)));
        }
        Ok(res)
    }

    /// Scores a batch: appends the output columns. Null input rows get null outputs.
    pub fn score(&mut self, batch: &RecordBatch) -> Result<RecordBatch, ModelError> {
        let path = self.path.clone();
        let mismatch = |d: String| ModelError::Mismatch {
            path: path.clone(),
            detail: d,
        };
        let n = batch.num_rows();
        let mut collected: Vec<Vec<f32>> = vec![Vec::new(); self.outputs.len()];
        let mut i = 0;
        while i < n {
            let k = self.batch_size.min(n - i);
            let inputs = self.input.tensors(batch, i..i + k).map_err(mismatch)?;
            let outs = self.infer(inputs, k)?;
            for (j, (data, dim)) in outs.into_iter().enumerate() {
                if dim != self.outputs[j].dim {
                    return Err(ModelError::Inference {
                        path: self.path.clone(),
                        detail: format!(
                            "output `{}` changed size from {} to {dim}",
                            self.outputs[j].onnx_name, self.outputs[j].dim
                        ),
                    });
                }
                collected[j].extend_from_slice(&data);
            }
            i += k;
        }
        let nulls = self.input.nulls(batch).map_err(mismatch)?;
        let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
        let mut predicted = None;
        for (spec, data) in self.outputs.iter().zip(collected) {
            if spec.column == LOGITS_COL {
                predicted = Some(Int64Array::new(
                    data.chunks(spec.dim.max(1)).map(argmax).collect::<Vec<i64>>().into(),
                    nulls.clone(),
                ));
            }
            let field = Arc::new(Field::new_list_field(DataType::Float32, false));
            arrays.push(Arc::new(FixedSizeListArray::new(
                field,
                spec.dim as i32,
                Arc::new(Float32Array::from(data)),
                nulls.clone(),
            )));
        }
        if let Some(p) = predicted {
            arrays.push(Arc::new(p));
        }
        RecordBatch::try_new(self.output_schema(batch.schema().as_ref()), arrays).map_err(|e| ModelError::Inference {
            path: self.path.clone(),
            detail: e.to_string(),
        })
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
    }
}
