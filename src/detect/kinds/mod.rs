//! Detector kinds. A kind is one file in this folder plus its line in
//! [`KINDS`]: the options it accepts (a serde struct, documented field by
//! field), its checks against the scored events' schema, its SQL over the
//! `windows` table, how its results become drift, and the kind of drift it
//! watches. The pipeline file's `detectors:` items stay raw in `config`
//! ([`crate::config::DetectorSpec`]) and are built here by [`build`], which
//! also shares the false-alarm budget (`alerting.ert`) between the tests.
//!
//! To add a kind, copy `column_tests.rs` (a test per column), `mmd.rs` (one vector
//! column, options that depend on each other) or `quality.rs` (a statistic of
//! its own, with its UDAF in the same file).

pub mod cbpe;
mod column_tests;
mod distance;
mod labelled;
mod mmd;
mod quality;
mod sql;

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::logical_expr::AggregateUDF;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{Alpha, ConfigError, DetectorSpec, Pipeline};
use crate::schema::column_names;
use crate::window::CountGroup;
use crate::window::sample::{COUNTED_COL, WEIGHT_COL};

use super::{KEY_COL, WINDOW_COL, WINDOWS_TABLE, ident};

/// Every detector kind: its name in YAML, what it is, how it is built.
pub const KINDS: &[Kind] = &[
    column_tests::KS,
    column_tests::CHI2,
    mmd::KIND,
    distance::PSI,
    distance::KL,
    distance::JS,
    distance::WASSERSTEIN,
    labelled::ERROR_RATE,
    labelled::LABEL_SHIFT,
    quality::MISSING_SHARE,
    quality::UNSEEN_CATEGORIES,
    quality::OUT_OF_RANGE,
    quality::DEAD_LETTER_RATE,
    cbpe::KIND,
    sql::KIND,
];

/// A registered detector kind.
pub struct Kind {
    /// `kind:` in the pipeline file, and in results.
    pub name: &'static str,
    /// One line: what it tests and how it decides.
    pub about: &'static str,
    /// Builds a detector of this kind from its name and options.
    pub build: fn(String, Options) -> Result<Box<dyn Detector>, OptionError>,
    /// The option keys it takes (besides `name` and `kind`): its options
    /// struct's fields, `field_names::<T>()`.
    pub options: fn() -> &'static [&'static str],
    /// The aggregate functions the kind's SQL needs beyond the shared
    /// two-sample ones of `udaf.rs` (registered for every pipeline, so a
    /// `sql` detector can call them too).
    pub udafs: fn() -> Vec<AggregateUDF>,
}

/// A configured detector.
pub trait Detector: fmt::Debug + Send + Sync {
    /// Its name, unique in the pipeline.
    fn name(&self) -> &str;
    /// Its kind's name.
    fn kind(&self) -> &'static str;
    /// The columns it tests (for the drift-type rule and the output).
    fn columns(&self) -> Vec<String>;
    /// Its columns against the schema of scored events; errors name the
    /// option at fault (relative to the detector's item).
    fn check(&self, scored: &Schema) -> Result<(), OptionError>;
    /// Its query over `windows`: an optional `key` column and one or more
    /// result columns (structs with `statistic` and `p_value`).
    fn sql(&self) -> String;
    /// How its results turn into drift.
    fn decision(&self) -> Decision;
    /// What kind of drift it watches. Default (the rule in the README):
    /// the model's predicted classes → label; anything else → covariate.
    fn drift_type(&self) -> DriftType {
        if self.columns().iter().any(|c| c == crate::config::PREDICTED_CLASS_COL) {
            DriftType::Label
        } else {
            DriftType::Covariate
        }
    }
    /// Its significance level, when it gives p-values (part of the
    /// false-alarm budget); `None` for thresholded distances.
    fn alpha_mut(&mut self) -> Option<&mut Option<Alpha>> {
        None
    }
    /// Checks that need the final alpha (after `alerting.ert`).
    fn check_alpha(&self) -> Result<(), OptionError> {
        Ok(())
    }
    /// Which labels it needs when the pipeline's labels come late on their
    /// own topic (with inline labels every detector sees them anyway).
    fn labels(&self) -> LabelUse {
        LabelUse::None
    }
    /// The option its query errors belong to ("" for the item itself).
    fn query_key(&self) -> &'static str {
        ""
    }
    /// The column groups its query counts exactly over whole sampled
    /// windows (`window.max_sample`; see [`crate::window::sample`]); none
    /// for tests of raw values, which read the sample.
    fn counted(&self) -> Vec<CountGroup> {
        vec![]
    }
}

