use thiserror::Error;

/// Why a log operation failed, classified for retry decisions.
#[derive(Debug, Error)]
pub enum LogError {
    /// The log cannot be reached or refused the write now; retrying later
    /// may succeed. Nothing of a failed append was made durable.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// Stored data failed an integrity check.
    #[error("event log corrupt: {0}")]
    Corrupt(String),
    /// The request itself is wrong (unknown partition, record too large).
    #[error("invalid log request: {0}")]
    Invalid(String),
    #[error("event log I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl LogError {
    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Unavailable(_) | LogError::Io(_))
    }
}
