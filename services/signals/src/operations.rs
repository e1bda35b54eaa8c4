//! The admin operations of the HTTP surface, over this process's batch layer.

use std::sync::Arc;

use async_trait::async_trait;
use signals_api::operations::{BatchSummary, DeletionReceipt, Running};
use signals_api::{OperationError, Operations};
use signals_batch::{BatchError, BatchLayer, Job, Quiet};
use signals_store::ServingStore;

/// [`Operations`] carried out by a [`BatchLayer`].
pub struct BatchOperations {
    pub batch: Arc<BatchLayer>,
    /// The serving path, whose cache forgets a deleted user.
    pub serving: Arc<dyn ServingStore>,
}

/// Deletes `user_id` through the batch layer (the log's deletion record,
/// the store's erasure), then from what serving keeps beside the store.
pub async fn delete_user(
    batch: &BatchLayer,
    serving: &dyn ServingStore,
    user_id: &str,
    reason: &str,
) -> Result<DeletionReceipt, BatchError> {
    let receipt = batch.delete_user(user_id, reason).await?;
    serving.evict_user(user_id).await?;
    Ok(receipt)
}

/// The class of a batch failure, for the HTTP status.
fn classify(error: BatchError) -> OperationError {
    match error {
        BatchError::AlreadyRunning(_) => OperationError::Conflict(error.to_string()),
        BatchError::Invalid(why) => OperationError::Invalid(why),
        error => OperationError::Unavailable(error.to_string()),
    }
}

#[async_trait]
impl Operations for BatchOperations {
    async fn run_batch(&self) -> Result<BatchSummary, OperationError> {
        self.batch
            .run(Job::Run, false, &Quiet)
            .await
            .map_err(classify)
    }

    fn running(&self) -> Option<Running> {
        self.batch.running()
    }

    fn history(&self) -> Vec<BatchSummary> {
        self.batch.history()
    }

    async fn delete_user(
        &self,
        user_id: &str,
        reason: &str,
    ) -> Result<DeletionReceipt, OperationError> {
        delete_user(&self.batch, self.serving.as_ref(), user_id, reason)
            .await
            .map_err(classify)
    }
}
