//! JSON: events as JSON objects, one per record, read in one pass straight
//! into typed cells (no JSON tree); label records as `{event_id, label, ts}`.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::*;

/// The JSON format.
pub struct Json;

impl Format for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    /// Field errors are recorded and parsing goes on, so malformed JSON
    /// anywhere wins over a field error, as a parse-then-check would give.
    fn parse(&self, payload: &[u8], row: Row<'_>) -> Result<(), (Reason, String)> {
        let mut de = serde_json::Deserializer::from_slice(payload);
        let mut not_object = false;
        let parsed = EventSeed {
            fields: row.fields,
            index: row.index,
            st: row.st,
            not_object: &mut not_object,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end());
        if let Err(e) = parsed {
            return Err((Reason::MalformedJson, format!("malformed JSON: {e}")));
        }
        if not_object {
            return Err((Reason::NotAnObject, "event is not a JSON object".into()));
        }
        Ok(())
    }

    fn label(&self, payload: &[u8]) -> Result<LabelFields, LabelError> {
        label(payload)
    }
}

/// A JSON number as the visitor sees it.
#[derive(Clone, Copy)]
enum Num {
    I(i64),
    U(u64),
    F(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::I(v) => v as f64,
            Num::U(v) => v as f64,
            Num::F(v) => v,
        }
    }

    fn as_i64(self) -> Option<i64> {
        match self {
            Num::I(v) => Some(v),
            Num::U(v) => i64::try_from(v).ok(),
            Num::F(_) => None,
        }
    }
}

/// The whole event: a JSON object whose known keys are parsed by their field.
struct EventSeed<'a> {
    fields: &'a [FieldSpec],
    index: &'a HashMap<String, usize>,
    st: &'a mut Pending,
    /// Set when the payload is JSON but not an object.
    not_object: &'a mut bool,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed(self.index))? {
            match key {
                Some(i) => {
                    // A repeated key: the last one counts, as in a JSON object map.
                    self.st.errs[i] = None;
                    map.next_value_seed(FieldSeed {
                        f: &self.fields[i],
                        i,
                        st: &mut *self.st,
                    })?
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        *self.not_object = true;
        Ok(())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        *self.not_object = true;
        Ok(())
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.visit_unit()
    }
}

/// An object key: the schema field it names, if any (no allocation).
struct KeySeed<'a>(&'a HashMap<String, usize>);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Option<usize>, E> {
        Ok(self.0.get(s).copied())
    }
}

/// One field's value: parsed into its cell, or its error recorded (and the
/// rest of the value skipped, so the JSON is still checked to the end).
struct FieldSeed<'a> {
    f: &'a FieldSpec,
    i: usize,
    st: &'a mut Pending,
}

impl FieldSeed<'_> {
    fn set(self, cell: Result<Cell, FieldErr>) {
        match cell {
            Ok(c) => self.st.cells[self.i] = Some(c),
            Err(e) => {
                self.st.cells[self.i] = Some(Cell::Null);
                self.st.errs[self.i] = Some(e);
            }
        }
    }

    fn number(self, n: Num) {
        let f = self.f;
        let cell = match f.kind {
            FieldKind::Float => finite(f, n.as_f64()).map(Cell::F),
            FieldKind::Int | FieldKind::Timestamp => {
                n.as_i64().map(Cell::I).ok_or_else(|| wrong(f, expected(f), "a number"))
            }
            FieldKind::Category if f.strict => Err(wrong(f, "a string (strict category)", "a number")),
            // Categories are often sent as small integers; keep them as text
            // (written as serde_json writes numbers: 3, 3.5, 3.0).
            FieldKind::Category => {
                use std::fmt::Write;
                let text = &mut self.st.text;
                let start = text.len();
                // Writing to a String cannot fail.
                let _ = match n {
                    Num::I(v) => write!(text, "{v}"),
                    Num::U(v) => write!(text, "{v}"),
                    Num::F(v) => match serde_json::Number::from_f64(v) {
                        Some(num) => write!(text, "{num}"),
                        None => write!(text, "{v}"),
                    },
                };
                Ok(Cell::S(start, text.len()))
            }
            _ => Err(wrong(f, expected(f), "a number")),
        };
        self.set(cell)
    }
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field value")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.set(Ok(Cell::Null));
        Ok(())
    }
    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<(), E> {
        let cell = match self.f.kind {
            FieldKind::Bool => Ok(Cell::B(b)),
            _ => Err(wrong(self.f, expected(self.f), "a boolean")),
        };
        self.set(cell);
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.number(Num::I(v));
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.number(Num::U(v));
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.number(Num::F(v));
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        let f = self.f;
        let cell = match f.kind {
            FieldKind::Category | FieldKind::String => {
                let start = self.st.text.len();
                self.st.text.push_str(s);
                Ok(Cell::S(start, self.st.text.len()))
            }
            FieldKind::Float => match non_finite_literal(s) {
                Some(x) => finite(f, x).map(Cell::F),
                None => Err(wrong(f, expected(f), "a string")),
            },
            FieldKind::Timestamp => humantime::parse_rfc3339_weak(s)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| Cell::I(d.as_millis() as i64))
                .ok_or_else(|| {
                    (
                        Reason::WrongType,
                        format!("field `{}`: `{s}` is not an RFC 3339 time", f.name),
                    )
                }),
            _ => Err(wrong(f, expected(f), "a string")),
        };
        self.set(cell);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.f.kind != FieldKind::Tensor {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            let e = wrong(self.f, expected(self.f), "an array");
            self.set(Err(e));
            return Ok(());
        }
        let (f, st) = (self.f, &mut *self.st);
        let start = st.scratch.len();
        let mut t = TensorSeed {
            f,
            out: &mut st.scratch,
            err: None,
            cap: start + f.tensor_len() * 4 + 1024,
        };
        t.elements(&mut seq)?;
        let err = t.err;
        let got = st.scratch.len() - start;
        let want = f.tensor_len();
        let cell = match err {
            Some(e) => Err(e),
            None if got != want => Err((
                Reason::WrongTensorLength,
                format!(
                    "field `{}`: expected {want} numbers (shape {:?}), got {got}",
                    f.name,
                    f.shape.clone().unwrap_or_default()
                ),
            )),
            None => Ok(Cell::T(start)),
        };
        self.set(cell);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        let e = wrong(self.f, expected(self.f), "an object");
        self.set(Err(e));
        Ok(())
    }
}

