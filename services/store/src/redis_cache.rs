//! Redis on the hot path: a read-through cache of published user records.
//!
//! Why this role and no other: a user record of a published batch version
//! never changes, so a cached copy is always right, needs no invalidation,
//! and losing it (restart, `FLUSHALL`, eviction) costs one read of the
//! store. Speed entries change every second and stay in the store, where
//! the speed layer's progress makes them consistent; caching them would need
//! a reconciliation protocol for a saving of one partition read. Redis is
//! therefore never the only copy of anything, and an answer never depends
//! on it being up: on any Redis error the read goes to the store, and
//! [`ServingStore::degraded`] says so for readiness.
//!
//! A circuit breaker ([`crate::breaker`]) guards every Redis call: after
//! [`RedisOptions::breaker_failures`] consecutive failures or timeouts,
//! reads stop asking Redis for [`RedisOptions::breaker_cool_down`] and go
//! straight to the store (`signals_cache_requests_total{outcome="bypassed"}`),
//! so a hung Redis costs the first few reads one timeout each, not every
//! read; then one call probes Redis (a read, or a readiness check) and its
//! outcome closes the breaker or keeps it open. Readiness says
//! `degraded: circuit open (...)` meanwhile.
//!
//! In front of Redis, each process keeps the records it decoded last
//! ([`crate::kept_records::KeptRecords`]): a warm answer then costs no
//! Redis round trip and no decoding, only the speed entries' partition read.
//!
//! The cache sits on the serving path only: the speed and batch layers write
//! to the store it wraps, directly. Whoever erases a user in the store (the
//! batch layer's deletion) then calls [`ServingStore::evict_user`] here, so
//! that the erased record leaves Redis at once rather than with its TTL.
//!
//! Keys: `{prefix}:record:{version}:{created_at}:{user}` → a format byte then postcard,
//! or the single byte `0` for "this user has no record in this version".
//! Records over 8 MiB are not written (`MAX_REDIS_RECORD_BYTES`).
//! Every key has a TTL, so versions collected from the store also leave
//! Redis on their own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use signals_core::UserRecord;
use tracing::warn;

use crate::breaker::{Admission, Breaker};
use crate::codec;
use crate::forward::forward_to;
use crate::{BatchManifest, ServingStore, StoreError, StoreReads};

/// Cached for "no record"; never a first byte of [`codec`]'s values.
const ABSENT: u8 = 0;

/// Records longer than this are not written to Redis. Every read of this
/// process shares one connection, and a value of tens of MB (a user with
/// 1M events: ~77 MB) would hold it, and the reads behind it, far past
/// `cache.timeout`: their timeouts would open the breaker on a Redis that
/// is fine. Such a record is read from the store once per version and
/// process, and kept there (`KeptRecords`, `cache.local_bytes`).
const MAX_REDIS_RECORD_BYTES: usize = 8 << 20;

/// Records of up to this many events are encoded for Redis where they were
/// read; more, on the blocking pool.
const ENCODED_IN_PLACE_EVENTS: usize = 4096;

/// `record` as Redis holds it, or `None` if longer than Redis is given.
fn encode_for_redis(record: &UserRecord) -> Result<Option<Vec<u8>>, StoreError> {
    if codec::encoded_len(record)? > MAX_REDIS_RECORD_BYTES {
        return Ok(None);
    }
    codec::encode_record(record).map(Some)
}

/// Where Redis is and how long to wait for it.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Key prefix, so several deployments can share one Redis.
    pub prefix: String,
    /// Lifetime of a cached record.
    pub ttl: Duration,
    /// Longest wait for one Redis call before the store answers instead.
    pub timeout: Duration,
    /// Consecutive Redis failures (errors or timeouts) that open the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker keeps reads away from Redis before a probe.
    pub breaker_cool_down: Duration,
    /// ACL user and password; they replace any in `url` (so that the secret
    /// can come from its own setting rather than the URL).
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM certificates trusted for `rediss://` instead of the system's.
    pub tls_root_ca: Option<Vec<u8>>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "signals".into(),
            ttl: Duration::from_secs(48 * 3600),
            timeout: Duration::from_millis(50),
            breaker_failures: 3,
            breaker_cool_down: Duration::from_secs(5),
            username: None,
            password: None,
            tls_root_ca: None,
        }
    }
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let credentials = &rest[..at];
            let user = credentials.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// The Redis client: `url` (`redis://` or `rediss://`), with the ACL
