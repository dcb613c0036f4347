use super::*;
use crate::schema::EventSchema;

fn schema() -> Arc<EventSchema> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.yaml");
    std::fs::write(
        &p,
        "name: t\nevent_time: ts\nlabel: label\nfields:\n  - {name: site, type: category}\n  - {name: x, type: float}\n  - {name: ts, type: timestamp}\n  - {name: label, type: int}\n  - {name: px, type: tensor, shape: [2, 2]}\n",
    )
    .unwrap();
    Arc::new(EventSchema::load(&p).unwrap())
}

fn rec(off: i64, s: &str) -> RawRecord {
    RawRecord {
        payload: Some(s.as_bytes().to_vec()),
        partition: 0,
        offset: off,
        timestamp_ms: Some(5),
    }
}

const GOOD: &str = r#"{"site":"a","x":1.5,"ts":1000,"label":3,"px":[[1,2],[3,4]]}"#;

#[test]
fn good_events_become_a_batch() {
    let mut d = Decoder::new(schema(), 1024);
    d.decode(&rec(0, GOOD)).unwrap();
    d.decode(&rec(
        1,
        r#"{"site":"b","x":2,"ts":"2026-01-01T00:00:00Z","px":[1,2,3,4],"extra":true}"#,
    ))
    .unwrap();
    let b = d.flush().unwrap().unwrap();
    assert_eq!(b.num_rows(), 2);
    assert_eq!(b.num_columns(), 9);
    assert!(d.flush().unwrap().is_none());
    let label = b.column(3);
    assert_eq!(label.null_count(), 1, "label is optional per event");
}

#[test]
fn each_kind_of_bad_event_is_rejected_with_its_reason() {
    let mut d = Decoder::new(schema(), 200);
    let cases: &[(&str, Reason, Option<&str>)] = &[
        ("{not json", Reason::MalformedJson, None),
        ("[1,2]", Reason::NotAnObject, None),
        (r#"{"x":1,"ts":1,"px":[1,2,3,4]}"#, Reason::MissingField, Some("site")),
        (
            r#"{"site":"a","x":"high","ts":1,"px":[1,2,3,4]}"#,
            Reason::WrongType,
            Some("x"),
        ),
        (
            r#"{"site":"a","x":1,"ts":1,"px":[1,2,3]}"#,
            Reason::WrongTensorLength,
            Some("px"),
        ),
        (
            r#"{"site":"a","x":"NaN","ts":1,"px":[1,2,3,4]}"#,
            Reason::NonFinite,
            Some("x"),
        ),
        (
            r#"{"site":"a","x":1,"ts":1,"px":[1,2,3,1e300]}"#,
            Reason::NonFinite,
            Some("px"),
        ),
    ];
    for (i, (payload, reason, field)) in cases.iter().enumerate() {
        let r = d.decode(&rec(i as i64, payload)).unwrap_err();
        assert_eq!(r.reason, *reason, "{payload}: {}", r.message);
        assert_eq!(r.field.as_deref(), *field, "{payload}");
        assert_eq!(r.offset, i as i64);
        assert!(r.message.contains(field.unwrap_or("")), "{}", r.message);
    }
    let big = format!(r#"{{"site":"{}"}}"#, "a".repeat(300));
    assert_eq!(d.decode(&rec(9, &big)).unwrap_err().reason, Reason::Oversized);
    let tomb = RawRecord {
        payload: None,
        partition: 1,
        offset: 10,
        timestamp_ms: None,
    };
    assert_eq!(d.decode(&tomb).unwrap_err().reason, Reason::EmptyPayload);
    // Nothing half-appended: a good event after all the bad ones is the only row.
    d.decode(&rec(11, GOOD)).unwrap();
    let b = d.flush().unwrap().unwrap();
    assert_eq!(b.num_rows(), 1);
}

#[test]
fn payload_excerpt_is_cut() {
    let mut d = Decoder::new(schema(), 1 << 20);
    let junk = "x".repeat(PAYLOAD_EXCERPT_BYTES * 2);
    let r = d.decode(&rec(0, &junk)).unwrap_err();
    assert!(r.payload_truncated);
    assert_eq!(r.payload.len(), PAYLOAD_EXCERPT_BYTES);
}

proptest::proptest! {
    #[test]
    fn never_panics_on_random_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        let mut d = Decoder::new(schema(), 256);
        let r = RawRecord { payload: Some(bytes), partition: 0, offset: 0, timestamp_ms: None };
        let _ = d.decode(&r);
        let _ = d.flush().unwrap();
    }
}

/// Any JSON value: scalars of every type (huge, tiny, negative, NaN-ish
/// strings), arrays and objects nested a few levels.
fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)),
        prop_oneof![
            Just("NaN"),
            Just("inf"),
            Just("2026-01-01T00:00:00Z"),
            Just(""),
            Just("a")
        ]
        .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-z]{1,3}|site|x|ts|label|px", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An event whose every field is replaced, dropped or kept at random.
