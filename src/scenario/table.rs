//! Table pools: real rows (e.g. the US Census records) streamed in their
//! time order, for tabular models.
//!
//! Unlike images and paragraphs, which are drawn at random, a table's rows
//! are used once each, in file order: a `clean` phase takes the next rows as
//! they are, a `label` phase takes the next rows of the class its priors
//! call for (so the positive rate changes but every row is real), and a
//! `concept` phase remaps the labels of the rows in its `subgroup`. The
//! whole order is planned when the scenario is loaded, so a scenario that
//! asks for more rows than the table (or a class) has fails then, naming
//! the phase.
//!
//! Event time comes from the rows: 1 January (UTC) of the row's `year`,
//! plus `interval_ms` per earlier event of the same year, and never before
//! the event before it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The `table:` section of a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Parquet or JSONL files of rows, read in this order; rows must be in
    /// time order (`year` never decreasing). Relative to the scenario file.
    pub files: Vec<PathBuf>,
    /// Files of `{id, label}` rows joined on `id`, for rows that do not
    /// carry their label (as the census analysis years, whose targets ship
    /// apart). Default none.
    #[serde(default)]
    pub targets: Vec<PathBuf>,
    /// The row id column: the events' id (the schema's `event_id`).
    pub id: String,
    /// The label column: an integer class. Removed from the events unless
    /// the scenario's labels are `inline`.
    pub label: String,
    /// The column holding the row's year (an integer): its event time.
    pub year: String,
    /// Columns left out of the events (e.g. a shipped model's predictions).
    #[serde(default)]
    pub drop: Vec<String>,
    /// Rows of one year come in a random order (seeded by the scenario's
    /// `seed`), not in file order (default true): the data give the year,
    /// not the day, and a file's order within a year is its publisher's
    /// (by area, by household), which detectors would take for drift.
    #[serde(default = "yes")]
    pub shuffle: bool,
}

fn yes() -> bool {
    true
}

/// One row: its JSON object without label, year-derived time or dropped
/// columns, ready to have `ts` (and an inline label) added.
#[derive(Debug, Clone)]
pub struct Row {
    /// The JSON object of the row's fields (`{…}`).
    pub json: String,
    pub id: String,
    pub label: i64,
    pub year: i32,
}

/// The rows of a table, in time order.
#[derive(Debug, Clone)]
pub struct Table {
    pub rows: Vec<Row>,
    /// The rows of each year.
    pub per_year: BTreeMap<i32, usize>,
}

impl Table {
    /// Reads the files (`dir`: the scenario's folder); errors say `file:row: what`.
    pub fn load(spec: &TableSpec, dir: &Path) -> Result<Self, (PathBuf, usize, String)> {
        let targets = read_targets(spec, dir)?;
        let mut rows: Vec<Row> = vec![];
        for file in &spec.files {
            each_object(&dir.join(file), |v| {
                let r = row(spec, v, &targets)?;
                match rows.last() {
                    Some(before) if r.year < before.year => Err(format!(
                        "year {} after {}: rows must be in time order",
                        r.year, before.year
                    )),
                    _ => {
                        rows.push(r);
                        Ok(())
                    }
                }
            })?;
        }
        if rows.is_empty() {
            return Err((dir.into(), 0, "the table has no rows".into()));
        }
        let mut per_year = BTreeMap::new();
        for r in &rows {
            *per_year.entry(r.year).or_default() += 1;
        }
        Ok(Table { rows, per_year })
    }
}

/// Labels by id from the `targets` files.
fn read_targets(spec: &TableSpec, dir: &Path) -> Result<HashMap<String, i64>, (PathBuf, usize, String)> {
    let mut out = HashMap::new();
    for file in &spec.targets {
        each_object(&dir.join(file), |v| {
            let id = id_text(v.get(&spec.id)).ok_or_else(|| format!("no `{}`", spec.id))?;
            let label = v.get(&spec.label).and_then(serde_json::Value::as_i64);
            out.insert(id, label.ok_or_else(|| format!("no integer `{}`", spec.label))?);
            Ok(())
        })?;
    }
    Ok(out)
}

/// Each record of a Parquet or JSONL file, parsed, to `f`; an error (the
/// file's, the JSON's or `f`'s) is located at `file:row` (1-based).
fn each_object(
    path: &Path,
    mut f: impl FnMut(serde_json::Value) -> Result<(), String>,
) -> Result<(), (PathBuf, usize, String)> {
    let records = crate::source::file::read_records(path).map_err(|e| (path.into(), 0, e.to_string()))?;
    for r in records {
        let v = serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).map_err(|e| e.to_string());
        v.and_then(&mut f)
            .map_err(|m| (path.into(), r.offset as usize + 1, m))?;
    }
    Ok(())
}

fn id_text(v: Option<&serde_json::Value>) -> Option<String> {
    scalar_text(v?)
}

