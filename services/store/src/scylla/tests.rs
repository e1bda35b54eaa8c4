//! Unit tests without a server: schema text, options, codec, error classes, cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use ::scylla::statement::Consistency;

use super::batch::{refuse_backwards, ForServing, ManifestCache};
use super::codec::{self, user_bucket, USER_BUCKETS};
use super::schema::{migration, TABLES};
use super::{driver, ScyllaOptions};
use crate::codec::FORMAT;
use crate::contract::manifest;
use crate::{IndexEntry, StoreError};

#[test]
fn the_migration_creates_every_table_idempotently_in_the_keyspace() {
    let statements = migration("ks_test", 3);
    assert_eq!(statements.len(), 1 + TABLES.len(), "{statements:#?}");
    assert!(statements[0].starts_with("CREATE KEYSPACE IF NOT EXISTS ks_test"));
    assert!(statements[0].contains("'replication_factor': 3"));
    for statement in &statements {
        assert!(statement.contains("IF NOT EXISTS"), "{statement}");
        assert!(!statement.contains('{') || statement.contains("'class'"));
        assert!(!statement.contains("--") && !statement.contains(';'));
        assert!(!statement.contains("{keyspace}") && !statement.contains("{replication_factor}"));
    }
    for table in TABLES {
        let create = format!("CREATE TABLE IF NOT EXISTS ks_test.{table} (");
        assert!(
            statements.iter().any(|s| s.starts_with(&create)),
            "no statement creates {table}"
        );
    }
}

#[test]
fn options_name_the_key_that_is_wrong() {
    ScyllaOptions::default()
        .validate()
        .expect("the defaults are valid");
    let cases: Vec<(&str, ScyllaOptions)> = vec![
        (
            "nodes",
            ScyllaOptions {
                nodes: vec![],
                ..Default::default()
            },
        ),
        (
            "keyspace",
            ScyllaOptions {
                keyspace: "signals; DROP".into(),
                ..Default::default()
            },
        ),
        (
            "keyspace",
            ScyllaOptions {
                keyspace: "1signals".into(),
                ..Default::default()
            },
        ),
        (
            "keyspace",
            ScyllaOptions {
                keyspace: "k".repeat(49),
                ..Default::default()
            },
        ),
        (
            "replication_factor",
            ScyllaOptions {
                replication_factor: 0,
                ..Default::default()
            },
        ),
        (
            "request_timeout",
            ScyllaOptions {
                request_timeout: Duration::ZERO,
                ..Default::default()
            },
        ),
        (
            "max_in_flight",
            ScyllaOptions {
                max_in_flight: 0,
                ..Default::default()
            },
        ),
    ];
    for (key, options) in cases {
        let error = options.validate().expect_err(key).to_string();
        assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
    }
}

#[test]
fn values_carry_the_embedded_format_byte_and_bad_bytes_are_corrupt() {
    let entry = IndexEntry {
        user_id: Some("u".into()),
        accepted_at: Some(0),
        retracted_at: Some(0),
        expires_at: None,
    };
    let bytes = codec::encode(&entry).expect("encodes");
    assert_eq!(bytes[0], FORMAT);
    assert_eq!(
        &bytes[1..],
        postcard::to_stdvec(&entry).expect("postcard").as_slice()
    );
    let back: IndexEntry = codec::decode(&bytes, "event_index", || "e1".into()).expect("decodes");
    assert_eq!(back, entry);
    for bad in [&[][..], &[9, 1][..], &[FORMAT, 7][..]] {
        let error = codec::decode::<IndexEntry>(bad, "event_index", || "event e1".into())
            .expect_err("corrupt");
        assert!(
            matches!(&error, StoreError::Corrupt(m) if m.contains("event_index") && m.contains("e1")),
            "{error}"
        );
    }
    assert!(codec::to_bigint(u64::MAX, "log offset").is_err());
    assert!(codec::from_bigint(-1, "t", "version").is_err());
    assert!(codec::partition_from_bigint(i64::from(u32::MAX) + 1, "t").is_err());
}

#[test]
fn buckets_are_fnv1a_and_stable() {
    // FNV-1a 64 test vectors: "" = cbf29ce484222325, "a" = af63dc4c8601ec8c,
    // "foobar" = 85944171f73967e8.
    assert_eq!(user_bucket(""), 0x25);
    assert_eq!(user_bucket("a"), 0x8c);
    assert_eq!(user_bucket("foobar"), 0xe8);
    let mut seen = [0u32; USER_BUCKETS as usize];
    for i in 0..25_600 {
        let bucket = user_bucket(&format!("user-{i}"));
        assert!(bucket < USER_BUCKETS);
        seen[bucket as usize] += 1;
    }
    assert!(seen.iter().all(|n| (50..=150).contains(n)), "{seen:?}");
}

