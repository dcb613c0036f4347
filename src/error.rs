//! The error type of the pipeline's stages and drivers: every failure says
//! which stage and what. The binary turns it into a message and an exit code.

use crate::config::ConfigError;

impl From<crate::source::SourceError> for RuntimeError {
    fn from(e: crate::source::SourceError) -> Self {
        match e {
            crate::source::SourceError::File(f) => RuntimeError::File(f),
            other => RuntimeError::Other(other.to_string()),
        }
    }
}

/// Failures of a run. Each says which stage and what.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Transform(#[from] crate::transform::TransformError),
    #[error(transparent)]
    Detect(#[from] crate::detect::DetectError),
    #[error(transparent)]
    File(#[from] crate::source::file::FileError),
    #[error("decode: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("kafka ({what}): {source}")]
    Kafka {
        what: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("{0}")]
    Other(String),
}
