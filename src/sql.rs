//! The SQL engine shared by the transform and detect stages: a DataFusion
//! session with driftwatch's aggregate functions, one in-memory table whose
//! contents are swapped per run, and plans built once.
//!
//! Pipeline SQL may only SELECT: DDL, DML and statements (`CREATE EXTERNAL
//! TABLE`, `COPY`, `SET`, …) are refused, and the only table is the stage's own
//! (`events` or `windows`), so no query can read or write files.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::logical_expr::{AggregateUDF, Expr, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;

/// A table whose batches are replaced before each run of the plans over it.
#[derive(Debug)]
pub struct SwapTable {
    schema: SchemaRef,
    batches: RwLock<Vec<RecordBatch>>,
}

impl SwapTable {
    pub fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            batches: RwLock::new(vec![]),
        }
    }

    /// Replaces the table's contents.
    pub fn set(&self, batches: Vec<RecordBatch>) {
        *self.batches.write().unwrap_or_else(|e| e.into_inner()) = batches;
    }
}

#[async_trait]
impl TableProvider for SwapTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = self.batches.read().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

/// One SQL stage: a session with a single swappable table.
pub struct SqlStage {
    ctx: SessionContext,
    table: Arc<SwapTable>,
}

impl SqlStage {
    /// A session with table `name` of `schema` and the aggregate functions
    /// `udafs` (the driftwatch statistics, from `detect::udaf::all`).
    pub fn new(name: &str, schema: SchemaRef, udafs: Vec<AggregateUDF>) -> Result<Self> {
        // One partition: windows are small and the plans run many times; the
        // parallelism is across pipeline stages, not inside one query.
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
        let ctx = SessionContext::new_with_config(config);
        for f in udafs {
            ctx.register_udaf(f);
        }
        let table = Arc::new(SwapTable::new(schema));
        ctx.register_table(name, table.clone())?;
        Ok(Self { ctx, table })
    }

    /// Adds a scalar function (the transform's text descriptors).
    pub fn register_udf(&self, f: ScalarUDF) {
        self.ctx.register_udf(f);
    }

    /// Plans a query once; only SELECTs are allowed.
    pub async fn plan(&self, sql: &str) -> Result<LogicalPlan> {
        let opts = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = self.ctx.sql_with_options(sql, opts).await?;
        df.into_optimized_plan()
    }

    /// Runs a plan over `batches`.
    pub async fn run(&self, plan: &LogicalPlan, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.table.set(batches);
        let out = self.ctx.execute_logical_plan(plan.clone()).await?.collect().await;
        self.table.set(vec![]);
        out
    }
}
