//! Tests against a real CQL server: ScyllaDB, or the Apache Cassandra that
//! `infra/local/up` starts.
//!
//! ```sh
//! eval "$(infra/local/up cassandra)"     # exports SIGNALS_TEST_CQL_NODES
//! cargo test -p signals-store --features scylla scylla::
//! cargo test -p signals-store --features scylla scylla_figures -- --ignored --nocapture
//! ```
//!
//! Every store gets a keyspace of its own (`signals_test_<random>`), dropped
//! when the test ends, even by a panic. Without `SIGNALS_TEST_CQL_NODES` the
//! tests start a ScyllaDB container when Docker is reachable, or fail saying
//! how to start the server, unless `SIGNALS_TEST_SKIP_SERVICES=1` says to
//! skip them (`tests/support`).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use signals_core::{LogPosition, SpeedEntry};

use super::codec::{self, index_bucket};
use super::{ScyllaOptions, ScyllaStore};
use crate::contract::{self, at, counted, large_record, manifest, record, served_ids, write};
use crate::{
    BatchStore, IndexEntry, ServingStore, SignalStore, SpeedStore, StoreError, StoreReads,
};

/// The CQL nodes to test against, or `None` to skip (said on stderr), by
/// the rules of `signals-test-support`.
fn nodes() -> Option<Vec<String>> {
    Some(
        signals_test_support::cql_nodes()?
            .split(',')
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect(),
    )
}

/// Keyspaces made by one test, dropped when it ends (even by a panic).
struct Server {
    nodes: Vec<String>,
    keyspaces: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn new() -> Option<Server> {
        Some(Server {
            nodes: nodes()?,
            keyspaces: Arc::default(),
        })
    }

    /// A fresh keyspace name, to be dropped with the server.
    fn keyspace(&self) -> String {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let name = format!("signals_test_{:016x}", hasher.finish());
        self.keyspaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(name.clone());
        name
    }

    fn options(&self, keyspace: &str) -> ScyllaOptions {
        ScyllaOptions {
            nodes: self.nodes.clone(),
            keyspace: keyspace.to_owned(),
            request_timeout: Duration::from_secs(20),
            ..ScyllaOptions::default()
        }
    }

    /// A connected, migrated store on `keyspace`.
    async fn store(&self, options: ScyllaOptions) -> ScyllaStore {
        let store = ScyllaStore::connect(options).await.expect("connects");
        store.migrate().await.expect("migrates");
        store
    }

    /// A store on a keyspace of its own.
    async fn fresh(&self) -> ScyllaStore {
        let keyspace = self.keyspace();
        self.store(self.options(&keyspace)).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let keyspaces = std::mem::take(
            &mut *self
                .keyspaces
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if keyspaces.is_empty() {
            return;
        }
        let options = self.options("system");
        // Drop may run inside the test's runtime: clean up from a thread of our own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup");
            runtime.block_on(async {
                let store = ScyllaStore::connect(options).await?;
                for keyspace in keyspaces {
                    let mut drop = ::scylla::statement::unprepared::Statement::new(format!(
                        "DROP KEYSPACE IF EXISTS {keyspace}"
                    ));
                    drop.set_request_timeout(Some(Duration::from_secs(60)));
                    if let Err(error) = store.inner.session.query_unpaged(drop, &[]).await {
                        eprintln!("cannot drop test keyspace {keyspace}: {error}");
                    }
                }
                Ok::<_, StoreError>(())
            })
        });
        match cleanup.join() {
            Ok(Err(error)) => eprintln!("cannot clean up test keyspaces: {error}"),
            Err(_) => eprintln!("the keyspace cleanup panicked"),
            Ok(Ok(())) => {}
        }
    }
}

