//! driftwatch: streaming drift detection for ML models, straight off Kafka.
//!
//! The data path, one module per stage:
//! `source` → `decode` → `transform` → `model` → `window` → `detect` → `alert`,
//! wired by `runtime`; `config` and `schema` describe a pipeline; `broker` is
//! the embedded Kafka-protocol broker for demos and tests.

pub mod alert;
pub mod bench;
pub mod broker;
pub mod compare;
pub mod config;
pub mod corpus;
pub mod decode;
pub mod demo;
pub mod detect;
pub mod engine;
pub mod error;
pub mod id_hash;
pub mod labels;
pub mod metrics;
pub mod model;
pub mod replay;
pub mod runtime;
pub mod scenario;
pub mod schema;
pub mod source;
pub mod sql;
pub mod transform;
pub mod window;