/// What a query reads of a sampled window (see [`crate::window::sample`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// The sample's rows (raw values: KS, MMD, distances, ranges).
    Sample,
    /// Every event, counted by the column's value.
    Values,
    /// Every event, counted by whether the column's value is missing.
    Presence,
}

impl Reads {
    /// The count group of a test of `columns`, if it counts.
    pub fn group(self, columns: &[&str]) -> Option<CountGroup> {
        match self {
            Reads::Sample => None,
            Reads::Values => Some(CountGroup::values(columns)),
            Reads::Presence => Some(CountGroup::presence(columns[0])),
        }
    }

    /// The count groups of one test per column.
    pub fn groups(self, columns: &[String]) -> Vec<CountGroup> {
        columns.iter().filter_map(|c| self.group(&[c])).collect()
    }

    /// `call`'s arguments end (`…, _weight`) and its FILTER, for a test of `columns`.
    pub fn tail(self, columns: &[&str]) -> (String, String) {
        match self.group(columns) {
            None => (String::new(), format!(" FILTER (WHERE {COUNTED_COL} IS NULL)")),
            Some(g) => (
                format!(", {WEIGHT_COL}"),
                format!(
                    " FILTER (WHERE {COUNTED_COL} IS NULL OR {COUNTED_COL} = '{}')",
                    g.tag().replace('\'', "''")
                ),
            ),
        }
    }
}

/// Which windows a detector runs on when labels come late on their own topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelUse {
    /// None: the windows of events, as they come.
    None,
    /// Both windows of events joined to their labels (`error_rate`): it
    /// runs when the labels have come.
    Joined,
    /// Labels in the reference only (`cbpe`, `label_shift`: estimates made
    /// before the current window's labels come). With a `file` reference,
    /// labelled inline, it runs on the event windows as the events come;
    /// with a reference of the stream's first events, on the windows of
    /// joined events (deterministically: a run evaluates as its replay).
    Reference,
}

/// A problem with one detector's options: `key` relative to its item
/// (`columns[1]`, `sigma`; "" for the item as a whole).
#[derive(Debug, Clone, PartialEq)]
pub struct OptionError {
    pub key: String,
    pub message: String,
}

impl OptionError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
    /// A problem with the item as a whole.
    pub fn item(message: impl Into<String>) -> Self {
        Self::new("", message)
    }
}

/// Which kind of drift a detector watches.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DriftType {
    /// P(X) moved: input features and embeddings.
    Covariate,
    /// P(Y) moved: predicted classes and priors.
    Label,
    /// P(Y|X) moved: error rates against true labels.
    Concept,
}

/// The drift type's name as it appears in alerts and truth files.
pub fn drift_type_name(t: DriftType) -> &'static str {
    match t {
        DriftType::Covariate => "covariate",
        DriftType::Label => "label",
        DriftType::Concept => "concept",
    }
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
    /// Benjamini–Hochberg: the columns with the k smallest p-values drift,
    /// k the largest with p₍ₖ₎ ≤ k·alpha/columns (false discovery rate ≤ alpha).
    BenjaminiHochberg,
}

/// How a detector decides that a column drifted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Level of the detector per evaluation (tests with p-values).
    pub alpha: f64,
    pub correction: Correction,
    /// Threshold on the statistic (results without p-value), if any.
    pub threshold: Option<f64>,
}

impl Decision {
    /// A test at `alpha` (default 0.01) with a correction across columns.
    pub fn test(alpha: Option<Alpha>, correction: Correction) -> Self {
        Self {
            alpha: alpha.unwrap_or_default().0,
            correction,
            threshold: None,
        }
    }
    /// A statistic compared with a threshold.
    pub fn threshold(t: f64) -> Self {
        Self {
            alpha: 0.0,
            correction: Correction::None,
            threshold: Some(t),
        }
    }
}

/// A detector item's options (everything but `name` and `kind`), as written.
pub struct Options {
    kind: &'static str,
    /// The keys the kind takes ([`Kind::options`]).
    accepted: &'static [&'static str],
    map: serde_norway::Mapping,
}