/// user, password and trusted certificates of `options`.
fn client(options: &RedisOptions) -> Result<redis::Client, StoreError> {
    use redis::IntoConnectionInfo;
    let invalid = |e: redis::RedisError| {
        StoreError::Backend(format!(
            "invalid Redis URL {}: {e}",
            redacted_url(&options.url)
        ))
    };
    let mut info = options
        .url
        .as_str()
        .into_connection_info()
        .map_err(invalid)?;
    let mut settings = info.redis_settings().clone();
    if let Some(username) = &options.username {
        settings = settings.set_username(username);
    }
    if let Some(password) = &options.password {
        settings = settings.set_password(password);
    }
    info = info.set_redis_settings(settings);
    match &options.tls_root_ca {
        Some(ca) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        ),
        None => redis::Client::open(info),
    }
    .map_err(invalid)
}

/// The serving path with the published records cached in Redis: reads
/// through to the [`ServingStore`] it wraps.
pub struct CachedStore {
    inner: Arc<dyn ServingStore>,
    options: RedisOptions,
    client: redis::Client,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
    /// The last Redis failure, for readiness.
    last_error: Mutex<Option<(Instant, String)>>,
    breaker: Breaker,
}

/// What Redis said about a key.
enum Lookup {
    /// The record, or `None` for "no record".
    Hit(Option<Arc<UserRecord>>),
    Miss,
    /// Redis failed, or the breaker kept the call from it.
    Unavailable,
}

impl CachedStore {
    /// Wraps `inner`; a Redis that is down now is retried on later reads.
    pub fn new(
        inner: Arc<dyn ServingStore>,
        options: RedisOptions,
    ) -> Result<CachedStore, StoreError> {
        let client = client(&options)?;
        Ok(CachedStore {
            inner,
            breaker: Breaker::new(options.breaker_failures, options.breaker_cool_down),
            options,
            client,
            connection: tokio::sync::Mutex::new(None),
            last_error: Mutex::new(None),
        })
    }

    /// A version is named by its number and the time its run started: a
    /// store that was reset, or another deployment sharing this Redis,
    /// reuses numbers but never both.
    fn key(&self, manifest: &BatchManifest, user: &str) -> String {
        format!(
            "{}:record:{}:{}:{user}",
            self.options.prefix, manifest.version, manifest.created_at
        )
    }

