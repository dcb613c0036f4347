//! Optional SQL over each decoded batch (table `events`), for derived
//! features: `SELECT *, (a - b) / c AS ratio FROM events`, with the text
//! descriptors of [`text_descriptors`] among its functions.

pub mod text_descriptors;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::ScalarUDF;

use crate::schema::{DEAD_LETTERS_COL, OFFSET_COL, PARTITION_COL, TIMESTAMP_COL};
use crate::sql::SqlStage;

/// The table name transforms select from.
pub const EVENTS_TABLE: &str = "events";

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("transform.sql: {0}")]
    Plan(String),
    #[error("transform.sql failed on a batch: {0}")]
    Run(String),
}

/// A planned transform.
pub struct Transform {
    stage: SqlStage,
    plan: crate::sql::Prepared,
    output: SchemaRef,
}

impl Transform {
    /// Plans `sql` over events of `input` schema; `functions` are the
    /// scalar functions it may call besides DataFusion's own.
    pub async fn new(input: SchemaRef, sql: &str, functions: Vec<ScalarUDF>) -> Result<Self, TransformError> {
        let stage = SqlStage::new(EVENTS_TABLE, input, crate::detect::udaf::all())
            .map_err(|e| TransformError::Plan(e.to_string()))?;
        for f in functions {
            stage.register_udf(f);
        }
        let plan = stage.plan(sql).await.map_err(|e| TransformError::Plan(e.to_string()))?;
        let output = std::sync::Arc::new(plan.logical.schema().as_arrow().clone());
        for c in [PARTITION_COL, OFFSET_COL, TIMESTAMP_COL, DEAD_LETTERS_COL] {
            if output.field_with_name(c).is_err() {
                return Err(TransformError::Plan(format!(
                    "the result must keep column `{c}` (start with `SELECT *, …`)"
                )));
            }
        }
        Ok(Self { stage, plan, output })
    }

    /// Schema of transformed batches.
    pub fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    /// Runs the transform on one batch.
    pub async fn run(&self, batch: RecordBatch) -> Result<RecordBatch, TransformError> {
        let out = self
            .stage
            .run(&self.plan, vec![batch])
            .await
            .map_err(|e| TransformError::Run(e.to_string()))?;
        concat_batches(&self.output, &out).map_err(|e| TransformError::Run(e.to_string()))
    }
}
