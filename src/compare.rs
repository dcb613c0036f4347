//! `compare`: one evaluation of every detector, a reference file against a
//! current file, offline.

use crate::alert::Evaluation;
use crate::config::ConfigError;
use std::path::{Path, PathBuf};

use crate::decode::Rejection;
use crate::engine::{Evaluated, Sink, Stages, Stream};
use crate::error::RuntimeError;
use crate::source::file;
use serde::Serialize;

/// `compare`: one evaluation of every detector, reference file vs current
/// file; `labels`, a JSONL file of label records (`{event_id, label}`),
/// labels the events of both for the detectors on labels.
pub async fn compare(
    stages: Stages,
    reference: &Path,
    current: &Path,
    labels: Option<&Path>,
) -> Result<CompareReport, RuntimeError> {
    let mut engine = crate::engine::Engine::offline(stages);
    let mut sink = ReportSink::new(&engine.stages);
    let mut ingest = async |path: &Path, sink: &mut ReportSink| -> Result<Vec<_>, RuntimeError> {
        let (batches, rejected) = engine.stages.ingest(&file::read_records(path)?).await?;
        sink.file = path.to_path_buf();
        sink.logged = 0;
        for r in &rejected {
            sink.rejected(Stream::Events, r)?;
        }
        Ok(batches)
    };
    let rb = ingest(reference, &mut sink).await?;
    let cb = ingest(current, &mut sink).await?;
    let labels = match labels {
        Some(path) => read_labels_file(&engine.stages, path)?,
        None => Default::default(),
    };
    sink.report.reference_events = rb.iter().map(|b| b.num_rows()).sum();
    sink.report.current_events = cb.iter().map(|b| b.num_rows()).sum();
    sink.evaluated(engine.compare(rb, cb, &labels).await?)?;
    Ok(sink.report)
}

/// `compare`'s sink: every detector's result, or why it has none, in one
/// report; the first rejected records of each file logged.
struct ReportSink {
    /// Every detector, to report those with no result.
    detectors: Vec<DetectorEntry>,
    /// The file being read.
    file: PathBuf,
    logged: usize,
    report: CompareReport,
}

/// A detector as the report names one that has no result.
struct DetectorEntry {
    name: String,
    kind: String,
    drift_type: crate::alert::DriftType,
    /// Evaluated on labelled events (late labels), not on every event.
    labelled: bool,
}

impl ReportSink {
    fn new(stages: &Stages) -> Self {
        let detectors = [false, true]
            .into_iter()
            .flat_map(|labelled| {
                stages
                    .detector_names(labelled)
                    .into_iter()
                    .map(move |name| (name, labelled))
            })
            .map(|(name, labelled)| {
                let kind = stages
                    .detector_configs()
                    .iter()
                    .find(|d| d.name() == name)
                    .map_or_else(String::new, |d| d.kind().to_string());
                let drift_type = stages.drift_type(&name);
                DetectorEntry {
                    name,
                    kind,
                    drift_type,
                    labelled,
                }
            })
            .collect();
        Self {
            detectors,
            file: PathBuf::new(),
            logged: 0,
            report: CompareReport {
                detectors: vec![],
                reference_events: 0,
                current_events: 0,
                rejected: 0,
            },
        }
    }
}

impl Sink for ReportSink {
    fn evaluated(&mut self, evaluated: Vec<Evaluated>) -> Result<usize, RuntimeError> {
        let mut made = 0;
        for e in &evaluated {
            made += e.evaluations.len();
            for d in self.detectors.iter().filter(|d| d.labelled == e.labelled) {
                let found = e.evaluations.iter().filter(|ev| ev.detector == d.name);
                let before = self.report.detectors.len();
                self.report
                    .detectors
                    .extend(found.map(|ev| CompareDetector::from(ev.clone())));
                if self.report.detectors.len() == before {
                    let d = CompareDetector::not_computed(&d.name, &d.kind, d.drift_type, e);
                    self.report.detectors.push(d);
                }
            }
        }
        Ok(made)
    }

    /// Counted; the first five of each file logged with their line.
    fn rejected(&mut self, _: Stream, r: &Rejection) -> Result<(), RuntimeError> {
        self.report.rejected += 1;
        if self.logged < 5 {
            self.logged += 1;
            tracing::warn!(file = %self.file.display(), line = r.offset + 1, reason = r.reason.as_str(), "{}", r.message);
        }
        Ok(())
    }
}

/// A labels file for `compare`: event id → label. Bad records are errors
/// naming the line: offline, the file is the user's to fix.
fn read_labels_file(stages: &Stages, path: &Path) -> Result<std::collections::HashMap<String, String>, RuntimeError> {
    let (Some(_), Some(label_col)) = (&stages.schema.event_id, &stages.schema.label) else {
        return Err(ConfigError::invalid(
            &stages.pipeline.path,
            "schema",
            "--labels needs the schema to name its `event_id` and `label` fields".to_string(),
        )
        .into());
    };
    let label_type = stages
        .scored_schema
        .field_with_name(label_col)
        .map(|f| f.data_type().clone())
        .map_err(|e| RuntimeError::Other(e.to_string()))?;
    let mut out = std::collections::HashMap::new();
    for r in file::read_records(path)? {
        let l = crate::labels::read_label(&r, stages.format, label_col, &label_type, false)
            .map_err(|rej| file::FileError::new(path, format!("line {}: {}", rej.offset + 1, rej.message)))?;
        out.insert(l.event_id, l.label);
    }
    Ok(out)
}

/// Output of `compare`.
#[derive(Debug, Serialize)]
pub struct CompareReport {
    pub detectors: Vec<CompareDetector>,
    pub reference_events: usize,
    pub current_events: usize,
    /// Events of either file that failed to decode.
    pub rejected: usize,
}

#[derive(Debug, Serialize)]
pub struct CompareDetector {
    pub name: String,
    pub kind: String,
    pub drift_type: crate::alert::DriftType,
    /// Whether any of its tests could be computed on these files; when not,
    /// `reason` says why and `drift` is false.
    pub computed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub drift: bool,
    /// Other detectors that drifted on the same data.
    pub also_drifted: Vec<String>,
    pub threshold: Option<f64>,
    pub tests: Vec<crate::detect::TestResult>,
}

impl From<Evaluation> for CompareDetector {
    fn from(e: Evaluation) -> Self {
        CompareDetector {
            name: e.detector,
            kind: e.kind,
            drift_type: e.drift_type,
            computed: true,
            reason: None,
            drift: e.drift,
            also_drifted: e.also_drifted,
            threshold: e.threshold,
            tests: e.tests,
        }
    }
}

impl CompareDetector {
    /// A detector none of whose tests could be computed on `e`'s windows.
    fn not_computed(name: &str, kind: &str, drift_type: crate::alert::DriftType, e: &Evaluated) -> Self {
        let (r, c) = (e.coords.reference_size, e.coords.current_size);
        let mut reason = format!(
            "no test could be computed: a window has too few values (reference {r} events, current {c} events)"
        );
        if e.labelled {
            reason += "; it runs on labelled events only: give --labels, or label the events inline";
        }
        CompareDetector {
            drift_type,
            name: name.to_string(),
            kind: kind.to_string(),
            computed: false,
            reason: Some(reason),
            drift: false,
            also_drifted: vec![],
            threshold: None,
            tests: vec![],
        }
    }
}