    fn note_error(&self, what: &str, error: impl std::fmt::Display) {
        warn!(%error, "redis {what} failed; answering from the store");
        metrics::counter!("signals_cache_errors_total").increment(1);
        let message = format!("redis {what} failed: {error}");
        if self.breaker.failure(Instant::now(), message.clone()) {
            warn!(cool_down = ?self.options.breaker_cool_down, "redis circuit breaker opened; reads bypass the cache");
            metrics::counter!("signals_cache_circuit_opened_total").increment(1);
            metrics::gauge!("signals_cache_circuit_open").set(1.0);
        }
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((Instant::now(), message));
        }
    }

    /// Runs `call` on Redis within `timeout`, unless the breaker keeps
    /// calls away: `None` when skipped or failed (the failure is noted).
    async fn redis<T, F, Fut>(&self, what: &str, timeout: Duration, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.breaker.admit(Instant::now()) == Admission::Bypass {
            return None;
        }
        let connection = self.connection().await?;
        match tokio::time::timeout(timeout, call(connection)).await {
            Ok(Ok(value)) => {
                self.breaker.success();
                metrics::gauge!("signals_cache_circuit_open").set(0.0);
                Some(value)
            }
            Ok(Err(error)) => {
                self.note_error(what, error);
                None
            }
            Err(_) => {
                self.note_error(what, "timed out");
                None
            }
        }
    }

    /// `user`'s record of the published version `manifest` from Redis,
    /// else from the store (then written to Redis).
    async fn record_of(
        &self,
        manifest: &BatchManifest,
        user: &str,
    ) -> Result<Option<Arc<UserRecord>>, StoreError> {
        let key = self.key(manifest, user);
        let redis_up = match self.cached(&key).await {
            Lookup::Hit(hit) => {
                metrics::counter!("signals_cache_requests_total", "outcome" => "hit").increment(1);
                return Ok(hit);
            }
            Lookup::Miss => {
                metrics::counter!("signals_cache_requests_total", "outcome" => "miss").increment(1);
                true
            }
            Lookup::Unavailable => {
                metrics::counter!("signals_cache_requests_total", "outcome" => "bypassed")
                    .increment(1);
                false
            }
        };
        let record = self.inner.batch_record(manifest.version, user).await?;
        // Redis just failed: no second wait for a SET.
        if redis_up {
            self.remember(key, record.as_ref()).await;
        }
        Ok(record)
    }

    /// A connection, (re)established at most once per call.
    async fn connection(&self) -> Option<ConnectionManager> {
        let mut slot = self.connection.lock().await;
        if slot.is_none() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.options.timeout * 4))
                .set_response_timeout(Some(self.options.timeout))
                .set_number_of_retries(1);
            let connect = self.client.get_connection_manager_with_config(config);
            match tokio::time::timeout(self.options.timeout * 4, connect).await {
                Ok(Ok(manager)) => *slot = Some(manager),
                Ok(Err(error)) => self.note_error("connect", error),
                Err(_) => self.note_error("connect", "timed out"),
            }
        }
        slot.clone()
    }

    /// What Redis holds at `key`.
    async fn cached(&self, key: &str) -> Lookup {
        let read = self
            .redis("GET", self.options.timeout, |mut c| async move {
                c.get::<_, Option<Vec<u8>>>(key).await
            })
            .await;
        let bytes = match read {
            None => return Lookup::Unavailable,
            Some(None) => return Lookup::Miss,
            Some(Some(bytes)) => bytes,
        };
        if bytes == [ABSENT] {
            return Lookup::Hit(None);
        }
        let decoded = if bytes.len() <= codec::DECODED_IN_PLACE {
            codec::decode_record(&bytes, "redis", || format!("key {key}"))
        } else {
            codec::decode_record_apart(bytes, "redis", format!("key {key}")).await
        };
        match decoded {
            Ok(record) => Lookup::Hit(Some(Arc::new(record))),
            Err(error) => {
                self.note_error("decode", error);
                Lookup::Miss
            }
        }
    }

    /// Writes `record` to Redis at `key` (a failure is only noted).
    async fn remember(&self, key: String, record: Option<&Arc<UserRecord>>) {
        let encoded = match record {
            None => Ok(Some(vec![ABSENT])),
            Some(record) if record.events.len() <= ENCODED_IN_PLACE_EVENTS => {
                encode_for_redis(record)
            }
            // Off the runtime's threads, as decoding is.
            Some(record) => {
                let record = record.clone();
                tokio::task::spawn_blocking(move || encode_for_redis(&record))
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Backend(format!("encoding stopped: {e}"))))
            }
        };
        let bytes = match encoded {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(error) => return self.note_error("encode", error),
        };
        let ttl = self.options.ttl.as_secs().max(1);
        self.redis("SET", self.options.timeout, |mut c| async move {
            c.set_ex::<_, _, ()>(key, bytes, ttl).await
        })
        .await;
    }
}

/// Reads of stored data, from the store, except the served version's
/// records, which come through Redis.
#[async_trait]
impl StoreReads for CachedStore {
    forward_to!(inner: speed_progress, lookup_events, published, speed_entries, check);

    async fn batch_record(
        &self,
        version: u64,
        user_id: &str,
    ) -> Result<Option<Arc<UserRecord>>, StoreError> {
        // Only the served version's records are cached: they are published,
        // hence immutable, while an unpublished version may still be
        // rewritten. The served manifest is a cheap reading (a moment old
        // at most), and it names the version's start for the key.
        match self.inner.serving_manifest().await? {
            Some(manifest) if manifest.version == version => {
                self.record_of(&manifest, user_id).await
            }
            _ => self.inner.batch_record(version, user_id).await,
        }
    }
}

/// The default history reads ([`ServingStore::user_history_since`] and
/// [`ServingStore::user_history_unchanged`]) take the record through
/// [`CachedStore::batch_record`] above.
#[async_trait]
impl ServingStore for CachedStore {
    forward_to!(inner: serving_manifest, log_end_seen);

