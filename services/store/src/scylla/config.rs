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
    /// Username and password for PasswordAuthenticator clusters.
    pub credentials: Option<(String, String)>,
    /// TLS to the nodes (rustls), trusting these PEM certificates; `None`
    /// connects in plain text.
    pub tls_ca: Option<Vec<u8>>,
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
            credentials: None,
            tls_ca: None,
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

/// `builder` connecting over TLS (rustls), trusting the PEM certificates
/// in `ca`.
#[cfg(feature = "scylla-tls")]
pub(crate) fn with_tls(
    builder: scylla::client::session_builder::SessionBuilder,
    ca: &[u8],
) -> Result<scylla::client::session_builder::SessionBuilder, StoreError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |problem: String| {
        StoreError::Backend(format!("invalid ScyllaDB option `tls_ca`: {problem}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca) {
        let certificate = certificate.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        roots
            .add(certificate)
            .map_err(|e| bad(format!("a certificate is not usable: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(builder.tls_context(Some(std::sync::Arc::new(config))))
}

/// Without the `scylla-tls` feature, TLS is refused by name.
#[cfg(not(feature = "scylla-tls"))]
pub(crate) fn with_tls(
    _builder: scylla::client::session_builder::SessionBuilder,
    _ca: &[u8],
) -> Result<scylla::client::session_builder::SessionBuilder, StoreError> {
    Err(StoreError::Backend(
        "invalid ScyllaDB option `tls_ca`: this build has no CQL TLS; build with `--features cql-tls`"
            .into(),
    ))
}
