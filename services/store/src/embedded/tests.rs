use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{ReadableTable, ReadableTableMetadata};
use tempfile::TempDir;

use super::tables::{BATCH, SPEED};
use super::*;
use crate::contract::{self, at, counted, manifest, record, write};
use crate::SignalStore;

fn store_in(dir: &TempDir) -> EmbeddedStore {
    EmbeddedStore::open(&dir.path().join("nested/dirs/signals.redb")).expect("opens")
}

/// Publishes version 1 at `position`, with a record of "u".
async fn publish_u(store: &EmbeddedStore, position: &[(Partition, Offset)]) {
    store
        .write_batch(1, vec![("u".into(), record("u", "b"))])
        .await
        .expect("write");
    store
        .publish(&manifest(1, position))
        .await
        .expect("publish");
}

#[tokio::test]
async fn passes_the_store_contract() {
    contract::run_all(|| async {
        let dir = TempDir::new().expect("temp dir");
        let store: Box<dyn SignalStore> = Box::new(store_in(&dir));
        (store, dir)
    })
    .await;
}

/// Concurrent first reads of a record decode it once: every reader gets
/// the same decoded record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_a_record_being_loaded_share_its_load() {
    let dir = TempDir::new().expect("temp dir");
    let store = Arc::new(store_in(&dir));
    let heavy = contract::large_record("u", 20_000);
    contract::publish_version(&*store, 1, &[(0, 0)], vec![("u".into(), heavy.clone())]).await;
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.user_history("u").await })
        })
        .collect();
    let mut records = Vec::new();
    for reader in readers {
        let history = reader.await.expect("joined").expect("history");
        records.push(history.record.expect("a record"));
    }
    assert_eq!(*records[0], heavy);
    assert!(
        records.iter().all(|r| Arc::ptr_eq(r, &records[0])),
        "one decoded record for all eight readers"
    );
    assert!(store.inner.loading.is_idle());
}