    /// `None` when Redis answers a PING (which is also the breaker's probe
    /// when it is due, so readiness heals it with no read traffic);
    /// otherwise the breaker's state or the last failure.
    async fn degraded(&self) -> Option<String> {
        let ping = self
            .redis("PING", self.options.timeout * 4, |mut c| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            })
            .await;
        if ping.is_some() {
            return None;
        }
        self.breaker.report(Instant::now()).or_else(|| {
            self.last_error
                .lock()
                .ok()
                .and_then(|last| last.as_ref().map(|(_, message)| message.clone()))
        })
    }

    /// Drops the user's record of the published version from Redis (the
    /// batch layer has erased it in the store). A reader that read the old
    /// record just before the erasure may cache it again: its answer is
    /// still empty (the deletion marker voids the record) and the entry
    /// expires with its TTL.
    async fn evict_user(&self, user_id: &str) -> Result<(), StoreError> {
        if let Some(manifest) = self.inner.published().await? {
            let key = self.key(&manifest, user_id);
            self.redis("DEL", self.options.timeout, |mut c| async move {
                c.del::<_, ()>(&key).await
            })
            .await;
        }
        self.inner.evict_user(user_id).await
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::redacted_url;

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(
            redacted_url("redis://signals:s3cret@cache:6379/0"),
            "redis://signals:***@cache:6379/0"
        );
        assert_eq!(
            redacted_url("rediss://:s3cret@cache"),
            "rediss://:***@cache"
        );
        assert_eq!(redacted_url("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redacted_url("not a url"), "not a url");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use crate::kept_records::KeptRecords;
    use crate::{BatchStore, SignalStore};

    /// Redis from `SIGNALS_TEST_REDIS_URL` (see `infra/local/up redis`),
    /// else a container, else how to start it (`signals-test-support`).
    fn redis_url() -> Option<String> {
        signals_test_support::redis_url()
    }

    fn unique_prefix() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("signals-test-{}-{nanos}", std::process::id())
    }

    /// An embedded store and the cache in front of it.
    fn cached(url: &str, dir: &std::path::Path) -> (Arc<EmbeddedStore>, CachedStore) {
        let inner = Arc::new(EmbeddedStore::open(&dir.join("store.redb")).expect("store"));
        let options = RedisOptions {
            url: url.to_owned(),
            prefix: unique_prefix(),
            timeout: Duration::from_millis(200),
            ..RedisOptions::default()
        };
        let cache = CachedStore::new(inner.clone(), options).expect("client");
        (inner, cache)
    }

    /// The serving path as the binary wires it: records kept in the
    /// process over the cache over an embedded store.
    fn kept(
        url: &str,
        dir: &std::path::Path,
    ) -> (Arc<EmbeddedStore>, Arc<CachedStore>, KeptRecords) {
        let (inner, cache) = cached(url, dir);
        let cache = Arc::new(cache);
        let kept = KeptRecords::new(cache.clone(), 1 << 30);
        (inner, cache, kept)
    }

    /// A connection of the test's own, to look at and change Redis directly.
    async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connection")
    }

    /// Writes `record` as user "u"'s record of version 1 and publishes it.
    async fn publish_one(store: &EmbeddedStore, record: &UserRecord) -> BatchManifest {
        let records = vec![("u".into(), record.clone())];
        crate::contract::publish_version(store, 1, &[(0, 0)], records).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_contract_holds_with_serving_through_the_cache() {
        let Some(url) = redis_url() else { return };
        crate::contract::run_all(|| {
            let url = url.clone();
            async move {
                let dir = tempfile::tempdir().expect("temp dir");
                let (store, _, kept) = kept(&url, dir.path());
                let wired: Box<dyn SignalStore> =
                    Box::new(crate::contract::ServedThrough::new(store, Arc::new(kept)));
                (wired, dir)
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_evicted_user_leaves_the_process_and_redis() {
        let Some(url) = redis_url() else { return };
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, cache, kept) = kept(&url, dir.path());
        let record = crate::contract::record("u", "e1");
        let manifest = publish_one(&store, &record).await;
        let key = cache.key(&manifest, "u");
        let mut redis = connection(&url).await;
        let read = kept.user_history("u").await.expect("history");
        assert_eq!(read.record.as_deref(), Some(&record));
        assert!(redis.exists::<_, bool>(&key).await.expect("EXISTS"));

        store.erase_user("u", (0, 5)).await.expect("erased");
        kept.evict_user("u").await.expect("evicted");
        assert!(!redis.exists::<_, bool>(&key).await.expect("EXISTS"));
        let read = kept.user_history("u").await.expect("history");
        assert!(read.record.expect("an erased record").deleted);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_warm_record_is_answered_in_process_without_redis() {
        let Some(url) = redis_url() else { return };
        let dir = tempfile::tempdir().expect("temp dir");
        let (raw, cache, store) = kept(&url, dir.path());
        let record = crate::contract::record("u", "e1");
        let manifest = publish_one(&raw, &record).await;
        let key = cache.key(&manifest, "u");
        let mut redis = connection(&url).await;

        // The first read fills Redis and the process; with Redis emptied,
        // the second is answered in process (a Redis miss would SET again).
        let first = store.user_history("u").await.expect("history");
        assert_eq!(first.record.as_deref(), Some(&record));
        assert!(redis.exists::<_, bool>(&key).await.expect("EXISTS"));
        redis.del::<_, ()>(&key).await.expect("DEL");
        let second = store.user_history("u").await.expect("history");
        assert_eq!(second.record.as_deref(), Some(&record));
        assert!(!redis.exists::<_, bool>(&key).await.expect("EXISTS"));
    }

    /// A record too long for Redis is kept in the process and read from
    /// the store, never written to Redis.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_too_long_for_redis_is_kept_in_process_only() {
        let Some(url) = redis_url() else { return };
        let dir = tempfile::tempdir().expect("temp dir");
        let (raw, cache, store) = kept(&url, dir.path());
        let record = crate::contract::large_record("u", 10_000);
        let encoded = codec::encode_record(&record).expect("encodes").len();
        assert!(encoded > MAX_REDIS_RECORD_BYTES, "{encoded} bytes");
        let manifest = publish_one(&raw, &record).await;
        let key = cache.key(&manifest, "u");
        let mut redis = connection(&url).await;

        let first = store.user_history("u").await.expect("history");
        assert_eq!(first.record.as_deref(), Some(&record));
        assert!(!redis.exists::<_, bool>(&key).await.expect("EXISTS"));
        assert!(store.degraded().await.is_none(), "Redis is fine");
        let kept = store.kept(manifest.version, "u").flatten();
        assert_eq!(kept.as_deref(), Some(&record), "kept in the process");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_without_a_record_is_answered_in_process_without_redis() {
        let Some(url) = redis_url() else { return };
        let dir = tempfile::tempdir().expect("temp dir");
        let (raw, cache, store) = kept(&url, dir.path());
        let manifest = publish_one(&raw, &crate::contract::record("u", "e1")).await;
        let key = cache.key(&manifest, "nobody");
        let mut redis = connection(&url).await;

        // The first read caches "no record" in Redis and the process; with
        // Redis emptied, the second is answered in process.
        let first = store.user_history("nobody").await.expect("history");
        assert!(first.record.is_none());
        assert!(redis.exists::<_, bool>(&key).await.expect("EXISTS"));
        redis.del::<_, ()>(&key).await.expect("DEL");
        let second = store.user_history("nobody").await.expect("history");
        assert!(second.record.is_none());
        assert!(!redis.exists::<_, bool>(&key).await.expect("EXISTS"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_another_process_cached_is_read_from_redis() {
        let Some(url) = redis_url() else { return };
        let dir = tempfile::tempdir().expect("temp dir");
        let (raw, writer) = cached(&url, dir.path());
        let record = crate::contract::record("u", "e1");
        let manifest = publish_one(&raw, &record).await;
        writer.user_history("u").await.expect("history");

        // A second process (its own caches) over a store that lost the
        // record: only Redis can answer it.
        let empty_dir = tempfile::tempdir().expect("temp dir");
        let empty = EmbeddedStore::open(&empty_dir.path().join("store.redb")).expect("store");
        empty.publish(&manifest).await.expect("published");
        let reader = CachedStore::new(Arc::new(empty), writer.options.clone()).expect("client");
        let read = reader.user_history("u").await.expect("history");
        assert_eq!(read.record.as_deref(), Some(&record));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_sharing_a_redis_never_see_each_others_versions() {
        let Some(url) = redis_url() else { return };
        let prefix = unique_prefix();
        let open = |dir: &std::path::Path| {
            let inner = Arc::new(EmbeddedStore::open(&dir.join("store.redb")).expect("store"));
            let options = RedisOptions {
                url: url.clone(),
                prefix: prefix.clone(),
                ..RedisOptions::default()
            };
            let cache = CachedStore::new(inner.clone(), options).expect("client");
            (inner, cache)
        };
        let (first_dir, second_dir) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let (first, second) = (open(first_dir.path()), open(second_dir.path()));
        for ((store, _), event, created_at) in [(&first, "old", 1), (&second, "new", 2)] {
            store
                .write_batch(1, vec![("u".into(), crate::contract::record("u", event))])
                .await
                .expect("written");
            let mut manifest = crate::contract::manifest(1, &[(0, 0)]);
            manifest.created_at = created_at;
            store.publish(&manifest).await.expect("published");
        }
        let old = first.1.user_history("u").await.expect("history").record;
        let new = second.1.user_history("u").await.expect("history").record;
        assert_eq!(old.as_deref(), Some(&crate::contract::record("u", "old")));
        assert_eq!(new.as_deref(), Some(&crate::contract::record("u", "new")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flushed_or_unreachable_redis_changes_no_answer() {
        let Some(url) = redis_url() else { return };
        let dir = tempfile::tempdir().expect("temp dir");
        // Without records kept in front, so that every read asks Redis.
        let (raw, store) = cached(&url, dir.path());
        publish_one(&raw, &crate::contract::record("u", "e1")).await;
        let first = store.user_history("u").await.expect("history");
        let cached_again = store.batch_record(1, "u").await.expect("record");
        assert_eq!(cached_again.as_deref(), first.record.as_deref());
        assert!(store.degraded().await.is_none());

        // Every key of this store gone (as after FLUSHALL, without touching
        // the other tests' keys): the answer comes from the store, unchanged.
        let mut connection = store.connection().await.expect("connected");
        let keys: Vec<String> = connection
            .keys(format!("{}:*", store.options.prefix))
            .await
            .expect("KEYS");
        assert!(!keys.is_empty(), "the first read cached the record");
        connection.del::<_, ()>(keys).await.expect("flushed");
        assert_eq!(
            store
                .user_history("u")
                .await
                .expect("history")
                .record
                .as_deref(),
            first.record.as_deref()
        );

        // A Redis that is not there: still the same answer, and readiness says why.
        let gone = CachedStore {
            inner: store.inner.clone(),
            options: RedisOptions {
                url: "redis://127.0.0.1:1".into(),
                timeout: Duration::from_millis(50),
                ..RedisOptions::default()
            },
            client: redis::Client::open("redis://127.0.0.1:1").expect("client"),
            connection: tokio::sync::Mutex::new(None),
            last_error: Mutex::new(None),
            breaker: Breaker::new(3, Duration::from_secs(5)),
        };
        assert_eq!(
            gone.user_history("u")
                .await
                .expect("history")
                .record
                .as_deref(),
            first.record.as_deref()
        );
        let degraded = gone.degraded().await.expect("degraded");
        assert!(degraded.starts_with("redis connect failed"), "{degraded}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_redis_opens_the_circuit_and_reads_bypass_it() {
        // A "Redis" that accepts connections and never answers, like a
        // SIGSTOPped one.
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let address = hung.local_addr().expect("address");
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = hung.accept().await {
                open.push(socket);
            }
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
        let url = format!("redis://{address}");
        let store = CachedStore::new(
            inner.clone(),
            RedisOptions {
                url,
                timeout: Duration::from_millis(20),
                breaker_failures: 2,
                breaker_cool_down: Duration::from_secs(600),
                ..RedisOptions::default()
            },
        )
        .expect("client");
        let record = crate::contract::record("u", "e1");
        publish_one(&inner, &record).await;
        for _ in 0..2 {
            let read = store.user_history("u").await.expect("history");
            assert_eq!(read.record.as_deref(), Some(&record));
        }
        assert_eq!(store.breaker.admit(Instant::now()), Admission::Bypass);
        // Open: reads are answered from the store without touching Redis
        // (no connection attempt, so no new failure is noted).
        let failures = |s: &CachedStore| s.last_error.lock().expect("lock").clone().map(|(t, _)| t);
        let before = failures(&store);
        for _ in 0..5 {
            let read = store.user_history("u").await.expect("history");
            assert_eq!(read.record.as_deref(), Some(&record));
        }
        assert_eq!(failures(&store), before, "Redis was not called");
        let degraded = store.degraded().await.expect("degraded");
        assert!(
            degraded.starts_with("circuit open (2 consecutive failures"),
            "{degraded}"
        );
        held.abort();
    }
}