/// A string or number as text (numbers as JSON writes them).
pub fn scalar_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One row from its JSON object.
fn row(spec: &TableSpec, mut v: serde_json::Value, targets: &HashMap<String, i64>) -> Result<Row, String> {
    let o = v.as_object_mut().ok_or("not a JSON object")?;
    let id = id_text(o.get(&spec.id)).ok_or_else(|| format!("no `{}` (string or number)", spec.id))?;
    let label = match o.remove(&spec.label).and_then(|l| l.as_i64()) {
        Some(l) => l,
        None => *targets
            .get(&id)
            .ok_or_else(|| format!("no integer `{}`, and no target for id {id}", spec.label))?,
    };
    let year = o
        .get(&spec.year)
        .and_then(serde_json::Value::as_i64)
        .and_then(|y| i32::try_from(y).ok())
        .filter(|y| (1970..=9999).contains(y))
        .ok_or_else(|| format!("`{}` must be a year from 1970 to 9999", spec.year))?;
    for c in &spec.drop {
        o.remove(c);
    }
    Ok(Row {
        json: v.to_string(),
        id,
        label,
        year,
    })
}

/// Epoch ms of 1 January of `year`, UTC.
pub fn year_start_ms(year: i32) -> i64 {
    // Days from 1970 to `year`: 365 per year plus the leap days before it.
    let leaps = |y: i64| (y - 1) / 4 - (y - 1) / 100 + (y - 1) / 400;
    let y = i64::from(year);
    ((y - 1970) * 365 + leaps(y) - leaps(1970)) * 86_400_000
}

/// What a phase asks of the table's rows.
#[derive(Debug, Clone, Copy)]
pub enum Take<'a> {
    /// The next rows in order.
    InOrder,
    /// The next rows of the class these priors call for.
    ByClass(&'a BTreeMap<i64, f64>),
}

/// The order rows are taken in: years in file order, and within each year
/// the file's order or (`shuffle`) a seeded random one.
pub fn sequence(table: &Table, shuffle: bool, seed: u64) -> Vec<usize> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..table.rows.len()).collect();
    if shuffle {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for year in order.chunk_by_mut(|a, b| table.rows[*a].year == table.rows[*b].year) {
            year.shuffle(&mut rng);
        }
    }
    order
}

/// The row of every event of one key, phase by phase (`(events, take)`),
/// taking rows in `sequence` order: each row at most once, in that order
/// within each class. Errors name the phase (its index) that runs out of rows.
pub fn plan(table: &Table, sequence: &[usize], phases: &[(usize, Take)]) -> Result<Vec<usize>, (usize, String)> {
    let mut by_class: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for &i in sequence {
        by_class.entry(table.rows[i].label).or_default().push(i);
    }
    let mut taken = vec![false; table.rows.len()];
    let (mut next, mut class_next) = (0usize, BTreeMap::<i64, usize>::new());
    let mut out = Vec::with_capacity(phases.iter().map(|p| p.0).sum());
    for (p, (events, take)) in phases.iter().enumerate() {
        let mut drawn = BTreeMap::new();
        for done in 0..*events {
            let row = match take {
                Take::InOrder => {
                    while sequence.get(next).is_some_and(|&r| taken[r]) {
                        next += 1;
                    }
                    sequence.get(next).copied().ok_or_else(|| {
                        format!(
                            "the table's {} rows run out after {done} of the phase's {events} events",
                            sequence.len()
                        )
                    })
                }
                Take::ByClass(priors) => {
                    let class = super::next_class(priors, &mut drawn);
                    let rows = by_class.get(&class).map(Vec::as_slice).unwrap_or_default();
                    let at = class_next.entry(class).or_default();
                    while rows.get(*at).is_some_and(|&r| taken[r]) {
                        *at += 1;
                    }
                    rows.get(*at).copied().ok_or_else(|| {
                        format!(
                            "the rows of class {class} ({} in the table) run out after {done} of the phase's {events} events",
                            rows.len()
                        )
                    })
                }
            }
            .map_err(|m| (p, m))?;
            taken[row] = true;
            out.push(row);
        }
    }
    Ok(out)
}

/// Whether a row's fields match every `column: value` of a subgroup
/// (values compared as text: `"2"` matches the string "2" and the number 2).
pub fn in_subgroup(row: &Row, subgroup: &BTreeMap<String, serde_json::Value>) -> bool {
    if subgroup.is_empty() {
        return true;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&row.json) else {
        return false;
    };
    subgroup
        .iter()
        .all(|(c, want)| id_text(v.get(c)).is_some_and(|got| Some(got) == scalar_text(want)))
}