fn event_ids(entries: &[SpeedEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match e {
            SpeedEntry::Event(event) => event.event_id.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_store_contract() {
    let Some(server) = Server::new() else { return };
    let server = &server;
    contract::run_all(|| async move {
        let store: Box<dyn SignalStore> = Box::new(server.fresh().await);
        (store, ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_before_migrate_says_so_and_works_after() {
    let Some(server) = Server::new() else { return };
    let keyspace = server.keyspace();
    let store = ScyllaStore::connect(server.options(&keyspace))
        .await
        .expect("connecting needs no schema");
    let error = store.speed_progress().await.expect_err("no tables yet");
    assert!(
        error.to_string().contains("signals migrate"),
        "the error says what to do: {error}"
    );
    store.migrate().await.expect("migrates");
    store.migrate().await.expect("migrating again is harmless");
    store.check().await.expect("ready");
    assert_eq!(
        store.speed_progress().await.expect("progress"),
        Default::default()
    );
}

/// RELIABILITY finding 3: `signals serve` started beside `signals speed`
/// on a new keyspace met tables the node listed and would not prepare
/// against yet, and exited. Connecting now leaves the statements to their
/// first use; readiness says why they fail meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_statements_cannot_be_prepared_yet_connects_and_says_so() {
    let Some(server) = Server::new() else { return };
    let keyspace = server.keyspace();
    server.store(server.options(&keyspace)).await;
    let alter = |cql: String| {
        let mut statement = ::scylla::statement::unprepared::Statement::new(cql);
        statement.set_request_timeout(Some(Duration::from_secs(60)));
        statement
    };
    // Every table is listed, one cannot take the statements.
    let admin = server.store(server.options(&keyspace)).await;
    admin
        .inner
        .session
        .query_unpaged(
            alter(format!(
                "ALTER TABLE {keyspace}.batch_pointer DROP manifest"
            )),
            &[],
        )
        .await
        .expect("alter");

    let store = ScyllaStore::connect(server.options(&keyspace))
        .await
        .expect("connects though the statements do not prepare");
    let error = store.check().await.expect_err("not ready");
    assert!(
        error.to_string().contains("manifest"),
        "readiness names the problem: {error}"
    );

    admin
        .inner
        .session
        .query_unpaged(
            alter(format!(
                "ALTER TABLE {keyspace}.batch_pointer ADD manifest blob"
            )),
            &[],
        )
        .await
        .expect("alter");
    store.check().await.expect("ready once the table is whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_sees_everything() {
    let Some(server) = Server::new() else { return };
    let keyspace = server.keyspace();
    let store = server.store(server.options(&keyspace)).await;
    let mut w = write(
        vec![at("u", 0, 0), at("u", 0, 5), at("u", 1, 2)],
        &[(0, 6), (1, 3)],
    );
    w.index = vec![(
        "p0-0".into(),
        IndexEntry {
            user_id: Some("u".into()),
            accepted_at: Some(0),
            retracted_at: None,
            expires_at: None,
        },
    )];
    store.apply_speed(w.clone().into()).await.expect("apply");
    store
        .write_batch(1, vec![("u".into(), record("u", "b"))])
        .await
        .expect("write");
    store
        .publish(&manifest(1, &[(0, 1)]))
        .await
        .expect("publish");
    let before = store.user_history("u").await.expect("history");
    drop(store);

    let store = server.store(server.options(&keyspace)).await;
    assert_eq!(store.speed_progress().await.expect("progress"), w.progress);
    assert_eq!(
        store.published().await.expect("published"),
        Some(manifest(1, &[(0, 1)]))
    );
    let found = store
        .lookup_events(&["p0-0".into(), "p0-0".into(), "nope".into()])
        .await
        .expect("lookup");
    assert_eq!(found.len(), 1);
    let after = store.user_history("u").await.expect("history");
    assert_eq!(after.manifest, before.manifest);
    assert_eq!(after.record, before.record);
    assert_eq!(after.speed, before.speed);
    assert_eq!(event_ids(&after.speed), ["p0-5", "p1-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_ids_of_one_bucket_are_written_and_found_together() {
    let Some(server) = Server::new() else { return };
    let store = server.fresh().await;
    // More ids of bucket 7 than one read or one batch takes, and a few of
    // other buckets.
    let ids: Vec<String> = (0..)
        .map(|i| format!("id-{i}"))
        .filter(|id| index_bucket(id) == 7)
        .take(300)
        .chain((0..50).map(|i| format!("other-{i}")))
        .collect();
    let mut w = write(vec![at("u", 0, 0)], &[(0, 1)]);
    w.index = ids
        .iter()
        .map(|id| (id.clone(), counted("u", None)))
        .collect();
    w.index.sort_by(|a, b| a.0.cmp(&b.0));
    store.apply_speed(w.into()).await.expect("apply");

    let mut asked = ids.clone();
    asked.extend(["absent".to_owned(), ids[0].clone(), String::new()]);
    let found = store.lookup_events(&asked).await.expect("lookup");
    assert_eq!(found.len(), ids.len());
    assert!(ids.iter().all(|id| found[id] == counted("u", None)));
}

/// `user`'s rows in `speed_entries`: each key and how many entries it holds.
async fn speed_rows(store: &ScyllaStore, user: &str) -> Vec<(i64, i64, u64)> {
    let statements = store.inner.statements().await.expect("statements");
    let mut rows = Vec::new();
    store
        .inner
        .pages(&statements.select_entry_runs, &(user,), "read", |page| {
            for row in page
                .rows::<(i64, i64, Option<&[u8]>)>()
                .expect("typed rows")
            {
                let (partition, offset, value) = row.expect("a row");
                let len = value.and_then(codec::chunk_len).expect("a speed value");
                rows.push((partition, offset, len));
            }
            Ok(())
        })
        .await
        .expect("read the rows");
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_keeps_each_users_entries_as_runs_keyed_by_their_last_offset() {
    let Some(server) = Server::new() else { return };
    let store = server.fresh().await;
    let mut entries: Vec<_> = (0..150).map(|o| at("heavy", 1, o)).collect();
    entries.extend([at("light", 0, 7), at("heavy", 0, 3)]);
    store
        .apply_speed(write(entries, &[(0, 8), (1, 150)]).into())
        .await
        .expect("apply");
    assert_eq!(
        speed_rows(&store, "heavy").await,
        [(0, 3, 1), (1, 63, 64), (1, 127, 64), (1, 149, 22)]
    );
    assert_eq!(speed_rows(&store, "light").await, [(0, 7, 1)]);
    let all = store
        .speed_entries("heavy", &LogPosition::new())
        .await
        .expect("entries");
    let positions: Vec<_> = all.iter().map(|e| (e.partition, e.offset)).collect();
    let expected: Vec<_> = std::iter::once((0, 3))
        .chain((0..150).map(|o| (1, o)))
        .collect();
    assert_eq!(positions, expected);

    // Garbage collection counts entries, and keeps a row it covers in part.
    store.write_batch(1, vec![]).await.expect("write v1");
    store
        .publish(&manifest(1, &[(0, 8), (1, 100)]))
        .await
        .expect("publish");
    let covered: LogPosition = [(0, 8), (1, 100)].into_iter().collect();
    let stats = store.collect_garbage(&covered, 1).await.expect("gc");
    assert_eq!(
        stats.speed_entries,
        1 + 64 + 1,
        "heavy's two rows, light's one"
    );
    assert_eq!(
        speed_rows(&store, "heavy").await,
        [(1, 127, 64), (1, 149, 22)]
    );
    assert_eq!(speed_rows(&store, "light").await, []);
    let past_the_batch = store
        .speed_entries("heavy", &covered)
        .await
        .expect("entries");
    let offsets: Vec<_> = past_the_batch.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, (100..150).collect::<Vec<_>>());
}

/// A replay may cut a user's entries into other runs than the attempt it
/// replays and decide a position otherwise (RELIABILITY.md, finding 1):
/// each position reads once, as the write made last holds it, whichever
/// run holds it and in whichever order the rows' keys come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_cut_into_other_runs_reads_each_position_as_written_last() {
    let Some(server) = Server::new() else { return };
    let store = server.fresh().await;
    let withdrawn = |user: &str| crate::PositionedEntry {
        entry: SpeedEntry::Retracted {
            event_ids: vec!["p0-1".into()],
        },
        ..at(user, 0, 1)
    };
    // The replay's run of the changed position ends before the first
    // attempt's ("shorter") and after it ("longer").
    let first = write(
        vec![
            at("shorter", 0, 0),
            at("shorter", 0, 1),
            at("shorter", 0, 2),
        ],
        &[],
    );
    store
        .apply_speed(first.into())
        .await
        .expect("first attempt");
    let first = write(vec![at("longer", 0, 1)], &[]);
    store
        .apply_speed(first.into())
        .await
        .expect("first attempt");
    // Write times are the server's, in microseconds: let them differ.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let replay = write(vec![withdrawn("shorter")], &[]);
    store.apply_speed(replay.into()).await.expect("replay");
    let replay = write(
        vec![at("longer", 0, 0), withdrawn("longer"), at("longer", 0, 2)],
        &[(0, 3)],
    );
    store.apply_speed(replay.into()).await.expect("replay");
    for user in ["shorter", "longer"] {
        assert_eq!(speed_rows(&store, user).await.len(), 2, "{user}: two runs");
        let entries = store
            .speed_entries(user, &LogPosition::new())
            .await
            .expect("entries");
        assert_eq!(
            entries,
            [at(user, 0, 0), withdrawn(user), at(user, 0, 2)],
            "{user}"
        );
    }
}

/// How many pieces `batch_record_pieces` holds for `version` and `user`.
async fn pieces(store: &ScyllaStore, version: i64, user: &str) -> usize {
    let statements = store.inner.statements().await.expect("statements");
    let mut count = 0;
    store
        .inner
        .pages(
            &statements.select_pieces,
            &(version, user),
            "read",
            |page| {
                count += page.rows_num();
                Ok(())
            },
        )
        .await
        .expect("read the pieces");
    count
}

/// A user with 20,000 events of a KiB: a 20 MB record, more than a CQL
/// server takes in one request (Cassandra refused such a write, and the
/// batch run with it). It is stored in pieces, read whole, collected with
/// its version and erased with its user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_a_request_is_stored_in_pieces_and_read_whole() {
    let Some(server) = Server::new() else { return };
    let store = server.fresh().await;
    let heavy = large_record("heavy", 20_000);
    let encoded = crate::EncodedRecord::of(&heavy).expect("encodes");
    assert!(
        encoded.as_bytes().len() > 16 << 20,
        "more than one request takes"
    );
    let light = record("light", "l-1");
    store
        .write_batch(
            1,
            vec![
                ("heavy".into(), heavy.clone()),
                ("light".into(), light.clone()),
            ],
        )
        .await
        .expect("write v1");
    store.publish(&manifest(1, &[])).await.expect("publish v1");
    let read = store.inner.batch_record(1, "heavy").await.expect("read");
    assert_eq!(read.as_deref(), Some(&heavy));
    let history = store.user_history("light").await.expect("history");
    assert_eq!(history.record.as_deref(), Some(&light));
    let expected = encoded.as_bytes().len().div_ceil(codec::RECORD_PIECE_BYTES);
    assert_eq!(pieces(&store, 1, "heavy").await, expected);
    assert_eq!(pieces(&store, 1, "light").await, 0);

    // A later version: collecting version 1 drops its pieces and the
    // listing that names them.
    store
        .write_batch(2, vec![("heavy".into(), heavy.clone())])
        .await
        .expect("write v2");
    store.publish(&manifest(2, &[])).await.expect("publish v2");
    let stats = store
        .collect_garbage(&LogPosition::new(), 2)
        .await
        .expect("gc");
    assert_eq!(stats.batch_records, 2, "heavy's and light's records of v1");
    assert_eq!(pieces(&store, 1, "heavy").await, 0);
    let statements = store.inner.statements().await.expect("statements");
    let listed = store
        .inner
        .listed_users(statements, 1, codec::PIECED_BUCKET)
        .await
        .expect("listing");
    assert!(listed.is_empty());
    assert_eq!(pieces(&store, 2, "heavy").await, expected);

    // Erasure leaves an erased record and no pieces.
    store.erase_user("heavy", (0, 0)).await.expect("erase");
    let read = store.inner.batch_record(2, "heavy").await.expect("read");
    assert!(read.is_some_and(|r| r.deleted && r.events.is_empty()));
    assert_eq!(pieces(&store, 2, "heavy").await, 0);
}

/// Pieces past what the record's cell counts (an earlier attempt at the
/// version wrote a longer record) are left out; a missing piece is
/// corruption, said with the version and user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_reads_the_pieces_its_cell_counts_and_no_others() {
    let Some(server) = Server::new() else { return };
    let store = server.fresh().await;
    let longer = large_record("u", 4_000);
    let shorter = large_record("u", 2_500);
    store
        .write_batch(1, vec![("u".into(), longer)])
        .await
        .expect("first attempt");
    store
        .write_batch(1, vec![("u".into(), shorter.clone())])
        .await
        .expect("second attempt");
    assert_eq!(pieces(&store, 1, "u").await, 4);
    let read = store.inner.batch_record(1, "u").await.expect("read");
    assert_eq!(read.as_deref(), Some(&shorter));

    let statements = store.inner.statements().await.expect("statements");
    store
        .inner
        .run(&statements.delete_pieces, (1i64, "u"), "lose the pieces")
        .await
        .expect("deleted");
    let error = store.inner.batch_record(1, "u").await.expect_err("corrupt");
    assert!(
        matches!(&error, StoreError::Corrupt(m) if m.contains("version 1 user \"u\"")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_the_first_index_layout_into_buckets_with_its_ttls() {
    let Some(server) = Server::new() else { return };
    let keyspace = server.keyspace();
    let store = server.store(server.options(&keyspace)).await;
    // The first layout, as a store before session 12 left it.
    let session = &store.inner.session;
    session
        .query_unpaged(
            format!("CREATE TABLE {keyspace}.event_index (event_id text PRIMARY KEY, entry blob)"),
            &[],
        )
        .await
        .expect("create the first layout");
    session.await_schema_agreement().await.expect("agreement");
    let kept = counted("kept", None);
    let expiring = counted("expiring", Some(i64::MAX));
    let insert =
        format!("INSERT INTO {keyspace}.event_index (event_id, entry) VALUES (?, ?) USING TTL ?");
    for (id, entry, ttl) in [("e-kept", &kept, 0), ("e-expiring", &expiring, 3_600)] {
        let value = crate::codec::encode_index(entry).expect("encode");
        session
            .query_unpaged(insert.as_str(), (id, value, ttl))
            .await
            .expect("insert into the first layout");
    }

    store.migrate().await.expect("migrates");
    let found = store
        .lookup_events(&["e-kept".into(), "e-expiring".into()])
        .await
        .expect("lookup");
    assert_eq!(found.get("e-kept"), Some(&kept));
    assert_eq!(found.get("e-expiring"), Some(&expiring));
    let ttls = session
        .query_unpaged(
            format!("SELECT event_id, TTL(entry) FROM {keyspace}.event_index_buckets"),
            &[],
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    let mut ttls: Vec<(String, Option<i32>)> = ttls
        .rows::<(String, Option<i32>)>()
        .expect("typed")
        .map(|r| r.expect("row"))
        .collect();
    ttls.sort();
    assert_eq!(ttls[0], ("e-expiring".into(), ttls[0].1));
    assert!(
        matches!(ttls[0].1, Some(t) if t > 3_000 && t <= 3_600),
        "{ttls:?}"
    );
    assert_eq!(ttls[1], ("e-kept".into(), None));
    assert!(!store.inner.has_table("event_index").await.expect("tables"));
    // Again: nothing left to move, nothing lost.
    store.migrate().await.expect("migrates again");
    assert_eq!(
        store
            .lookup_events(&["e-kept".into()])
            .await
            .expect("lookup")
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_keyspace_publish_and_read_consistently() {
    let Some(server) = Server::new() else { return };
    let keyspace = server.keyspace();
    let ttl = Duration::from_millis(300);
    let options = ScyllaOptions {
        manifest_ttl: ttl,
        ..server.options(&keyspace)
    };
    let a = server.store(options.clone()).await;
    let b = server.store(options).await;
    let entries = (0..6).map(|o| at("u", 0, o)).collect();
    a.apply_speed(write(entries, &[(0, 6)]).into())
        .await
        .expect("apply");

    a.write_batch(1, vec![("u".into(), record("u", "v1"))])
        .await
        .expect("write v1");
    let v1 = manifest(1, &[(0, 2)]);
    a.publish(&v1).await.expect("a publishes v1");
    assert_eq!(b.published().await.expect("published"), Some(v1.clone()));
    let seen = b.user_history("u").await.expect("history");
    assert_eq!(seen.record.as_deref(), Some(&record("u", "v1")));
    assert_eq!(event_ids(&seen.speed), ["p0-2", "p0-3", "p0-4", "p0-5"]);

    b.write_batch(2, vec![("u".into(), record("u", "v2"))])
        .await
        .expect("write v2");
    let v2 = manifest(2, &[(0, 4)]);
    b.publish(&v2).await.expect("b publishes v2");
    let error = a
        .publish(&v1)
        .await
        .expect_err("a cannot go back, whatever it cached");
    let message = error.to_string();
    assert!(
        message.contains("version 1") && message.contains("version 2"),
        "{message}"
    );
    a.write_batch(2, vec![("u".into(), record("u", "x"))])
        .await
        .expect_err("a cannot write into the version b published");

    // Until a's cache expires it may still answer from v1, but always as one
    // snapshot: the record and the tail of the same manifest.
    let deadline = Instant::now() + ttl + Duration::from_millis(200);
    loop {
        let history = a.user_history("u").await.expect("history");
        let version = history.manifest.as_ref().map(|m| m.version);
        let expected = match version {
            Some(1) => (record("u", "v1"), vec!["p0-2", "p0-3", "p0-4", "p0-5"]),
            Some(2) => (record("u", "v2"), vec!["p0-4", "p0-5"]),
            other => panic!("unexpected manifest {other:?}"),
        };
        assert_eq!(history.record.as_deref(), Some(&expected.0));
        assert_eq!(event_ids(&history.speed), expected.1);
        if version == Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "a never saw v2 after its TTL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Both race to publish v3 with different manifests: exactly one wins.
    a.write_batch(3, vec![("u".into(), record("u", "v3"))])
        .await
        .expect("write v3");
    let listed = b
        .version_users(3, super::user_bucket("u"))
        .await
        .expect("listing");
    assert_eq!(listed, ["u"], "a version's users are listed by bucket");
    let (from_a, from_b) = (manifest(3, &[(0, 5)]), manifest(3, &[(0, 6)]));
    let (ra, rb) = tokio::join!(a.publish(&from_a), b.publish(&from_b));
    assert!(ra.is_ok() != rb.is_ok(), "one wins: {ra:?} {rb:?}");
    let winner = if ra.is_ok() { from_a } else { from_b };
    let loser_error = ra.err().or(rb.err()).map(|e| e.to_string());
    assert!(
        loser_error
            .as_deref()
            .is_some_and(|e| e.contains("different manifest")),
        "{loser_error:?}"
    );
    assert_eq!(
        a.published().await.expect("published"),
        Some(winner.clone())
    );
    assert_eq!(b.published().await.expect("published"), Some(winner));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_merges_across_partitions_from_two_writers() {
    let Some(server) = Server::new() else { return };
    let keyspace = server.keyspace();
    let a = server.store(server.options(&keyspace)).await;
    let b = server.store(server.options(&keyspace)).await;
    // a owns log partitions 0 and 1, b owns 2 and 3; they write concurrently.
    let writer = |store: ScyllaStore, partitions: [u32; 2]| async move {
        for step in 1..=20u64 {
            let entries = partitions
                .iter()
                .map(|p| at(&format!("user-{p}"), *p, step * 10 + u64::from(*p)))
                .collect();
            let position: Vec<(u32, u64)> = partitions
                .iter()
                .map(|p| (*p, step * 10 + u64::from(*p) + 1))
                .collect();
            let mut w = write(entries, &position);
            w.progress.last_accepted_at = Some(1_000 + step as i64 * 10 + i64::from(partitions[0]));
            store.apply_speed(w.into()).await.expect("apply");
        }
    };
    tokio::join!(writer(a.clone(), [0, 1]), writer(b.clone(), [2, 3]));
    // A stale replay (a zombie writer, a retry) moves nothing back.
    let mut stale = write(vec![at("user-0", 0, 10)], &[(0, 11), (1, 12), (2, 13)]);
    stale.progress.last_accepted_at = Some(5);
    a.apply_speed(stale.into()).await.expect("replay");

    let expected: LogPosition = [(0, 201), (1, 202), (2, 203), (3, 204)]
        .into_iter()
        .collect();
    let fresh = server.store(server.options(&keyspace)).await;
    for store in [&a, &b, &fresh] {
        let progress = store.speed_progress().await.expect("progress");
        assert_eq!(progress.position, expected);
        assert_eq!(progress.last_accepted_at, Some(1_202));
    }
    assert_eq!(
        fresh
            .speed_entries("user-2", &LogPosition::new())
            .await
            .expect("entries")
            .len(),
        20
    );
}

/// Serving on one connection follows the speed writes another makes: the
/// feed names each write's users, a user no write touched is answered
/// without a read (an entry put into CQL behind the feed's back stays
/// unseen), and one a write touched is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_follows_the_speed_writes_and_reads_only_the_users_they_touched() {
    let Some(server) = Server::new() else { return };
    let keyspace = server.keyspace();
    let writer = server.store(server.options(&keyspace)).await;
    let reader = Arc::new(server.store(server.options(&keyspace)).await);
    let followed = Arc::new(crate::follow::FollowedStore::new(
        reader.clone(),
        reader.clone(),
        Duration::from_millis(10),
    ));
    let serving = crate::TailCache::new(followed.clone(), 1 << 20, Duration::ZERO);
    let followed_to = |next: u64| {
        let followed = followed.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while followed.followed().is_none_or(|p| p.next(0) < next) {
                assert!(Instant::now() < deadline, "never followed to {next}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    writer
        .apply_speed(write(vec![at("u", 0, 0), at("v", 0, 1)], &[(0, 2)]).into())
        .await
        .expect("apply");
    assert_eq!(
        served_ids(serving.served_history("u").await.expect("read")),
        ["p0-0"]
    );
    followed_to(2).await;
    assert_eq!(
        served_ids(serving.served_history("u").await.expect("read")),
        ["p0-0"]
    );
    assert_eq!(
        served_ids(serving.served_history("v").await.expect("read")),
        ["p0-1"]
    );

    // An entry in CQL that no write announced: u is answered from its
    // kept tail, so it stays unseen.
    let statements = reader.inner.statements().await.expect("statements");
    let hidden = codec::encode(&at("u", 0, 2).entry).expect("encodes");
    reader
        .inner
        .run(
            &statements.insert_entry,
            ("u", 0i64, 2i64, hidden),
            "write an entry behind the feed's back",
        )
        .await
        .expect("written");
    assert_eq!(
        served_ids(serving.served_history("u").await.expect("read")),
        ["p0-0"]
    );

    // A write for u: the feed names u, the next read reads u's entries.
    writer
        .apply_speed(write(vec![at("u", 0, 3)], &[(0, 4)]).into())
        .await
        .expect("apply");
    followed_to(4).await;
    assert_eq!(
        served_ids(serving.served_history("u").await.expect("read")),
        ["p0-0", "p0-2", "p0-3"]
    );
    assert_eq!(
        served_ids(serving.served_history("v").await.expect("read")),
        ["p0-1"]
    );
    // What the writer recorded: each write's end and users, by hash.
    let rows = reader.inner.speed_changes(0, 0).await.expect("changes");
    let hash = crate::changes::user_hash;
    let mut first = vec![hash("u"), hash("v")];
    first.sort_unstable();
    assert_eq!(rows, [(2, first), (4, vec![hash("u")])]);

    // An erasure names its user too: v's kept tail gives way to the
    // deletion marker, with no speed write to announce it.
    writer.erase_user("v", (0, 5)).await.expect("erased");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !served_ids(serving.served_history("v").await.expect("read")).is_empty() {
        assert!(Instant::now() < deadline, "the erased user is still served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Prints this machine's figures; no assertion on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures, run explicitly with --ignored --nocapture"]
async fn scylla_figures() {
    let Some(server) = Server::new() else { return };
    let store = server.fresh().await;
    let users = 500;
    let mut rounds = Vec::new();
    for round in 0..4u64 {
        let entries: Vec<_> = (0..5_000u64)
            .map(|i| at(&format!("user-{}", i % users), 0, round * 5_000 + i))
            .collect();
        let index = entries
            .iter()
            .map(|e| {
                (
                    format!("p0-{}", e.offset),
                    IndexEntry {
                        user_id: Some(e.user_id.clone()),
                        accepted_at: Some(0),
                        retracted_at: None,
                        expires_at: None,
                    },
                )
            })
            .collect();
        let mut w = write(entries, &[(0, (round + 1) * 5_000)]);
        w.index = index;
        let started = Instant::now();
        store.apply_speed(w.into()).await.expect("apply");
        rounds.push(started.elapsed());
    }
    println!("apply_speed, 5000 entries + 5000 index rows, 500 users: {rounds:?}");

    let ids: Vec<String> = (0..5_000).map(|i| format!("p0-{i}")).collect();
    let started = Instant::now();
    let found = store.lookup_events(&ids).await.expect("lookup");
    println!(
        "lookup_events, 5000 ids ({} found): {:?}",
        found.len(),
        started.elapsed()
    );

    let records = (0..users)
        .map(|u| (format!("user-{u}"), record(&format!("user-{u}"), "batch")))
        .collect();
    let started = Instant::now();
    store.write_batch(1, records).await.expect("write_batch");
    println!("write_batch, 500 users: {:?}", started.elapsed());
    store
        .publish(&manifest(1, &[(0, 10_000)]))
        .await
        .expect("publish");

    // Warm reads: record + 20 uncovered (and 20 covered) speed entries each.
    let mut latencies = Vec::new();
    for i in 0..2_000 {
        let user = format!("user-{}", i % users);
        let started = Instant::now();
        let history = store.user_history(&user).await.expect("history");
        latencies.push(started.elapsed());
        assert_eq!(history.speed.len(), 20);
    }
    latencies.sort();
    let pct = |p: usize| latencies[latencies.len() * p / 100];
    println!(
        "user_history (record + 20 of 40 entries), sequential: p50 {:?} p90 {:?} p99 {:?} max {:?}",
        pct(50),
        pct(90),
        pct(99),
        latencies[latencies.len() - 1]
    );

    let started = Instant::now();
    let stats = store
        .collect_garbage(&[(0, 10_000)].into_iter().collect(), 1)
        .await
        .expect("gc");
    println!(
        "collect_garbage over 500 users: {stats:?} in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_keys_read_as_absent_and_are_refused_on_write() {
    let Some(server) = Server::new() else { return };
    let store = server.fresh().await;
    let history = store.user_history("").await.expect("history");
    assert!(history.record.is_none() && history.speed.is_empty());
    assert!(store
        .lookup_events(&[String::new()])
        .await
        .expect("lookup")
        .is_empty());
    let error = store
        .apply_speed(write(vec![at("", 0, 0)], &[(0, 1)]).into())
        .await
        .expect_err("an empty user id");
    assert!(error.to_string().contains("empty user id"), "{error}");
    assert_eq!(
        store.speed_progress().await.expect("progress"),
        Default::default(),
        "nothing written"
    );
    store
        .write_batch(1, vec![(String::new(), record("", "x"))])
        .await
        .expect_err("an empty user id");
}

/// Needs no server: nothing listens on the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_unavailable_and_retryable() {
    let options = ScyllaOptions {
        nodes: vec!["127.0.0.1:1".into()],
        request_timeout: Duration::from_secs(2),
        ..ScyllaOptions::default()
    };
    let started = Instant::now();
    let error = ScyllaStore::connect(options)
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        matches!(&error, StoreError::Unavailable(m) if m.contains("127.0.0.1:1")),
        "{error}"
    );
    assert!(error.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn insights_keep_the_port_contract() {
    let Some(server) = Server::new() else { return };
    let store = server.fresh().await;
    crate::insights::contract::membership_and_feed(&store).await;
    // Every pass's journal was applied and cleared with its progress.
    let progress = crate::InsightsStore::insights_progress(&store)
        .await
        .expect("progress");
    assert_eq!(progress.next_cursor, 4);
}