/// Until a heavy user's record of a new version is decoded, their reads
/// are answered from the version before (kept decoded) with the speed
/// entries past its position, and the new record loads in the
/// background; a light user's read loads theirs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_users_reads_during_a_new_versions_load_come_from_the_one_before() {
    let dir = TempDir::new().expect("temp dir");
    let options = EmbeddedOptions {
        previous_answers_from_events: 3,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open_with(&dir.path().join("signals.redb"), options).expect("opens");
    let heavy = contract::large_record("u", 3);
    contract::publish_version(&store, 1, &[(0, 0)], vec![("u".into(), heavy.clone())]).await;
    store
        .apply_speed(Arc::new(write(
            vec![at("u", 0, 2), at("u", 0, 7)],
            &[(0, 8)],
        )))
        .await
        .expect("speed write");
    assert_eq!(
        store
            .user_history("u")
            .await
            .expect("history")
            .record
            .as_deref(),
        Some(&heavy)
    );

    let newer = contract::large_record("u", 4);
    let light = record("l", "l1");
    contract::publish_version(
        &store,
        2,
        &[(0, 5)],
        vec![("u".into(), newer.clone()), ("l".into(), light.clone())],
    )
    .await;
    let offsets = |h: &HistorySince| h.entries.iter().map(|e| e.offset).collect::<Vec<_>>();
    let early = store.user_history_since("u", None).await.expect("history");
    assert_eq!(early.manifest.as_ref().map(|m| m.version), Some(1));
    assert_eq!(early.record.as_deref(), Some(&heavy));
    assert_eq!(
        offsets(&early),
        [2, 7],
        "every entry past version 1's position"
    );
    let light_read = store.user_history_since("l", None).await.expect("history");
    assert_eq!(light_read.manifest.as_ref().map(|m| m.version), Some(2));
    assert_eq!(light_read.record.as_deref(), Some(&light));

    let deadline = Instant::now() + Duration::from_secs(5);
    while store.inner.records.known(2, "u").is_none() {
        assert!(Instant::now() < deadline, "the load never landed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let late = store.user_history_since("u", None).await.expect("history");
    assert_eq!(late.manifest.as_ref().map(|m| m.version), Some(2));
    assert_eq!(late.record.as_deref(), Some(&newer));
    assert_eq!(offsets(&late), [7]);

    // A version two before the published one never answers.
    contract::publish_version(&store, 3, &[(0, 5)], vec![("u".into(), newer.clone())]).await;
    contract::publish_version(&store, 4, &[(0, 5)], vec![("u".into(), heavy.clone())]).await;
    let read = store.user_history_since("u", None).await.expect("history");
    assert_eq!(read.manifest.as_ref().map(|m| m.version), Some(4));
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = TempDir::new().expect("temp dir");
    let store = store_in(&dir);
    let mut w = write(vec![at("u", 0, 0), at("u", 0, 5)], &[(0, 6)]);
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
    publish_u(&store, &[(0, 1)]).await;
    let before = store.user_history("u").await.expect("history");
    drop(store);

    let store = store_in(&dir);
    assert_eq!(store.speed_progress().await.expect("progress"), w.progress);
    assert_eq!(
        store.published().await.expect("published"),
        Some(manifest(1, &[(0, 1)]))
    );
    assert_eq!(
        store
            .lookup_events(&["p0-0".into()])
            .await
            .expect("lookup")
            .len(),
        1
    );
    let after = store.user_history("u").await.expect("history");
    assert_eq!(after.record, before.record);
    assert_eq!(after.speed, before.speed);
    assert_eq!(after.speed.len(), 1);
}

#[tokio::test]
async fn a_second_opener_is_told_the_file_is_in_use() {
    let dir = TempDir::new().expect("temp dir");
    let _store = store_in(&dir);
    let error = EmbeddedStore::open(&dir.path().join("nested/dirs/signals.redb")).err();
    assert!(
        matches!(error, Some(StoreError::Unavailable(_))),
        "{error:?}"
    );
}

/// A write refused in part (an entry whose user id cannot be keyed) is
/// refused whole: no entry, no index update, no progress.
#[tokio::test]
async fn a_write_refused_in_part_leaves_nothing_behind() {
    let dir = TempDir::new().expect("temp dir");
    let store = store_in(&dir);
    let long_user = "x".repeat(70_000);
    let mut w = write(vec![at("u", 0, 0), at(&long_user, 0, 1)], &[(0, 2)]);
    w.index = vec![(
        "p0-0".into(),
        IndexEntry {
            user_id: Some("u".into()),
            accepted_at: Some(0),
            retracted_at: None,
            expires_at: None,
        },
    )];
    store
        .apply_speed(w.into())
        .await
        .expect_err("an unkeyable user id fails the write");
    assert_nothing_applied(&store).await;
}

/// A write that fails inside its transaction, after its entries were
/// inserted and before the index and progress were, aborts whole.
#[tokio::test]
async fn a_write_failing_midway_leaves_nothing_behind() {
    let dir = TempDir::new().expect("temp dir");
    let store = store_in(&dir);
    let mut w = write(vec![at("u", 0, 0), at("u", 0, 1)], &[(0, 2)]);
    w.index = vec![(
        "p0-0".into(),
        IndexEntry {
            user_id: Some("u".into()),
            accepted_at: Some(0),
            retracted_at: None,
            expires_at: None,
        },
    )];
    store.inner.fail_after_entries.store(true, Ordering::SeqCst);
    let error = store
        .apply_speed(w.clone().into())
        .await
        .expect_err("the injected fault fails the write");
    assert!(error.to_string().contains("injected"), "{error}");
    assert_nothing_applied(&store).await;
    store
        .inner
        .fail_after_entries
        .store(false, Ordering::SeqCst);
    store
        .apply_speed(w.clone().into())
        .await
        .expect("the retry succeeds");
    assert_eq!(store.speed_progress().await.expect("progress"), w.progress);
}

async fn assert_nothing_applied(store: &EmbeddedStore) {
    assert_eq!(
        store.speed_progress().await.expect("progress"),
        SpeedProgress::default()
    );
    assert!(store
        .user_history("u")
        .await
        .expect("history")
        .speed
        .is_empty());
    assert!(store
        .lookup_events(&["p0-0".into()])
        .await
        .expect("lookup")
        .is_empty());
}

#[tokio::test]
async fn replaying_an_older_write_never_moves_progress_back() {
    let dir = TempDir::new().expect("temp dir");
    let store = store_in(&dir);
    let older = write(vec![at("u", 0, 0)], &[(0, 1)]);
    let newer = write(vec![at("u", 0, 1)], &[(0, 2), (1, 4)]);
    store
        .apply_speed(older.clone().into())
        .await
        .expect("apply");
    store
        .apply_speed(newer.clone().into())
        .await
        .expect("apply");
    store.apply_speed(older.into()).await.expect("replay");
    assert_eq!(
        store.speed_progress().await.expect("progress"),
        newer.progress
    );
}

#[tokio::test]
async fn garbage_collection_in_small_chunks_removes_exactly_the_covered_rows() {
    let dir = TempDir::new().expect("temp dir");
    let options = EmbeddedOptions {
        gc_chunk: 3,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open_with(&dir.path().join("s.redb"), options).expect("opens");
    // One write per offset, so that every entry is a row of its own.
    for o in 0..5u64 {
        let entries = (0..20).map(|u| at(&format!("user-{u}"), (o % 2) as u32, o));
        store
            .apply_speed(write(entries.collect(), &[(0, o + 1), (1, o + 1)]).into())
            .await
            .expect("apply");
    }
    let users: Vec<_> = (0..7)
        .map(|u| (format!("user-{u}"), record("u", "x")))
        .collect();
    store.write_batch(1, users.clone()).await.expect("write");
    store.write_batch(2, users).await.expect("write");
    store
        .publish(&manifest(2, &[(0, 3), (1, 2)]))
        .await
        .expect("publish");
    // Covered: offsets 0 and 2 (partition 0, < 3), offset 1 (partition 1, < 2).
    let stats = store
        .collect_garbage(&[(0, 3), (1, 2)].into_iter().collect(), 2)
        .await
        .expect("gc");
    assert_eq!(
        stats,
        GarbageStats {
            speed_entries: 20 * 3,
            batch_records: 7,
            index_entries: 0
        }
    );
    let rows = |inner: &Inner| {
        let txn = inner.db.begin_read().expect("read");
        let speed = txn.open_table(SPEED).expect("speed");
        let batch = txn.open_table(BATCH).expect("batch");
        (speed.len().expect("len"), batch.len().expect("len"))
    };
    assert_eq!(rows(&store.inner), (20 * 2, 7));
    let history = store.user_history("user-3").await.expect("history");
    assert_eq!(history.speed.len(), 2);
}

#[tokio::test]
async fn undecodable_values_are_reported_corrupt_with_table_and_key() {
    let dir = TempDir::new().expect("temp dir");
    let store = store_in(&dir);
    publish_u(&store, &[]).await;
    {
        let txn = store.inner.db.begin_write().expect("write");
        {
            let mut speed = txn.open_table(SPEED).expect("speed");
            let key = keys::speed_key("u", 0, 7).expect("key");
            speed
                .insert(key.as_slice(), [codec::FORMAT, 0xff, 0xff].as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let error = store
        .user_history("u")
        .await
        .expect_err("garbage does not decode");
    let StoreError::Corrupt(message) = error else {
        panic!("{error:?}")
    };
    assert!(
        message.contains("speed") && message.contains("\"u\"") && message.contains("offset 7"),
        "{message}"
    );
}

#[tokio::test]
async fn warm_reads_share_the_decoded_record() {
    let dir = TempDir::new().expect("temp dir");
    let store = store_in(&dir);
    publish_u(&store, &[]).await;
    let first = store.user_history("u").await.expect("history");
    let second = store.user_history("u").await.expect("history");
    let (Some(a), Some(b)) = (first.record, second.record) else {
        panic!("records missing")
    };
    assert!(Arc::ptr_eq(&a, &b));
    assert!(Arc::ptr_eq(
        &first.manifest.expect("manifest"),
        &second.manifest.expect("manifest")
    ));
}

/// A user the published version has no record of is known after one read:
/// later reads stay off the blocking pool, and still see the speed entries
/// written for the user since.
#[tokio::test]
async fn a_user_without_a_record_is_read_warm_after_one_read() {
    let dir = TempDir::new().expect("temp dir");
    let store = store_in(&dir);
    publish_u(&store, &[(0, 1)]).await;
    let warm = |store: &EmbeddedStore| {
        store
            .inner
            .warm_user_history("nobody", None)
            .expect("warm read")
    };
    assert!(warm(&store).is_none(), "nothing is known before a read");
    let first = store.user_history("nobody").await.expect("history");
    assert!(first.record.is_none() && first.speed.is_empty());
    let known = warm(&store).expect("known after one read");
    assert!(known.record.is_none() && known.entries.is_empty());

    store
        .apply_speed(write(vec![at("nobody", 0, 5)], &[(0, 6)]).into())
        .await
        .expect("apply");
    let known = warm(&store).expect("still known");
    assert!(known.record.is_none());
    assert_eq!(known.entries.len(), 1, "the new entry is read");
    assert_eq!(
        store
            .user_history("nobody")
            .await
            .expect("history")
            .speed
            .len(),
        1
    );
}

/// A version still being written is read as it is now, never from memory:
/// a resumed batch run reads the records it wrote before its crash.
#[tokio::test]
async fn an_unpublished_version_missing_a_record_is_read_again() {
    let dir = TempDir::new().expect("temp dir");
    let store = store_in(&dir);
    assert!(store.batch_record(2, "u").await.expect("read").is_none());
    store
        .write_batch(2, vec![("u".into(), record("u", "b"))])
        .await
        .expect("write");
    assert!(store.batch_record(2, "u").await.expect("read").is_some());
}

/// The environment variable naming the store file the crash writer uses.
const CRASH_FILE: &str = "SIGNALS_STORE_CRASH_FILE";
/// Entries per write of the crash writer.
const CRASH_STEP: u64 = 50;

/// Killed mid-flight by `a_killed_writer_leaves_progress_matching_its_entries`.
#[test]
#[ignore = "run as a child process by a_killed_writer_leaves_progress_matching_its_entries"]
fn crash_writer() {
    let Ok(path) = std::env::var(CRASH_FILE) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = EmbeddedStore::open(Path::new(&path)).expect("opens");
        for step in 0.. {
            let entries = (step * CRASH_STEP..(step + 1) * CRASH_STEP)
                .map(|o| at(&format!("u{}", o % 7), 0, o));
            store
                .apply_speed(write(entries.collect(), &[(0, (step + 1) * CRASH_STEP)]).into())
                .await
                .expect("apply");
            println!("committed {step}");
        }
    });
}

/// SIGKILL a process that keeps writing, reopen, and find that the progress
/// describes exactly the entries present: never one more, never one less.
/// (A process crash, not a power cut: the OS still owns the page cache.
/// Power-cut safety rests on redb's commit protocol with Immediate durability.)
#[test]
fn a_killed_writer_leaves_progress_matching_its_entries() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("crash.redb");
    for round in 0..3u64 {
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "embedded::tests::crash_writer",
                "--ignored",
                "--nocapture",
            ])
            .env(CRASH_FILE, &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the writer");
        // Kill it while it writes, after a few commits we know of.
        let wanted = 3 + 5 * round;
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let commits = lines
            .by_ref()
            .map_while(Result::ok)
            .filter(|line| line.starts_with("committed"))
            .take(wanted as usize)
            .count() as u64;
        // Kill before closing the pipe, so the writer dies by the signal.
        child.kill().expect("kill the writer");
        child.wait().expect("reap the writer");
        drop(lines);
        assert_eq!(commits, wanted, "the writer stopped early");

        let store = EmbeddedStore::open(&path).expect("reopens after a crash");
        let progress = store
            .inner
            .speed_progress()
            .expect("progress")
            .position
            .next(0);
        let entries = {
            let txn = store.inner.db.begin_read().expect("read");
            let speed = txn.open_table(SPEED).expect("speed");
            let rows = speed.iter().expect("scan");
            rows.map(|row| {
                let (_, value) = row.expect("row");
                codec::chunk_len(value.value()).expect("a speed value")
            })
            .sum::<u64>()
        };
        assert_eq!(
            entries, progress,
            "round {round}: progress {progress} but {entries} entries"
        );
        assert_eq!(progress % CRASH_STEP, 0);
        assert!(
            progress >= wanted * CRASH_STEP,
            "round {round}: acknowledged writes are durable"
        );
        // Start the next round from an empty file so a stale writer can't pass it.
        drop(store);
        std::fs::remove_file(&path).expect("remove");
    }
}

/// Rough figures, not a test of speed: `cargo test -p signals-store --release
/// --lib -- --ignored --nocapture embedded_figures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints timings; run in release mode"]
async fn embedded_figures() {
    const USERS: u64 = 1000;
    const ROUNDS: u64 = 50;
    let dir = TempDir::new().expect("temp dir");
    let store = store_in(&dir);

    let mut apply = Duration::ZERO;
    for round in 0..ROUNDS {
        let base = round * USERS;
        let user = |o: u64| format!("user-{}", o % USERS);
        let mut w = write(
            (base..base + USERS).map(|o| at(&user(o), 0, o)).collect(),
            &[(0, base + USERS)],
        );
        let seen = |o: u64| IndexEntry {
            user_id: Some(user(o)),
            accepted_at: Some(0),
            retracted_at: None,
            expires_at: None,
        };
        w.index = (base..base + USERS)
            .map(|o| (format!("p0-{o}"), seen(o)))
            .collect();
        let started = Instant::now();
        store.apply_speed(w.into()).await.expect("apply");
        let took = started.elapsed();
        if round == 0 || round == ROUNDS - 1 {
            println!("apply_speed round {round}: {took:?}");
        }
        apply += took;
    }
    println!(
        "apply_speed, 1000 entries + 1000 index updates, durable: {:?}/call",
        apply / ROUNDS as u32
    );

    let started = Instant::now();
    for round in 0..20 {
        let offset = ROUNDS * USERS + round;
        let w = write(vec![at("single", 0, offset)], &[(0, offset + 1)]);
        store.apply_speed(w.into()).await.expect("apply");
    }
    println!(
        "apply_speed, 1 entry, durable (the commit's floor): {:?}/call",
        started.elapsed() / 20
    );

    let record_of = |u: u64| {
        let mut r = record("u", "x");
        r.events = (0..200)
            .map(|i| contract::event(&format!("b{u}-{i}"), "u", i))
            .collect();
        (format!("user-{u}"), r)
    };
    let started = Instant::now();
    store
        .write_batch(1, (0..USERS).map(record_of).collect())
        .await
        .expect("write");
    println!(
        "write_batch, 1000 users x 200 events, durable: {:?}",
        started.elapsed()
    );
    store
        .publish(&manifest(1, &[(0, 0)]))
        .await
        .expect("publish");

    let users =
        |range: std::ops::Range<u64>| range.map(|u| format!("user-{u}")).collect::<Vec<_>>();
    let report = |label: &str, started: Instant, n: usize| {
        println!(
            "user_history {label} (200 batch events + {ROUNDS} speed entries): {:?}/call",
            started.elapsed() / n as u32
        );
    };
    for (label, range) in [("cold", 0..250), ("warm", 0..250)] {
        let started = Instant::now();
        for user in users(range.clone()) {
            let history = store.user_history(&user).await.expect("history");
            assert_eq!(history.speed.len(), ROUNDS as usize);
        }
        report(label, started, (range.end - range.start) as usize);
    }
    for (label, range) in [
        ("cold, no spawn_blocking", 250..500),
        ("warm, no spawn_blocking", 250..500),
    ] {
        let started = Instant::now();
        for user in users(range.clone()) {
            let history = store.inner.user_history(&user, None).expect("history");
            assert_eq!(history.entries.len(), ROUNDS as usize);
        }
        report(label, started, (range.end - range.start) as usize);
    }
    let started = Instant::now();
    for _ in 0..1000 {
        store.check().await.expect("check");
    }
    println!(
        "check (spawn_blocking hop + empty read txn): {:?}/call",
        started.elapsed() / 1000
    );

    let (_, record) = record_of(0);
    let bytes = codec::encode_record(&record).expect("encodes");
    let started = Instant::now();
    for _ in 0..100 {
        let _: UserRecord = codec::decode_record(&bytes, "batch", String::new).expect("decodes");
    }
    println!(
        "decoding one record of {} bytes: {:?}",
        bytes.len(),
        started.elapsed() / 100
    );
}

fn speed_rows(store: &EmbeddedStore) -> u64 {
    let txn = store.inner.db.begin_read().expect("read");
    txn.open_table(SPEED).expect("speed").len().expect("len")
}

/// One write's entries of one user and partition are one row; a read from
/// a position inside a row returns exactly the entries past it, and a
/// replay that cut the same entries into other rows counts each position
/// once.
#[tokio::test]
async fn a_users_entries_of_one_write_are_one_row_read_from_any_position() {
    let dir = TempDir::new().expect("temp dir");
    let store = store_in(&dir);
    let entries = (0..30u64).map(|o| at(&format!("u{}", o % 3), (o % 2) as u32, o));
    store
        .apply_speed(write(entries.collect(), &[(0, 30), (1, 30)]).into())
        .await
        .expect("apply");
    assert_eq!(speed_rows(&store), 3 * 2, "a row per user and partition");

    let offsets = |entries: &[PositionedEntry]| -> Vec<(u32, u64)> {
        entries.iter().map(|e| (e.partition, e.offset)).collect()
    };
    // u0 holds offsets 0, 3, 6, …, 27: partition 0 the even ones, 1 the odd.
    let from: LogPosition = [(0, 7), (1, 20)].into_iter().collect();
    let tail = store.inner.speed_entries("u0", &from).expect("read");
    assert_eq!(
        offsets(&tail),
        [(0, 12), (0, 18), (0, 24), (1, 21), (1, 27)]
    );

    // A replay of part of the write, cut differently: nothing twice.
    let replay = [9u64, 15, 21].map(|o| at("u0", (o % 2) as u32, o));
    store
        .apply_speed(write(replay.to_vec(), &[(0, 30), (1, 30)]).into())
        .await
        .expect("replay");
    assert_eq!(speed_rows(&store), 3 * 2 + 1);
    let all = store
        .inner
        .speed_entries("u0", &LogPosition::new())
        .expect("read");
    assert_eq!(
        offsets(&all),
        [0, 6, 12, 18, 24, 3, 9, 15, 21, 27].map(|o| ((o % 2) as u32, o))
    );
    assert_eq!(
        offsets(&store.inner.speed_entries("u0", &from).expect("read")),
        offsets(&tail)
    );
}

/// A row goes to garbage collection once its last entry is covered, and
/// not before: a partly covered row still serves what is past the position.
#[tokio::test]
async fn a_partly_covered_row_stays_until_its_last_entry_is_covered() {
    let dir = TempDir::new().expect("temp dir");
    let store = store_in(&dir);
    store
        .apply_speed(write((0..6).map(|o| at("u", 0, o)).collect(), &[(0, 6)]).into())
        .await
        .expect("apply");
    publish_u(&store, &[(0, 4)]).await;
    let stats = store
        .collect_garbage(&[(0, 4)].into_iter().collect(), 1)
        .await
        .expect("gc");
    assert_eq!(stats.speed_entries, 0);
    let history = store.user_history("u").await.expect("history");
    assert_eq!(history.speed.len(), 2, "offsets 4 and 5");

    store
        .write_batch(2, vec![("u".into(), record("u", "c"))])
        .await
        .expect("write");
    store
        .publish(&manifest(2, &[(0, 6)]))
        .await
        .expect("publish");
    let stats = store
        .collect_garbage(&[(0, 6)].into_iter().collect(), 2)
        .await
        .expect("gc");
    assert_eq!(stats.speed_entries, 6, "the row's entries, counted");
    assert_eq!(speed_rows(&store), 0);
}

/// The index log finds every id's newest entry across writes, after a
/// reopen too, and the in-memory memo holds one slot per id.
#[tokio::test]
async fn the_index_log_answers_the_newest_entry_across_writes_and_reopens() {
    let dir = TempDir::new().expect("temp dir");
    let store = store_in(&dir);
    let ids: Vec<String> = (0..1_000).map(|i| format!("e-{i}")).collect();
    let mut first = write(Vec::new(), &[(0, 1)]);
    first.index = ids
        .iter()
        .map(|id| (id.clone(), counted("u", None)))
        .collect();
    store.apply_speed(first.into()).await.expect("apply");
    // A later write updates every third id.
    let mut second = write(Vec::new(), &[(0, 2)]);
    second.index = ids
        .iter()
        .step_by(3)
        .map(|id| (id.clone(), counted("v", None)))
        .collect();
    store.apply_speed(second.into()).await.expect("apply");

    let check = |found: HashMap<String, IndexEntry>| {
        assert_eq!(found.len(), 1_000);
        for (i, id) in ids.iter().enumerate() {
            let user = if i % 3 == 0 { "v" } else { "u" };
            assert_eq!(found[id].user_id.as_deref(), Some(user), "{id}");
        }
    };
    let mut asked = ids.clone();
    asked.push("never-written".into());
    check(store.lookup_events(&asked).await.expect("lookup"));
    assert_eq!(store.inner.index.len(), 1_000);
    drop(store);

    let store = store_in(&dir);
    assert_eq!(store.inner.index.len(), 1_000, "rebuilt on open");
    check(store.lookup_events(&asked).await.expect("lookup"));
    // New writes go after the rebuilt ones, and win.
    let mut third = write(Vec::new(), &[(0, 3)]);
    third.index = vec![(ids[1].clone(), counted("w", None))];
    store.apply_speed(third.into()).await.expect("apply");
    let found = store.lookup_events(&ids[1..2]).await.expect("lookup");
    assert_eq!(found[&ids[1]].user_id.as_deref(), Some("w"));
}

/// Garbage collection drops whole writes whose entries all expired, oldest
/// first, and stops at the first write that has not (writes expire in
/// about the order they were made); a write that never expires is passed
/// over. An id whose newest entry went is absent, also after a reopen that
/// finds an older, expired entry of it in a write still kept.
#[tokio::test]
async fn collected_index_writes_are_forgotten_and_stay_forgotten() {
    let dir = TempDir::new().expect("temp dir");
    let store = store_in(&dir);
    let now = signals_schemas::now_millis();
    let past = Some(now - 10_000);
    let writes = [
        vec![("old", Some(now - 20_000)), ("legacy", None)],
        vec![("old", past), ("gone", past)],
        vec![("kept", Some(now + 3_600_000))],
        vec![("after", past)],
    ];
    for (n, updates) in writes.iter().enumerate() {
        let mut w = write(Vec::new(), &[(0, n as u64 + 1)]);
        w.index = updates
            .iter()
            .map(|(id, expiry)| (id.to_string(), counted("u", *expiry)))
            .collect();
        store.apply_speed(w.into()).await.expect("apply");
    }
    let asked: Vec<String> = ["old", "legacy", "gone", "kept", "after"]
        .map(String::from)
        .to_vec();
    let live = |found: HashMap<String, IndexEntry>| {
        let mut ids: Vec<String> = found.into_keys().collect();
        ids.sort();
        ids
    };
    // Expired entries are absent before any collection.
    assert_eq!(
        live(store.lookup_events(&asked).await.expect("lookup")),
        ["kept", "legacy"]
    );

    let stats = store
        .collect_garbage(&LogPosition::new(), 0)
        .await
        .expect("gc");
    assert_eq!(stats.index_entries, 2, "the second write only");
    assert_eq!(
        store.inner.index.len(),
        3,
        "`legacy`, `kept` and `after` are left in memory"
    );
    drop(store);
    let store = store_in(&dir);
    assert_eq!(
        store.inner.index.len(),
        4,
        "`old` is back from the first write"
    );
    assert_eq!(
        live(store.lookup_events(&asked).await.expect("lookup")),
        ["kept", "legacy"]
    );
}

/// A file written by layout 1 (one `event_index` row per id, one speed row
/// per entry) opens as layout 2 with the same answers.
#[tokio::test]
async fn a_layout_1_file_is_converted_when_opened() {
    use redb::{TableDefinition, TableHandle};
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("v1.redb");
    {
        let db = redb::Database::create(&path).expect("create");
        let txn = db.begin_write().expect("write");
        {
            let mut speed = txn.open_table(SPEED).expect("speed");
            for o in 0..3u64 {
                let key = keys::speed_key("u", 0, o).expect("key");
                let value = codec::encode(&at("u", 0, o).entry).expect("encode");
                speed
                    .insert(key.as_slice(), value.as_slice())
                    .expect("insert");
            }
            let legacy: TableDefinition<&str, &[u8]> = TableDefinition::new("event_index");
            let mut index = txn.open_table(legacy).expect("event_index");
            for id in ["p0-0", "p0-1", "p0-2"] {
                let value = codec::encode_index(&counted("u", None)).expect("encode");
                index.insert(id, value.as_slice()).expect("insert");
            }
            let expiry: TableDefinition<&[u8], ()> = TableDefinition::new("index_expiry");
            txn.open_table(expiry).expect("index_expiry");
            txn.open_table(BATCH).expect("batch");
            let mut meta = txn.open_table(tables::META).expect("meta");
            meta.insert(tables::LAYOUT_KEY, [1u8].as_slice())
                .expect("layout");
        }
        txn.commit().expect("commit");
    }
    let store = EmbeddedStore::open(&path).expect("opens a layout 1 file");
    let found = store
        .lookup_events(&["p0-0".into(), "p0-2".into(), "p0-3".into()])
        .await
        .expect("lookup");
    assert_eq!(found.len(), 2);
    assert_eq!(found["p0-2"], counted("u", None));
    let history = store.user_history("u").await.expect("history");
    assert_eq!(history.speed.len(), 3);
    {
        let txn = store.inner.db.begin_read().expect("read");
        let meta = txn.open_table(tables::META).expect("meta");
        let layout = meta.get(tables::LAYOUT_KEY).expect("get").expect("set");
        assert_eq!(layout.value(), [tables::LAYOUT]);
        let tables: Vec<String> = txn
            .list_tables()
            .expect("tables")
            .map(|t| t.name().to_owned())
            .collect();
        assert!(!tables.contains(&"event_index".to_owned()), "{tables:?}");
    }
    // New writes append after the converted ones.
    let mut w = write(vec![at("u", 0, 3)], &[(0, 4)]);
    w.index = vec![("p0-3".into(), counted("u", None))];
    store.apply_speed(w.into()).await.expect("apply");
    let found = store
        .lookup_events(&["p0-0".into(), "p0-3".into()])
        .await
        .expect("lookup");
    assert_eq!(found.len(), 2);
}