/// The event's JSON: the row with `ts` and, if given, the label.
pub fn event_json(row: &Row, ts: i64, label: Option<(&str, i64)>) -> String {
    let body = row.json.trim_end().strip_suffix('}').unwrap_or(&row.json);
    let sep = if body.trim_end().ends_with('{') { "" } else { "," };
    match label {
        Some((name, l)) => format!("{body}{sep}\"ts\":{ts},{}:{l}}}", serde_json::Value::from(name)),
        None => format!("{body}{sep}\"ts\":{ts}}}"),
    }
}

/// Event times of one key: per year, the events so far.
#[derive(Debug, Default, Clone)]
pub struct Clock {
    per_year: BTreeMap<i32, i64>,
    last: i64,
}

impl Clock {
    /// The event time of the next event from a row of `year`.
    pub fn next(&mut self, year: i32, interval_ms: i64) -> i64 {
        let n = self.per_year.entry(year).or_default();
        let ts = (year_start_ms(year) + *n * interval_ms).max(self.last + 1);
        *n += 1;
        self.last = ts;
        ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(labels: &[i64]) -> Table {
        let rows: Vec<Row> = labels
            .iter()
            .enumerate()
            .map(|(i, &label)| Row {
                json: format!("{{\"id\":{i},\"g\":\"{}\"}}", i % 2),
                id: i.to_string(),
                label,
                year: 2015,
            })
            .collect();
        Table {
            per_year: [(2015, rows.len())].into(),
            rows,
        }
    }

    #[test]
    fn shuffled_rows_stay_in_their_year() {
        let mut t = table(&[0; 10]);
        for (i, r) in t.rows.iter_mut().enumerate() {
            r.year = 2015 + (i as i32) / 4;
        }
        let seq = sequence(&t, true, 1);
        assert_eq!(seq, sequence(&t, true, 1), "seeded");
        assert_ne!(seq, sequence(&t, false, 1));
        let years: Vec<i32> = seq.iter().map(|&i| t.rows[i].year).collect();
        assert!(years.windows(2).all(|w| w[0] <= w[1]), "{years:?}");
        let mut sorted = seq.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn years_start_on_the_first_of_january() {
        assert_eq!(year_start_ms(1970), 0);
        assert_eq!(year_start_ms(2015), 1_420_070_400_000);
        assert_eq!(year_start_ms(2016), 1_451_606_400_000);
        assert_eq!(year_start_ms(2017), 1_483_228_800_000); // 2016 is a leap year
    }

    #[test]
    fn rows_are_used_once_in_order_and_label_phases_change_the_rate() {
        let t = table(&[0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1]);
        let priors: BTreeMap<i64, f64> = [(0, 0.0), (1, 1.0)].into();
        let seq = sequence(&t, false, 0);
        let order = plan(
            &t,
            &seq,
            &[(2, Take::InOrder), (3, Take::ByClass(&priors)), (3, Take::InOrder)],
        )
        .unwrap();
        assert_eq!(order, vec![0, 1, 3, 5, 7, 2, 4, 6]);
        let mut seen = order.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), order.len(), "each row once");
    }

    #[test]
    fn running_out_names_the_phase_and_the_class() {
        let t = table(&[0, 1, 0, 1]);
        let priors: BTreeMap<i64, f64> = [(1, 1.0)].into();
        let seq = sequence(&t, false, 0);
        let e = plan(&t, &seq, &[(1, Take::InOrder), (3, Take::ByClass(&priors))]).unwrap_err();
        assert_eq!(e.0, 1);
        assert!(e.1.contains("class 1 (2 in the table) run out after 2"), "{}", e.1);
        let e = plan(&t, &seq, &[(5, Take::InOrder)]).unwrap_err();
        assert_eq!(e.0, 0);
        assert!(e.1.contains("4 rows run out after 4"), "{}", e.1);
    }

    #[test]
    fn events_carry_time_and_label_and_the_clock_never_goes_back() {
        let t = table(&[1]);
        let json = event_json(&t.rows[0], 42, Some(("employed", 1)));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v, serde_json::json!({"id": 0, "g": "0", "ts": 42, "employed": 1}));
        let v: serde_json::Value = serde_json::from_str(&event_json(&t.rows[0], 7, None)).unwrap();
        assert_eq!(v, serde_json::json!({"id": 0, "g": "0", "ts": 7}));
        let mut c = Clock::default();
        let a = c.next(2016, 1000);
        assert_eq!(a, year_start_ms(2016));
        assert_eq!(c.next(2016, 1000), a + 1000);
        // A late row of an earlier year does not go back in time.
        assert_eq!(c.next(2015, 1000), a + 1001);
        let group = |c: &str, v: serde_json::Value| [(c.to_string(), v)].into();
        assert!(in_subgroup(&t.rows[0], &group("g", "0".into())));
        assert!(in_subgroup(&t.rows[0], &group("g", 0.into())), "numbers match as text");
        assert!(in_subgroup(&t.rows[0], &group("id", 0.into())));
        assert!(!in_subgroup(&t.rows[0], &group("g", "1".into())));
    }
}