/// The numbers of a flat or nested array, appended to `out` and checked
/// each; the first error is kept and the rest of the array only skipped.
struct TensorSeed<'a> {
    f: &'a FieldSpec,
    out: &'a mut Vec<f32>,
    err: Option<FieldErr>,
    /// Stop storing at absurd sizes rather than growing without bound.
    cap: usize,
}

impl<'de> TensorSeed<'_> {
    fn elements<A: SeqAccess<'de>>(&mut self, seq: &mut A) -> Result<(), A::Error> {
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }

    fn fail(&mut self, e: FieldErr) {
        if self.err.is_none() {
            self.err = Some(e);
        }
    }

    fn push(&mut self, x: f64) {
        if self.err.is_some() || self.out.len() > self.cap {
            return;
        }
        match finite(self.f, x) {
            Err(e) => self.fail(e),
            Ok(x) => {
                let y = x as f32;
                if !y.is_finite() && x.is_finite() {
                    self.fail((
                        Reason::NonFinite,
                        format!("field `{}`: {x} overflows float32", self.f.name),
                    ));
                } else {
                    self.out.push(y);
                }
            }
        }
    }

    fn wrong_element(&mut self, got: &str) {
        let e = wrong(self.f, "a number", got);
        self.fail(e);
    }
}

impl<'de> DeserializeSeed<'de> for &mut TensorSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &mut TensorSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number or an array of numbers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.elements(&mut seq)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push(v as f64);
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push(v as f64);
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.push(v);
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        match non_finite_literal(s) {
            Some(x) => self.push(x),
            None => self.wrong_element("a string"),
        }
        Ok(())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.wrong_element("null");
        Ok(())
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.wrong_element("a boolean");
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.wrong_element("an object");
        Ok(())
    }
}

/// A label record `{event_id, label, ts}`: `event_id` a non-empty string or
/// a number, `label` a string, number or boolean (as text), `ts` epoch ms
/// or an RFC 3339 time when present.
fn label(payload: &[u8]) -> Result<LabelFields, LabelError> {
    use serde_json::Value;
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| (Reason::MalformedJson, format!("label record is not JSON: {e}"), None))?;
    let Some(o) = v.as_object() else {
        return Err((Reason::NotAnObject, "label record is not a JSON object".into(), None));
    };
    let missing = |name: &'static str| {
        (
            Reason::MissingField,
            format!("label record without `{name}`"),
            Some(name),
        )
    };
    let event_id = match o.get("event_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null) => return Err(missing("event_id")),
        Some(other) => {
            let m = format!("`event_id` must be a string or number, got {other}");
            return Err((Reason::WrongType, m, Some("event_id")));
        }
    };
    let label = match o.get("label") {
        Some(Value::String(s)) => s.clone(),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
        None | Some(Value::Null) => return Err(missing("label")),
        Some(other) => {
            let m = format!("`label` must be a string, number or boolean, got {other}");
            return Err((Reason::WrongType, m, Some("label")));
        }
    };
    let bad_ts = || {
        let m = "`ts` must be epoch ms or an RFC 3339 time (or absent, with a message timestamp)";
        (Reason::WrongType, m.to_string(), Some("ts"))
    };
    let ts_ms = match o.get("ts") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_i64().ok_or_else(bad_ts)?),
        Some(Value::String(s)) => Some(
            humantime::parse_rfc3339_weak(s)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64)
                .ok_or_else(bad_ts)?,
        ),
        Some(_) => return Err(bad_ts()),
    };
    Ok(LabelFields { event_id, label, ts_ms })
}
