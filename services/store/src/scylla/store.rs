//! [`ScyllaStore`]: the session, its statements, migration and the port.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use ::scylla::client::execution_profile::ExecutionProfile;
use ::scylla::client::session::Session;
use ::scylla::client::session_builder::SessionBuilder;
use ::scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use ::scylla::response::query_result::QueryRowsResult;
use ::scylla::response::PagingState;
use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::statement::unprepared::Statement;
use ::scylla::statement::{Consistency, SerialConsistency};
use async_trait::async_trait;
use signals_core::{LogPosition, Offset, Partition, UserRecord};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use super::batch::ManifestCache;
use super::codec::{to_bigint, USER_BUCKETS};
use super::config::ScyllaOptions;
use super::driver;
use super::schema::{self, Statements};
use crate::{
    BatchCheckpoint, BatchManifest, BatchPart, BatchStore, EncodedRecord, GarbageStats, IndexEntry,
    PositionedEntry, ServingStore, SpeedProgress, SpeedStore, SpeedWrite, StoreError, StoreReads,
};

/// The [`SignalStore`](crate::SignalStore) on a ScyllaDB (or Cassandra) cluster. Cheap to clone.
#[derive(Clone)]
pub struct ScyllaStore {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("nodes", &self.inner.options.nodes)
            .field("keyspace", &self.inner.options.keyspace)
            .finish_non_exhaustive()
    }
}

pub(super) struct Inner {
    pub(super) session: Session,
    pub(super) options: ScyllaOptions,
    /// Prepared at connect when the schema is there, else after `migrate`.
    statements: OnceCell<Statements>,
    pub(super) manifest: ManifestCache,
}

impl ScyllaStore {
    /// Connects to the cluster and prepares every statement, once.
    ///
    /// A keyspace without the tables is not an error here: the store then
    /// prepares its statements after [`ScyllaStore::migrate`], and every
    /// other call fails until then, naming `signals migrate`.
    pub async fn connect(options: ScyllaOptions) -> Result<ScyllaStore, StoreError> {
        options.validate()?;
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .serial_consistency(Some(SerialConsistency::Serial))
            .request_timeout(Some(options.request_timeout))
            .build();
        let mut builder = SessionBuilder::new();
        if let Some((username, password)) = &options.credentials {
            builder = builder.user(username, password);
        }
        if let Some(ca) = &options.tls_ca {
            builder = super::config::with_tls(builder, ca)?;
        }
        let session = builder
            .known_nodes(&options.nodes)
            .connection_timeout(options.request_timeout)
            .default_execution_profile_handle(profile.into_handle())
            // Client-side, monotonic per process: of two writes of one cell
            // made one after the other here, the later one wins.
            .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()))
            .keyspaces_to_fetch([options.keyspace.clone()])
            .build()
            .await
            .map_err(driver(format_args!(
                "connect to the CQL nodes {:?}",
                options.nodes
            )))?;
        let store = ScyllaStore {
            inner: Arc::new(Inner {
                session,
                manifest: ManifestCache::new(options.manifest_ttl),
                options,
                statements: OnceCell::new(),
            }),
        };
        if store.schema_present() {
            // A sibling starting beside this process (speed beside serve)
            // may have created the tables a moment ago: the node can refuse
            // to prepare against one it lists already. The statements are
            // prepared on first need anyway; until then reads fail and
            // readiness says why.
            if let Err(error) = store.inner.statements().await {
                warn!(%error, "cannot prepare the statements yet; they are prepared on first need");
            }
        } else {
            info!(
                keyspace = %store.inner.options.keyspace,
                "keyspace not migrated yet: statements are prepared after migrate"
            );
        }
        info!(
            nodes = ?store.inner.options.nodes,
            keyspace = %store.inner.options.keyspace,
            "scylla store connected"
        );
        Ok(store)
    }

    /// Creates the keyspace and tables of `infra/cql/schema.cql` where they
    /// are missing (idempotent), then prepares the statements.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let options = &self.inner.options;
        let statements = schema::migration(&options.keyspace, options.replication_factor);
        for cql in &statements {
            let mut statement = Statement::new(cql.as_str());
            // DDL waits for schema agreement, which takes longer than a read.
            statement.set_request_timeout(Some(options.request_timeout.max(DDL_TIMEOUT)));
            self.inner
                .session
                .query_unpaged(statement, &[])
                .await
                .map_err(driver(format_args!("apply the schema statement `{cql}`")))?;
        }
        self.inner
            .session
            .refresh_metadata()
            .await
            .map_err(driver("refresh the cluster metadata"))?;
        self.inner.statements().await?;
        let ddl_timeout = options.request_timeout.max(DDL_TIMEOUT);
        let moved = self.inner.adopt_legacy_index(ddl_timeout).await?;
        if moved > 0 {
            info!(
                entries = moved,
                "event index moved into its buckets (event_index_buckets)"
            );
        }
        info!(keyspace = %options.keyspace, statements = statements.len(), "scylla schema applied");
        Ok(())
    }

    /// The users of `version` listed in `bucket` (`0..USER_BUCKETS`): one
    /// partition read. Enumerates a version bucket by bucket, or samples it
    /// (`batch verify`), without scanning the records.
    pub async fn version_users(
        &self,
        version: u64,
        bucket: u32,
    ) -> Result<Vec<String>, StoreError> {
        if bucket >= USER_BUCKETS {
            return Err(StoreError::Backend(format!(
                "bucket {bucket} does not exist: versions are listed in buckets 0..{USER_BUCKETS}"
            )));
        }
        let statements = self.inner.statements().await?;
        let version = to_bigint(version, "version")?;
        // Below USER_BUCKETS (256): fits.
        self.inner
            .listed_users(statements, version, bucket as i32)
            .await
    }

    /// The options the store was connected with.
    pub fn options(&self) -> &ScyllaOptions {
        &self.inner.options
    }

    /// Whether the driver's metadata shows every table of the schema.
    fn schema_present(&self) -> bool {
        let state = self.inner.session.get_cluster_state();
        state
            .get_keyspace(&self.inner.options.keyspace)
            .is_some_and(|ks| schema::TABLES.iter().all(|t| ks.tables.contains_key(*t)))
    }
}