impl Options {
    /// The options as the kind's struct `T`: a key the kind does not take
    /// is refused with the list of those it does; a value of the wrong type
    /// names its key.
    pub fn parse<T: DeserializeOwned>(self) -> Result<T, OptionError> {
        let accepted = self.accepted;
        for k in self.map.keys() {
            let k = k.as_str().unwrap_or("?");
            if !accepted.contains(&k) {
                return Err(OptionError::item(format!(
                    "`{k}` does not apply to kind {} (its options: {})",
                    self.kind,
                    if accepted.is_empty() {
                        "none".to_string()
                    } else {
                        accepted.join(", ")
                    }
                )));
            }
        }
        serde_path_to_error::deserialize(serde_norway::Value::Mapping(self.map)).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            OptionError::new(key, e.into_inner().to_string())
        })
    }
}

/// The field names a derived `Deserialize` struct asks for.
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut probe = FieldProbe(&[]);
    let _ = T::deserialize(&mut probe);
    probe.0
}

/// A deserializer that only records the fields of the struct asked for.
struct FieldProbe(&'static [&'static str]);

impl<'de> serde::Deserializer<'de> for &mut FieldProbe {
    type Error = serde::de::value::Error;
    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("field probe"))
    }
    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = fields;
        Err(serde::de::Error::custom("field probe"))
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// The kind named `name`.
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Builds one detector from its item.
pub fn build_one(spec: &DetectorSpec) -> Result<Box<dyn Detector>, OptionError> {
    let Some(k) = kind(&spec.kind) else {
        let names: Vec<String> = KINDS.iter().map(|k| format!("`{}`", k.name)).collect();
        return Err(OptionError::new(
            "kind",
            format!("unknown variant `{}`, expected one of {}", spec.kind, names.join(", ")),
        ));
    };
    (k.build)(
        spec.name.clone(),
        Options {
            kind: k.name,
            accepted: (k.options)(),
            map: spec.options.clone(),
        },
    )
}

/// Builds the pipeline's detectors, gives each test its share of the
/// false-alarm budget when `alerting.ert` is set, and checks what depends on
/// the final alpha. Errors name the pipeline file and the detector's key.
pub fn build(p: &Pipeline) -> Result<Vec<Arc<dyn Detector>>, ConfigError> {
    let at = |i: usize, e: OptionError| {
        let key = if e.key.is_empty() {
            format!("detectors[{i}]")
        } else {
            format!("detectors[{i}].{}", e.key)
        };
        ConfigError::invalid(&p.path, key, e.message)
    };
    let mut built = vec![];
    for (i, spec) in p.detectors.iter().enumerate() {
        built.push(build_one(spec).map_err(|e| at(i, e))?);
    }
    if let Some(ert) = p.alerting.ert {
        let tests = built.iter_mut().filter_map(|d| d.alpha_mut()).count();
        for (i, d) in built.iter_mut().enumerate() {
            if let Some(slot) = d.alpha_mut() {
                if slot.is_some() {
                    let e = "leave `alpha` out when `alerting.ert` is set: it is derived from the ert";
                    return Err(at(i, OptionError::new("alpha", e)));
                }
                *slot = Some(Alpha(1.0 / (ert.get() as f64 * tests as f64)));
            }
        }
    }
    for (i, d) in built.iter().enumerate() {
        d.check_alpha().map_err(|e| at(i, e))?;
    }
    Ok(built.into_iter().map(Arc::from).collect())
}

/// What `driftwatch kinds` prints: each kind, what it is, its options.
pub fn describe() -> String {
    let mut out = String::new();
    for k in KINDS {
        out += &format!(
            "{:<18} {}\n{:<18} options: {}\n",
            k.name,
            k.about,
            "",
            (k.options)().join(", ")
        );
    }
    out
}

/// The aggregate functions of every kind (beyond `udaf.rs`'s).
pub fn udafs() -> Vec<AggregateUDF> {
    KINDS.iter().flat_map(|k| (k.udafs)()).collect()
}

fn no_udafs() -> Vec<AggregateUDF> {
    vec![]
}

// ---------------------------------------------------------------- helpers for kinds

/// `columns` as given: at least one.
fn non_empty(columns: Vec<String>) -> Result<Vec<String>, OptionError> {
    if columns.is_empty() {
        return Err(OptionError::new("columns", "`columns` needs at least one column"));
    }
    Ok(columns)
}