fn near_event() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let good: serde_json::Value = serde_json::from_str(GOOD).unwrap();
    proptest::collection::vec((0u8..3, any_json()), 5).prop_map(move |changes| {
        let mut ev = good.clone();
        for ((what, v), field) in changes.into_iter().zip(["site", "x", "ts", "label", "px"]) {
            match what {
                0 => {}
                1 => ev[field] = v,
                _ => {
                    ev.as_object_mut().map(|o| o.remove(field));
                }
            }
        }
        ev
    })
}

proptest::proptest! {
    /// Random JSON and mangled events: never a panic; every event is either
    /// in the batch or rejected with a reason, a message and its offset.
    #[test]
    fn random_json_is_decoded_or_rejected_with_a_reason(
        values in proptest::collection::vec(proptest::prop_oneof![any_json(), near_event()], 1..20)
    ) {
        let mut d = Decoder::new(schema(), 4096);
        let mut accepted = 0;
        for (i, v) in values.iter().enumerate() {
            match d.decode(&rec(i as i64, &v.to_string())) {
                Ok(()) => accepted += 1,
                Err(e) => {
                    proptest::prop_assert!(!e.message.is_empty());
                    proptest::prop_assert!(!e.reason.as_str().is_empty());
                    proptest::prop_assert_eq!(e.offset, i as i64);
                }
            }
        }
        let rows = d.flush().unwrap().map_or(0, |b| b.num_rows());
        proptest::prop_assert_eq!(rows, accepted);
    }
}