/// Lower bound of a schema statement's deadline.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

impl Inner {
    /// The prepared statements, prepared on first need if not yet.
    pub(super) async fn statements(&self) -> Result<&Statements, StoreError> {
        self.statements
            .get_or_try_init(|| async {
                Statements::prepare(&self.session, &self.options.keyspace)
                    .await
                    .map_err(|e| match e {
                        StoreError::Backend(message) => StoreError::Backend(format!(
                            "{message} (is keyspace {} migrated? run `signals migrate`)",
                            self.options.keyspace
                        )),
                        other => other,
                    })
            })
            .await
    }
}

#[async_trait]
impl StoreReads for ScyllaStore {
    async fn speed_progress(&self) -> Result<SpeedProgress, StoreError> {
        self.inner.speed_progress().await
    }

    async fn lookup_events(
        &self,
        event_ids: &[String],
    ) -> Result<HashMap<String, IndexEntry>, StoreError> {
        self.inner.lookup_events(event_ids).await
    }

    async fn published(&self) -> Result<Option<BatchManifest>, StoreError> {
        let manifest = self.inner.read_published().await?;
        Ok(manifest.map(Arc::unwrap_or_clone))
    }

    async fn batch_record(
        &self,
        version: u64,
        user_id: &str,
    ) -> Result<Option<Arc<UserRecord>>, StoreError> {
        self.inner.batch_record(version, user_id).await
    }

    async fn speed_entries(
        &self,
        user_id: &str,
        from: &LogPosition,
    ) -> Result<Vec<PositionedEntry>, StoreError> {
        self.inner.speed_entries(user_id, Some(from)).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.inner.check().await
    }
}

