//! Options of a [`super::ScyllaStore`].

use std::time::Duration;

use crate::StoreError;

/// Where the cluster is and how to use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScyllaOptions {
    /// Contact points, `host:port` (the driver discovers the other nodes).
    pub nodes: Vec<String>,
    /// The keyspace of every table: a letter, then `[A-Za-z0-9_]`, at most
    /// 48 characters in all (CQL folds it to lower case).
    pub keyspace: String,
    /// Replicas per data centre, used only when `migrate` creates the keyspace.
    pub replication_factor: u32,
    /// Client-side deadline of one request, retries included.
    pub request_timeout: Duration,
    /// Requests one bulk call (`apply_speed`, `write_batch`, look-ups,
    /// garbage collection) keeps in flight at most.
    pub max_in_flight: usize,
    /// How long serving reuses the published manifest it read last.
    pub manifest_ttl: Duration,
}

impl Default for ScyllaOptions {
    fn default() -> Self {
        ScyllaOptions {
            nodes: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "signals".to_owned(),
            replication_factor: 1,
            request_timeout: Duration::from_secs(5),
            max_in_flight: 256,
            manifest_ttl: Duration::from_secs(1),
        }
    }
}

impl ScyllaOptions {
    /// Checks every option, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |key: &str, problem: String| {
            Err(StoreError::Backend(format!(
                "invalid ScyllaDB option `{key}`: {problem}"
            )))
        };
        if self.nodes.is_empty() || self.nodes.iter().any(|n| n.trim().is_empty()) {
            return bad("nodes", "give at least one non-empty host:port".into());
        }
        let keyspace = &self.keyspace;
        if keyspace.len() > 48
            || !keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
            || !keyspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return bad(
                "keyspace",
                format!("{keyspace:?} is not a letter then at most 47 of A-Z, a-z, 0-9 and _"),
            );
        }
        if self.replication_factor == 0 {
            return bad("replication_factor", "must be at least 1".into());
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout", "must be more than zero".into());
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "must be at least 1".into());
        }
        Ok(())
    }
}
