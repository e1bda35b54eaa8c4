use thiserror::Error;

/// Why a store operation failed, classified for retry decisions.
#[derive(Clone, Debug, Error)]
pub enum StoreError {
    /// The store cannot be reached or timed out; nothing was half-applied
    /// that a retry of the same idempotent write would not repair.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes did not decode.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
    /// Any other engine failure.
    #[error("store error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}