#[async_trait]
impl SpeedStore for ScyllaStore {
    async fn apply_speed(&self, write: Arc<SpeedWrite>) -> Result<(), StoreError> {
        self.inner.apply_speed(&write).await
    }
}

#[async_trait]
impl ServingStore for ScyllaStore {
    async fn serving_manifest(&self) -> Result<Option<Arc<BatchManifest>>, StoreError> {
        self.inner.serving_manifest().await
    }
}

#[async_trait]
impl crate::follow::ChangeFeed for ScyllaStore {
    async fn speed_progress(&self) -> Result<SpeedProgress, StoreError> {
        self.inner.speed_progress().await
    }

    async fn speed_changes(
        &self,
        partition: Partition,
        after: Offset,
    ) -> Result<Vec<(Offset, Vec<u64>)>, StoreError> {
        self.inner.speed_changes(partition, after).await
    }
}

#[async_trait]
impl BatchStore for ScyllaStore {
    async fn write_records(
        &self,
        version: u64,
        records: Vec<(String, EncodedRecord)>,
    ) -> Result<(), StoreError> {
        self.inner.write_batch(version, records).await
    }

    async fn publish(&self, manifest: &BatchManifest) -> Result<(), StoreError> {
        self.inner.publish(manifest).await
    }

    async fn collect_garbage(
        &self,
        covered: &LogPosition,
        keep_version: u64,
    ) -> Result<GarbageStats, StoreError> {
        self.inner.collect_garbage(covered, keep_version).await
    }

    async fn erase_user(
        &self,
        user_id: &str,
        marker: (Partition, Offset),
    ) -> Result<(), StoreError> {
        self.inner.erase_user(user_id, marker).await
    }

    async fn batch_checkpoint(&self) -> Result<Option<BatchCheckpoint>, StoreError> {
        self.inner.batch_checkpoint().await
    }

    async fn save_batch_checkpoint(
        &self,
        checkpoint: Option<&BatchCheckpoint>,
    ) -> Result<(), StoreError> {
        self.inner.save_batch_checkpoint(checkpoint).await
    }

    async fn claim_batch_checkpoint(
        &self,
        candidate: &BatchCheckpoint,
    ) -> Result<BatchCheckpoint, StoreError> {
        self.inner.claim_batch_checkpoint(candidate).await
    }

    async fn save_batch_part(&self, version: u64, part: &BatchPart) -> Result<(), StoreError> {
        self.inner.save_batch_part(version, part).await
    }

    async fn batch_parts(&self, version: u64) -> Result<Vec<BatchPart>, StoreError> {
        self.inner.batch_parts(version).await
    }
}

impl Inner {
    /// One single-partition read of the keyspace at the usual consistency.
    async fn check(&self) -> Result<(), StoreError> {
        let statements = self.statements().await?;
        self.session
            .execute_unpaged(&statements.select_pointer, ())
            .await
            .map_err(driver("read the published pointer (readiness check)"))?;
        Ok(())
    }
}

impl Inner {
    /// Runs a paged read of `statement`, handing each page to `each`.
    ///
    /// Pages are fetched one after the other on this task (no background
    /// pager task): the single-partition reads of serving stay cheap.
    pub(super) async fn pages<V: SerializeRow>(
        &self,
        statement: &PreparedStatement,
        values: &V,
        what: &str,
        mut each: impl FnMut(&QueryRowsResult) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut paging = PagingState::start();
        loop {
            let (result, next) = self
                .session
                .execute_single_page(statement, values, paging)
                .await
                .map_err(driver(what))?;
            each(&result.into_rows_result().map_err(driver(what))?)?;
            match next.into_paging_control_flow() {
                ControlFlow::Break(()) => return Ok(()),
                ControlFlow::Continue(state) => paging = state,
            }
        }
    }

    /// Runs a write (or any statement whose result is not needed).
    pub(super) async fn run<V: SerializeRow>(
        &self,
        statement: &PreparedStatement,
        values: V,
        what: &str,
    ) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(driver(what))?;
        Ok(())
    }
}