#[test]
fn driver_errors_are_classified_for_retries() {
    let unavailable = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
        DbError::Unavailable {
            consistency: Consistency::LocalQuorum,
            required: 2,
            alive: 1,
        },
        "not enough replicas".into(),
    ));
    let error = driver("write a speed entry")(unavailable);
    assert!(error.is_retryable(), "{error}");
    assert!(error.to_string().contains("cannot write a speed entry"));

    let timeout = ExecutionError::RequestTimeout(Duration::from_secs(5));
    assert!(matches!(
        driver("read")(timeout),
        StoreError::Unavailable(_)
    ));
    let broken = ExecutionError::LastAttemptError(RequestAttemptError::UnableToAllocStreamId);
    assert!(matches!(driver("read")(broken), StoreError::Unavailable(_)));

    let invalid = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
        DbError::Invalid,
        "unconfigured table speed_entries".into(),
    ));
    let error = driver("read")(invalid);
    assert!(matches!(&error, StoreError::Backend(m) if m.contains("unconfigured")));
    assert!(!error.is_retryable());
}

#[test]
fn publishing_backwards_names_both_versions() {
    let current = manifest(5, &[(0, 10)]);
    let error = refuse_backwards(&current, &manifest(4, &[(0, 20)]))
        .expect_err("older")
        .to_string();
    assert!(
        error.contains("version 4") && error.contains("version 5"),
        "{error}"
    );
    refuse_backwards(&current, &current).expect("the same manifest again");
    refuse_backwards(&current, &manifest(5, &[(0, 11)])).expect_err("same version, other manifest");
    refuse_backwards(&current, &manifest(6, &[(0, 11)])).expect("newer");
}

/// The manifest serving uses without a read of its own (`None`: it reads).
fn used(cache: &ManifestCache) -> Option<Option<u64>> {
    match cache.for_serving() {
        ForServing::Use(manifest) => Some(manifest.map(|m| m.version)),
        ForServing::Read(_) => None,
    }
}

/// A moment `ago` before now.
fn before(ago: Duration) -> Instant {
    Instant::now()
        .checked_sub(ago)
        .expect("the clock runs longer")
}

#[test]
fn the_manifest_cache_expires_and_never_goes_back() {
    let ttl = Duration::from_secs(10);
    let cache = ManifestCache::new(ttl);
    assert!(used(&cache).is_none(), "empty at first");
    let now = Instant::now();
    assert!(cache.store(None, now).is_none());
    assert_eq!(used(&cache), Some(None), "absence is cached too");

    let v2 = Arc::new(manifest(2, &[(0, 1)]));
    cache.store(Some(v2.clone()), now);
    let older = cache.store(Some(Arc::new(manifest(1, &[]))), now);
    assert_eq!(
        older.map(|m| m.version),
        Some(2),
        "a slow older read is ignored"
    );
    assert_eq!(cache.store(None, now).map(|m| m.version), Some(2));
    assert_eq!(used(&cache), Some(Some(2)), "fresh within the TTL");

    let expired = ManifestCache::new(ttl);
    expired.store(Some(v2.clone()), before(ttl + ttl / 2));
    assert!(used(&expired).is_none(), "expired after the TTL");
    expired.store(Some(Arc::new(manifest(3, &[]))), Instant::now());
    assert_eq!(used(&expired), Some(Some(3)));
}

#[test]
fn one_reader_refreshes_an_expired_manifest_while_the_others_use_it() {
    let ttl = Duration::from_secs(10);
    let cache = ManifestCache::new(ttl);
    cache.store(Some(Arc::new(manifest(2, &[]))), before(ttl + ttl / 2));
    let ForServing::Read(Some(refreshing)) = cache.for_serving() else {
        panic!("the first reader past the TTL refreshes");
    };
    assert_eq!(
        used(&cache),
        Some(Some(2)),
        "the others use the expired one"
    );
    assert_eq!(used(&cache), Some(Some(2)));
    drop(refreshing);
    // That read failed: the next reader refreshes.
    assert!(matches!(cache.for_serving(), ForServing::Read(Some(_))));

    // Two TTLs old, it is used by no one, whoever is refreshing.
    let stale = ManifestCache::new(ttl);
    stale.store(Some(Arc::new(manifest(2, &[]))), before(ttl * 3));
    let _refreshing = stale.refreshing.try_lock().expect("free");
    assert!(matches!(stale.for_serving(), ForServing::Read(None)));
}
