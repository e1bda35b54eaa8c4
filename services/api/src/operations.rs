//! The admin operations behind `/v1/admin/batch*` and
//! `/v1/admin/users/{user_id}`: a port, so that the HTTP surface does not
//! depend on the batch layer. The binary implements it over the batch
//! layer of the process; a process without one has none.

use async_trait::async_trait;
pub use signals_core::operations::{BatchSummary, DeletionReceipt, Running};

/// Why an operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    /// Another run is in progress (409).
    #[error("{0}")]
    Conflict(String),
    /// The request cannot be carried out as asked (400).
    #[error("{0}")]
    Invalid(String),
    /// A backend failed; retrying is safe (503).
    #[error("{0}")]
    Unavailable(String),
}

/// The batch runs and user deletions an operator may start over HTTP.
#[async_trait]
pub trait Operations: Send + Sync + 'static {
    /// Runs the batch now and publishes its version.
    async fn run_batch(&self) -> Result<BatchSummary, OperationError>;

    /// The run in progress in this process, if any.
    fn running(&self) -> Option<Running>;

    /// The last runs of this process, newest first.
    fn history(&self) -> Vec<BatchSummary>;

    /// Deletes `user_id` from every layer, permanently, for `reason`.
    async fn delete_user(
        &self,
        user_id: &str,
        reason: &str,
    ) -> Result<DeletionReceipt, OperationError>;
}