#[test]
fn streaming_parse_keeps_json_semantics() {
    let mut d = Decoder::new(schema(), 4096);
    // Malformed JSON anywhere wins over a field error met before it.
    let r = d
        .decode(&rec(0, r#"{"site":"a","x":"high","ts":1,"px":[1,2,3,4] trailing"#))
        .unwrap_err();
    assert_eq!(r.reason, Reason::MalformedJson, "{}", r.message);
    // Field errors are reported in schema order, whatever the key order.
    let r = d
        .decode(&rec(1, r#"{"px":[1,2,"x",4],"ts":1,"x":"high","site":"a"}"#))
        .unwrap_err();
    assert_eq!(r.field.as_deref(), Some("x"), "{}", r.message);
    // A repeated key: the last value counts (a bad first one is forgotten).
    // Unknown keys with nested values are skipped; categories may be numbers.
    d.decode(&rec(
        2,
        r#"{"site":7,"x":"high","x":2.5,"ts":1,"px":[1,2,3,4],"junk":{"a":[1,{"b":null}]}}"#,
    ))
    .unwrap();
    d.decode(&rec(3, r#"{"site":3.5,"x":1,"ts":1,"px":[[1,2],[3,4]]}"#))
        .unwrap();
    let b = d.flush().unwrap().unwrap();
    let site = b
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
        .unwrap();
    assert_eq!((site.value(0), site.value(1)), ("7", "3.5"));
    let x = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(x.value(0), 2.5);
    // Deep nesting is refused by the parser's depth limit, not the stack.
    let deep = format!(
        r#"{{"site":"a","x":1,"ts":1,"px":{}1{}}}"#,
        "[".repeat(1500),
        "]".repeat(1500)
    );
    assert_eq!(d.decode(&rec(4, &deep)).unwrap_err().reason, Reason::MalformedJson);
    // A huge tensor is cut while parsing and reported by length.
    let huge = format!(r#"{{"site":"a","x":1,"ts":1,"px":[{}0]}}"#, "0,".repeat(1500));
    let r = d.decode(&rec(5, &huge)).unwrap_err();
    assert_eq!(r.reason, Reason::WrongTensorLength, "{}", r.message);
}

proptest::proptest! {
    /// What the decoder accepts is exactly the event's values: each column
    /// equals its JSON field read independently through serde_json::Value.
    #[test]
    fn accepted_events_hold_their_values(ev in near_event()) {
        use datafusion::arrow::array::{Array, StringArray};
        let mut d = Decoder::new(schema(), 4096);
        let text = ev.to_string();
        if d.decode(&rec(0, &text)).is_err() {
            return Ok(());
        }
        // Read back from the same text: serde_json's float parsing may differ
        // from the in-memory value by an ulp, and the decoder parses the text.
        let ev: serde_json::Value = serde_json::from_str(&text).unwrap();
        let b = d.flush().unwrap().unwrap();
        let site = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let want_site = match &ev["site"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        proptest::prop_assert_eq!(site.value(0), want_site.as_str());
        let x = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        match &ev["x"] {
            serde_json::Value::Number(n) => proptest::prop_assert_eq!(x.value(0), n.as_f64().unwrap()),
            other => proptest::prop_assert!(false, "accepted x = {other}"),
        }
        let label = b.column(3).as_any().downcast_ref::<Int64Array>().unwrap();
        match ev.get("label") {
            None | Some(serde_json::Value::Null) => proptest::prop_assert!(label.is_null(0)),
            Some(v) => proptest::prop_assert_eq!(Some(label.value(0)), v.as_i64()),
        }
        let px = b.column(4).as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        let got = px.value(0);
        let got = got.as_any().downcast_ref::<Float32Array>().unwrap();
        fn flat(v: &serde_json::Value, out: &mut Vec<f32>) {
            match v {
                serde_json::Value::Array(a) => a.iter().for_each(|e| flat(e, out)),
                n => out.push(n.as_f64().unwrap() as f32),
            }
        }
        let mut want = vec![];
        flat(&ev["px"], &mut want);
        proptest::prop_assert_eq!(got.values().to_vec(), want);
    }
}

fn versioned(extra: &str) -> Result<Arc<EventSchema>, crate::config::ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.yaml");
    std::fs::write(
        &p,
        format!("name: v\n{extra}fields:\n  - {{name: v, type: int, nullable: true}}\n  - {{name: tag, type: string}}\n  - {{name: x, type: float}}\n"),
    )
    .unwrap();
    EventSchema::load(&p).map(Arc::new)
}

/// Events declaring a version the schema does not list are dead-lettered
/// with their own reason, naming the field, the value and what is accepted;
/// listed versions (as numbers or strings) and events without one pass.
#[test]
fn unknown_schema_versions_are_rejected_by_name() {
    let s = versioned("version: {field: v, accept: [1, 2]}\n").unwrap();
    let mut d = Decoder::new(s, 1024);
    d.decode(&rec(0, r#"{"v":1,"tag":"a","x":1}"#)).unwrap();
    d.decode(&rec(1, r#"{"v":2,"tag":"a","x":1}"#)).unwrap();
    d.decode(&rec(2, r#"{"tag":"a","x":1}"#)).unwrap();
    let e = d.decode(&rec(3, r#"{"v":3,"tag":"a","x":1}"#)).unwrap_err();
    assert_eq!(e.reason, Reason::UnknownSchemaVersion);
    assert_eq!(e.reason.as_str(), "unknown_schema_version");
    assert_eq!(e.field.as_deref(), Some("v"));
    assert!(
        e.message.contains("`v` = 3") && e.message.contains("1, 2"),
        "{}",
        e.message
    );
    assert_eq!(d.flush().unwrap().unwrap().num_rows(), 3);

    let s = versioned("version: {field: tag, accept: [\"2024-06\", 7]}\n").unwrap();
    let mut d = Decoder::new(s, 1024);
    d.decode(&rec(0, r#"{"tag":"2024-06","x":1}"#)).unwrap();
    d.decode(&rec(1, r#"{"tag":"7","x":1}"#)).unwrap();
    let e = d.decode(&rec(2, r#"{"tag":"2025-01","x":1}"#)).unwrap_err();
    assert_eq!(e.reason, Reason::UnknownSchemaVersion);
    assert!(e.message.contains("\"2025-01\""), "{}", e.message);
    // A wrong JSON type in the version field is a type error, as for any field.
    let e = d.decode(&rec(3, r#"{"tag":7.5,"x":1}"#)).unwrap_err();
    assert_eq!(e.reason, Reason::WrongType);
}

#[test]
fn a_version_spec_must_name_a_usable_field() {
    for (extra, want) in [
        ("version: {field: nope, accept: [1]}\n", "no field named `nope`"),
        ("version: {field: x, accept: [1]}\n", "a version is an int"),
        ("version: {field: v, accept: []}\n", "at least one version"),
        ("version: {field: v, accept: [1], strict: true}\n", "strict"),
    ] {
        let e = versioned(extra).unwrap_err().to_string();
        assert!(e.contains(want), "{extra}: {e}");
    }
}

/// Numbers are read exactly: each double written in its shortest
/// round-trip form comes back bit for bit, neighbours one ulp apart stay
/// apart (without serde_json's `float_roundtrip`, values near 1.0 came back
/// one ulp off and distinct values merged).
#[test]
fn numbers_decode_to_the_exact_double() {
    let mut values = vec![];
    let mut v = 1.0f64;
    for _ in 0..500 {
        values.push(v);
        v = f64::from_bits(v.to_bits() + 1);
    }
    let mut v = 1.0f64;
    for _ in 0..500 {
        v = f64::from_bits(v.to_bits() - 1);
        values.push(v);
    }
    values.extend([0.1, 0.30000001192092896, 1e-300, 123456.789e10, 2.2250738585072014e-308]);
    let mut d = Decoder::new(schema(), 1024);
    for (i, x) in values.iter().enumerate() {
        let json = format!(r#"{{"site":"a","x":{x:?},"ts":1000,"px":[1,2,3,4]}}"#);
        d.decode(&rec(i as i64, &json)).unwrap();
    }
    let b = d.flush().unwrap().unwrap();
    let col = b.column_by_name("x").unwrap();
    let col = datafusion::arrow::compute::cast(col, &datafusion::arrow::datatypes::DataType::Float64).unwrap();
    let got = datafusion::arrow::array::AsArray::as_primitive::<datafusion::arrow::datatypes::Float64Type>(&col);
    for (i, x) in values.iter().enumerate() {
        assert_eq!(got.value(i).to_bits(), x.to_bits(), "{x:?} read as {:?}", got.value(i));
    }
}

/// A payload that is not UTF-8 is kept as base64 and comes back byte for
/// byte; a UTF-8 one stays text, cut at a character boundary.
#[test]
fn rejected_payloads_keep_their_bytes() {
    let mut d = Decoder::new(schema(), 1 << 20);
    let binary: Vec<u8> = vec![0xff, 0xfe, 0x00, b'{', 0x80, 0xc3];
    let r = d
        .decode(&RawRecord {
            payload: Some(binary.clone()),
            partition: 2,
            offset: 7,
            timestamp_ms: None,
        })
        .unwrap_err();
    assert_eq!(r.payload_encoding, PayloadEncoding::Base64);
    assert_eq!(r.payload_bytes(), binary);
    let json: serde_json::Value = serde_json::to_value(&*r).unwrap();
    assert_eq!(json["payload_encoding"], "base64");
    let text = "é".repeat(PAYLOAD_EXCERPT_BYTES); // 2 bytes each
    let r = d.decode(&rec(0, &text)).unwrap_err();
    assert_eq!(r.payload_encoding, PayloadEncoding::Utf8);
    assert!(r.payload_truncated && r.payload.len() == PAYLOAD_EXCERPT_BYTES);
    assert!(text.starts_with(&r.payload));
}

/// Each decoded event counts its partition's events rejected since the one
/// before it, across flushes (so whatever the batching) and per partition.
#[test]
fn decoded_events_count_the_dead_letters_before_them() {
    let mut d = Decoder::new(schema(), 1024);
    let on = |p: i32, off: i64, s: &str| RawRecord {
        partition: p,
        ..rec(off, s)
    };
    let mut counts = vec![];
    let mut take = |d: &mut Decoder| {
        if let Some(b) = d.flush().unwrap() {
            let c = b.column_by_name(crate::schema::DEAD_LETTERS_COL).unwrap();
            counts.extend(c.as_any().downcast_ref::<UInt32Array>().unwrap().values().to_vec());
        }
    };
    d.decode(&on(0, 0, GOOD)).unwrap();
    assert!(d.decode(&on(0, 1, "{")).is_err());
    assert!(d.decode(&on(1, 0, "nope")).is_err());
    assert!(d.decode(&on(0, 2, "[]")).is_err());
    take(&mut d); // a flush between the rejections and the next event changes nothing
    d.decode(&on(0, 3, GOOD)).unwrap();
    d.decode(&on(1, 1, GOOD)).unwrap();
    d.decode(&on(0, 4, GOOD)).unwrap();
    take(&mut d);
    assert_eq!(counts, vec![0, 2, 1, 0]);
}

/// A number where a category is declared is the category of its text
/// (`17` and `"17"` are one category, `3` and `3.0` are two), unless the
/// field is `strict`: then it is dead-lettered as a wrong type, naming the
/// field. `strict` on another kind of field is a schema error naming it.
#[test]
fn numbers_in_category_fields_are_text_unless_strict() {
    let load = |fields: &str| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, format!("name: c\nfields:\n{fields}")).unwrap();
        EventSchema::load(&p).map(Arc::new)
    };
    let lenient = load("  - {name: scanner, type: category}\n").unwrap();
    let mut d = Decoder::new(lenient, 1024);
    for (i, v) in ["17", "\"17\"", "3.0"].iter().enumerate() {
        d.decode(&rec(i as i64, &format!(r#"{{"scanner":{v}}}"#))).unwrap();
    }
    let b = d.flush().unwrap().unwrap();
    let col = b
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
        .unwrap();
    assert_eq!(col.iter().collect::<Vec<_>>(), [Some("17"), Some("17"), Some("3.0")]);

    let strict = load("  - {name: scanner, type: category, strict: true}\n").unwrap();
    let mut d = Decoder::new(strict, 1024);
    d.decode(&rec(0, r#"{"scanner":"17"}"#)).unwrap();
    let e = d.decode(&rec(1, r#"{"scanner":17}"#)).unwrap_err();
    assert_eq!(e.reason, Reason::WrongType);
    assert_eq!(e.field.as_deref(), Some("scanner"));
    assert!(
        e.message.contains("strict category") && e.message.contains("a number"),
        "{}",
        e.message
    );

    let e = load("  - {name: x, type: float, strict: true}\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fields[0].strict") && e.contains("only category fields"),
        "{e}"
    );
}