/// What a column must hold for a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Number,
    /// A number, string or boolean.
    Scalar,
    /// Classes: a number, string or boolean.
    Class,
    FloatVector,
}

impl Need {
    fn accepts(self, t: &DataType) -> bool {
        match self {
            Need::Number => t.is_numeric(),
            Need::Scalar | Need::Class => !t.is_nested(),
            Need::FloatVector => matches!(t, DataType::FixedSizeList(..) | DataType::Float32 | DataType::Float64),
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Need::Number => "a number",
            Need::Scalar => "a scalar column (number, string or boolean)",
            Need::Class => "a class column",
            Need::FloatVector => "a float vector",
        }
    }
}

/// Checks that `column` (option `key`) is in `scored` and holds what `kind` needs.
fn check_column(scored: &Schema, key: String, column: &str, kind: &str, need: Need) -> Result<(), OptionError> {
    match scored.field_with_name(column) {
        Ok(f) if need.accepts(f.data_type()) => Ok(()),
        Ok(f) => Err(OptionError::new(
            key,
            format!(
                "column `{column}` is {}, {kind} needs {}",
                f.data_type(),
                need.describe()
            ),
        )),
        Err(_) => Err(OptionError::new(
            key,
            format!("no column `{column}` (columns: {})", column_names(scored)),
        )),
    }
}

/// [`check_column`] on each of `columns` (option `columns`).
fn check_columns(scored: &Schema, columns: &[String], kind: &str, need: Need) -> Result<(), OptionError> {
    for (j, c) in columns.iter().enumerate() {
        check_column(scored, format!("columns[{j}]"), c, kind, need)?;
    }
    Ok(())
}

/// `SELECT key, f(c, window = 'current'<extra>) AS c, … FROM windows GROUP BY key`.
fn per_column_sql(f: &str, columns: &[String], extra: &str, reads: Reads) -> String {
    let cols: Vec<String> = columns
        .iter()
        .map(|c| {
            let (weight, filter) = reads.tail(&[c]);
            format!(
                "{f}({}, {}{extra}{weight}){filter} AS {}",
                ident(c),
                is_current(),
                ident(c)
            )
        })
        .collect();
    format!(
        "SELECT {KEY_COL}, {} FROM {WINDOWS_TABLE} GROUP BY {KEY_COL}",
        cols.join(", ")
    )
}

/// The SQL condition true on the current window's rows.
fn is_current() -> String {
    format!("{WINDOW_COL} = 'current'")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's pipeline section lists the kinds by hand: a kind added
    /// here without a word there fails this.
    #[test]
    fn the_readme_names_every_kind() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let missing: Vec<&str> = KINDS
            .iter()
            .map(|k| k.name)
            .filter(|name| !readme.contains(&format!("`{name}`")))
            .collect();
        assert!(missing.is_empty(), "README.md does not name the kinds {missing:?}");
    }

    fn spec(yaml: &str) -> DetectorSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn every_kind_is_registered_once_and_builds_with_its_defaults_or_says_what_it_needs() {
        let mut names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KINDS.len());
        for k in KINDS {
            assert!(!k.about.is_empty(), "{}", k.name);
            assert!(!(k.options)().is_empty(), "{}", k.name);
            let built = build_one(&spec(&format!("{{name: d, kind: {}}}", k.name)));
            match built {
                Ok(d) => assert_eq!(d.kind(), k.name),
                Err(e) => assert!(e.message.contains("needs"), "{}: {e:?}", k.name),
            }
        }
    }

    #[test]
    fn an_option_of_another_kind_is_refused_with_the_kinds_own_list() {
        let e = build_one(&spec("{name: d, kind: ks, columns: [a], permutations: 10}")).unwrap_err();
        assert_eq!(e.key, "");
        assert!(e.message.contains("`permutations` does not apply to kind ks"), "{e:?}");
        assert!(e.message.contains("columns, alpha, correction"), "{e:?}");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        let e = build_one(&spec("{name: d, kind: mmd, permutations: 0}")).unwrap_err();
        assert_eq!(e.key, "permutations");
        let e = build_one(&spec("{name: d, kind: ks, columns: [a, [b]]}")).unwrap_err();
        assert_eq!(e.key, "columns[1]");
        let e = build_one(&spec("{name: d, kind: kolmogorov}")).unwrap_err();
        assert_eq!(e.key, "kind");
        assert!(e.message.contains("unknown variant `kolmogorov`"), "{e:?}");
    }
}
