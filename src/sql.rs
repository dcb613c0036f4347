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
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{AggregateUDF, Expr, LogicalPlan, ScalarUDF};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, reset_plan_states};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, collect};

/// A table whose batches are replaced before each run of the plans over it.
#[derive(Debug)]
pub struct SwapTable {
    schema: SchemaRef,
    batches: Arc<RwLock<Vec<RecordBatch>>>,
}

impl SwapTable {
    pub fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            batches: Arc::new(RwLock::new(vec![])),
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
        Ok(Arc::new(SwapScan::new(
            self.batches.clone(),
            self.schema.clone(),
            projection.cloned(),
        )?))
    }
}

/// The scan of a [`SwapTable`]: it reads what the table holds when it is
/// executed, not when it is planned, so one physical plan serves every run
/// (planning and optimising a query again per window cost more than
/// running it). Its statistics are unknown, so no optimiser rule answers a
/// query from the (empty) table seen at planning time.
#[derive(Debug)]
struct SwapScan {
    batches: Arc<RwLock<Vec<RecordBatch>>>,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl SwapScan {
    fn new(batches: Arc<RwLock<Vec<RecordBatch>>>, schema: SchemaRef, projection: Option<Vec<usize>>) -> Result<Self> {
        let projected = match &projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            batches,
            schema,
            projection,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for SwapScan {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SwapScan")
    }
}

impl ExecutionPlan for SwapScan {
    fn name(&self) -> &str {
        "SwapScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, _partition: usize, _ctx: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let batches = self.batches.read().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            self.schema.clone(),
            self.projection.clone(),
        )?))
    }
}

/// A query planned once: its logical plan (for its output schema) and the
/// physical plan every run executes.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub logical: LogicalPlan,
    physical: Arc<dyn ExecutionPlan>,
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

    /// Plans a query once, down to its physical plan; only SELECTs are allowed.
    pub async fn plan(&self, sql: &str) -> Result<Prepared> {
        let opts = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = self.ctx.sql_with_options(sql, opts).await?;
        let logical = df.into_optimized_plan()?;
        let physical = self.ctx.state().create_physical_plan(&logical).await?;
        Ok(Prepared { logical, physical })
    }

    /// Runs a prepared query over `batches`: its physical plan with fresh
    /// execution state (DataFusion's `reset_plan_states`, as for re-running
    /// a recursive query's plan), reading the batches through [`SwapScan`].
    pub async fn run(&self, plan: &Prepared, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.table.set(batches);
        let out = match reset_plan_states(plan.physical.clone()) {
            Ok(physical) => collect(physical, self.ctx.task_ctx()).await,
            Err(e) => Err(e),
        };
        self.table.set(vec![]);
        out
    }
}
