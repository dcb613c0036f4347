//! Any bytes as a Kafka message value, decoded by the digits schema and by a
//! schema with every field type (and a version field): never a panic; each
//! event is either in the batch or rejected with a reason, a message and its
//! coordinates.
#![no_main]

use std::sync::{Arc, OnceLock};

use driftwatch::decode::Decoder;
use driftwatch::schema::EventSchema;
use driftwatch::source::RawRecord;
use libfuzzer_sys::fuzz_target;

mod common;

fn schemas() -> &'static [Arc<EventSchema>] {
    static S: OnceLock<Vec<Arc<EventSchema>>> = OnceLock::new();
    S.get_or_init(|| {
        let root = common::repo_root();
        [
            root.join("schemas/digits.yaml"),
            root.join("fuzz/all_types.schema.yaml"),
        ]
        .iter()
        .map(|p| Arc::new(EventSchema::load(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))))
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    for schema in schemas() {
        let mut d = Decoder::new(schema.clone(), 4096);
        let rec = RawRecord {
            payload: Some(data.to_vec()),
            partition: 3,
            offset: 7,
            timestamp_ms: Some(1),
        };
        let accepted = match d.decode(&rec) {
            Ok(()) => true,
            Err(r) => {
                assert!(!r.message.is_empty());
                assert_eq!((r.partition, r.offset), (3, 7));
                false
            }
        };
        assert_eq!(d.len(), usize::from(accepted));
        let batch = d.flush().expect("a batch of accepted events builds");
        assert_eq!(batch.map_or(0, |b| b.num_rows()), usize::from(accepted));
    }
});
