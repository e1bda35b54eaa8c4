//! Serving without a store read per request: following the speed writes.
//!
//! On CQL every read asked the store for the user's speed entries past the
//! kept tail, one round trip and one partition read, though most users
//! have none: at a few thousand reads a second that read was most of the
//! cluster's work (docs/BENCHMARKS.md, session 16). The speed layer now
//! records, per log partition and write, the users it touched
//! (`speed_changes`, written after the write's entries and before its
//! progress). [`FollowedStore`] reads that feed every `every`, one request
//! per log partition whatever the traffic, and answers "nothing new" for
//! users no write touched since their tail was read ([`UserChanges`]).
//!
//! Why it is exact, not merely fresh enough:
//!
//! * **Progress first, then the feed.** A poll reads the progress, then
//!   every feed row past its cursors, and only then offers that progress
//!   as what is durable: every write below it has had its row applied. So
//!   a kept tail claimed complete up to that progress is complete.
//! * **Tokens.** A read takes the changes' token before it reads the
//!   store; a later read may skip the store only if no row applied after
//!   that token named the user. Rows of writes the last poll has not seen
//!   are a poll away: such a write is then served like an entry still
//!   landing was before, on the next poll.
//! * **Nothing older than a poll that failed.** While polls fail, or the
//!   last success is older than [`stale_after`], every read goes to the
//!   store and the progress offered is the store's own. The first poll to
//!   succeed after that voids every token given out before it
//!   ([`UserChanges::forget`]): the store's progress taken meanwhile may be
//!   past rows it has not seen, and after a failure it starts over from
//!   the progress it reads, skipping rows that may have named anyone. A
//!   poll that outlasts [`stale_after`] counts as failed.
//! * **Rows the writers cannot take back.** A write's rows land after its
//!   entries and before its index rows (a replay takes indexed events as
//!   written and would name no one for them), each attempt under an id of
//!   its own (a replay never overwrites a row not read yet), and an
//!   erasure names its user at its deletion marker's offset.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use signals_core::{LogPosition, Offset, Partition};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::changes::UserChanges;
use crate::forward::forward_to;
use crate::{HistorySince, ServingStore, SpeedProgress, StoreError, StoreReads, TailMark};

/// The feed a [`FollowedStore`] follows: the speed layer's progress, and
/// the users each write touched.
#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    async fn speed_progress(&self) -> Result<SpeedProgress, StoreError>;

    /// The writes on log `partition` that end past `after`, in log order:
    /// each one's end and the [`user_hash`](crate::changes::user_hash)es of
    /// the users it wrote entries for there.
    async fn speed_changes(
        &self,
        partition: Partition,
        after: Offset,
    ) -> Result<Vec<(Offset, Vec<u64>)>, StoreError>;
}

/// A follower whose last good poll is older than this says nothing.
pub fn stale_after(every: Duration) -> Duration {
    (every * 10).max(Duration::from_secs(1))
}

/// A serving store that skips the speed read of users no write touched.
pub struct FollowedStore {
    inner: Arc<dyn ServingStore>,
    following: Arc<Following>,
    /// Started on the first read: a process that opens the store and
    /// serves nothing (the speed layer, a batch command) never polls.
    follower: std::sync::Once,
    feed: Arc<dyn ChangeFeed>,
    every: Duration,
    /// Brings the follower back to `every`: the log was seen ahead
    /// of the progress it followed. Not in [`Following`], which the
    /// follower must not keep alive while it waits.
    behind_the_log: Arc<Notify>,
    /// The last log end that woke the follower: the same end seen again
    /// wakes it no more. A speed layer that is down leaves the log ahead
    /// for as long as it is down; polling at the fast pace meanwhile would
    /// only load the store.
    woken_at: Mutex<Option<LogPosition>>,
}

struct Following {
    changes: UserChanges,
    /// The progress of the last good poll, and when that poll ended.
    reading: Mutex<Option<(Instant, SpeedProgress)>>,
    stale_after: Duration,
}

impl Following {
    /// Whether `reading` is of a good poll no older than `stale_after`.
    fn is_fresh(&self, reading: &Option<(Instant, SpeedProgress)>) -> bool {
        reading
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < self.stale_after)
    }

    /// The progress every applied row covers, while polls succeed.
    fn fresh(&self) -> Option<SpeedProgress> {
        let reading = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        self.is_fresh(&reading)
            .then(|| reading.as_ref().map(|(_, progress)| progress.clone()))
            .flatten()
    }

    /// A read's token while polls succeed (no copy of the progress: every
    /// read takes one).
    fn token(&self) -> Option<u64> {
        let reading = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        self.is_fresh(&reading).then(|| self.changes.token())
    }

    /// Whether the log's `end` is past the last good poll's progress on
    /// some partition (a write is on its way, or landed unseen).
    fn behind(&self, end: &LogPosition) -> bool {
        let reading = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        reading
            .as_ref()
            .is_some_and(|(_, progress)| !progress.position.reaches(end))
    }
}

impl FollowedStore {
    /// Serves through `inner`, following `feed` every `every` from a task
    /// of its own (started by the first read, on its runtime), which ends
    /// when the store is dropped.
    pub fn new(
        inner: Arc<dyn ServingStore>,
        feed: Arc<dyn ChangeFeed>,
        every: Duration,
    ) -> FollowedStore {
        FollowedStore {
            inner,
            following: Arc::new(Following {
                changes: UserChanges::default(),
                reading: Mutex::new(None),
                stale_after: stale_after(every),
            }),
            follower: std::sync::Once::new(),
            feed,
            every,
            behind_the_log: Arc::default(),
            woken_at: Mutex::default(),
        }
    }

    /// The progress of the last good poll, while it is fresh.
    #[cfg(test)]
    pub(crate) fn followed(&self) -> Option<LogPosition> {
        self.following.fresh().map(|p| p.position)
    }

    fn start_following(&self) {
        self.follower.call_once(|| {
            tokio::spawn(follow(
                self.feed.clone(),
                Arc::downgrade(&self.following),
                self.every,
                self.behind_the_log.clone(),
            ));
        });
    }
}

/// The slowest a follower polls while nothing moves: well inside
/// [`stale_after`], so a quiet follower stays fresh.
pub fn quiet_every(every: Duration) -> Duration {
    every.max(Duration::from_millis(250))
}

/// Polls `feed` while the store lives: every `every` while the speed layer
/// writes, slowing down to [`quiet_every`] while it does not. Each poll is a
/// request per log partition; on a quiet day those requests were most of
/// the database's work (docs/BENCHMARKS.md, session 17). A wake-up on
/// `behind_the_log` (an answer's reading found the log's end moved and
/// past the followed progress: a write is on its way) brings the pace back
/// to `every` at once, so the first write after a quiet spell is seen
/// about `every` after it lands while answers are asked for, and at most
/// `quiet_every` after it when none are.
async fn follow(
    feed: Arc<dyn ChangeFeed>,
    following: Weak<Following>,
    every: Duration,
    behind_the_log: Arc<Notify>,
) {
    let quiet = quiet_every(every);
    let mut wait = every;
    let mut polled = tokio::time::Instant::now();
    // `None`: start over from the next progress read.
    let mut cursors: Option<LogPosition> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(polled + wait) => {}
            () = behind_the_log.notified() => {
                metrics::counter!("signals_serving_follower_wake_ups_total").increment(1);
                wait = every;
                tokio::time::sleep_until(polled + every).await;
            }
        }
        let Some(following) = following.upgrade() else {
            return;
        };
        // A poll that outlasts staleness is a failure: its cursors could
        // outlive the rows' hour, and readers went to the store meanwhile.
        let outcome = tokio::time::timeout(
            following.stale_after,
            poll(&*feed, &following, &mut cursors),
        )
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "a poll of the speed changes took over {:?}",
                following.stale_after
            )))
        });
        polled = tokio::time::Instant::now();
        wait = match outcome {
            Ok(moved) => {
                if failing {
                    failing = false;
                    info!("following the speed writes again");
                }
                if moved {
                    every
                } else {
                    (wait * 2).min(quiet)
                }
            }
            Err(error) => {
                cursors = None;
                *following
                    .reading
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                if !failing {
                    failing = true;
                    warn!(%error, "cannot follow the speed writes; reads go to the store until it can");
                }
                every
            }
        };
    }
}

/// One poll: the progress, then every row past the cursors, applied.
/// Whether anything moved: the progress, or rows applied.
async fn poll(
    feed: &dyn ChangeFeed,
    following: &Following,
    cursors: &mut Option<LogPosition>,
) -> Result<bool, StoreError> {
    let progress = feed.speed_progress().await?;
    let from = cursors.get_or_insert_with(|| progress.position.clone());
    // A partition the progress names for the first time since the start
    // is read from its beginning: its first write's row is below it.
    let reads = progress.position.iter().map(|(partition, _)| {
        let after = from.next(partition);
        async move {
            feed.speed_changes(partition, after)
                .await
                .map(|rows| (partition, rows))
        }
    });
    let mut hashes = Vec::new();
    for (partition, rows) in futures::future::try_join_all(reads).await? {
        for (next, users) in rows {
            from.advance(partition, next);
            hashes.extend(users);
        }
    }
    let mut reading = following
        .reading
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let moved = !hashes.is_empty()
        || reading
            .as_ref()
            .is_none_or(|(_, last)| last.position != progress.position);
    // Not fresh until now (a start, a failure, a slow poll): readers took
    // the store's own progress meanwhile, which may be past rows this poll
    // did not see, and a restart skipped rows. Tokens of before say nothing.
    if !following.is_fresh(&reading) {
        following.changes.forget();
    }
    if !hashes.is_empty() {
        let write = following.changes.writing_hashes(hashes);
        following.changes.committed(write);
    }
    *reading = Some((Instant::now(), progress));
    Ok(moved)
}

#[async_trait]
impl StoreReads for FollowedStore {
    forward_to!(inner: lookup_events, published, batch_record, speed_entries, check);

    /// The last poll's progress while polls succeed (every write below it
    /// has had its row applied), else the store's.
    async fn speed_progress(&self) -> Result<SpeedProgress, StoreError> {
        match self.following.fresh() {
            Some(progress) => Ok(progress),
            None => self.inner.speed_progress().await,
        }
    }
}

#[async_trait]
impl ServingStore for FollowedStore {
    forward_to!(inner: serving_manifest, degraded);

    async fn user_history_since(
        &self,
        user_id: &str,
        mark: Option<&TailMark>,
    ) -> Result<HistorySince, StoreError> {
        self.start_following();
        // Taken before anything is read: every row applied up to it is of
        // a write the read below sees.
        let token = self.following.token();
        let unchanged = token.is_some()
            && mark
                .and_then(|m| m.change_token)
                .is_some_and(|seen| self.following.changes.unchanged_since(user_id, seen));
        // The mark's token is this layer's, not the inner store's.
        let mark = mark.map(|m| TailMark {
            change_token: None,
            ..m.clone()
        });
        let mut history = match &mark {
            Some(mark) if unchanged => {
                metrics::counter!("signals_serving_speed_reads_total", "outcome" => "skipped")
                    .increment(1);
                self.inner.user_history_unchanged(user_id, mark).await?
            }
            _ => {
                metrics::counter!("signals_serving_speed_reads_total", "outcome" => "read")
                    .increment(1);
                self.inner
                    .user_history_since(user_id, mark.as_ref())
                    .await?
            }
        };
        history.change_token = token;
        Ok(history)
    }

    /// Other serving processes drop an erased user's kept tail when their
    /// follower applies the erasure's change row, up to a quiet poll after
    /// it was written. Waiting `2 × stale_after` bounds that for every
    /// follower polling as this one does: one still fresh at the end has
    /// finished a poll within the last `stale_after`, and a poll lasts
    /// less than that (a longer one counts as failed), so that poll began
    /// after the row was written; one not fresh reads the store, which
    /// holds the erasure.
    async fn evict_user(&self, user_id: &str) -> Result<(), StoreError> {
        self.inner.evict_user(user_id).await?;
        tokio::time::sleep(self.following.stale_after * 2).await;
        Ok(())
    }

    fn log_end_seen(&self, end: &LogPosition) {
        if !self.following.behind(end) {
            return;
        }
        let mut woken_at = self.woken_at.lock().unwrap_or_else(PoisonError::into_inner);
        if woken_at.as_ref() != Some(end) {
            *woken_at = Some(end.clone());
            self.behind_the_log.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::user_hash;
    use crate::contract::{at, served_ids, write};
    use crate::embedded::EmbeddedStore;
    use crate::{PositionedEntry, SpeedStore, TailCache};

    /// A feed told by the test what the speed layer wrote, or failing, or
    /// hanging.
    #[derive(Default)]
    struct ScriptedFeed {
        script: Mutex<Script>,
        /// Progress reads so far: one per poll.
        polls: std::sync::atomic::AtomicUsize,
    }

    #[derive(Default)]
    struct Script {
        progress: LogPosition,
        /// Each write's end and the users it touched.
        rows: Vec<(Offset, Vec<u64>)>,
        failing: bool,
        /// Reads of the rows never answer.
        hanging: bool,
    }

    impl ScriptedFeed {
        /// A write on log partition 0 ending at `next` that touched `users`.
        fn wrote(&self, next: Offset, users: &[&str]) {
            let mut script = self.script.lock().expect("lock");
            script.progress.advance(0, next);
            script
                .rows
                .push((next, users.iter().map(|u| user_hash(u)).collect()));
        }

        /// Progress moves to `next` with no row (one the follower missed).
        fn moved_without_a_row(&self, next: Offset) {
            self.script.lock().expect("lock").progress.advance(0, next);
        }

        fn fail(&self, failing: bool) {
            self.script.lock().expect("lock").failing = failing;
        }

        fn hang(&self, hanging: bool) {
            self.script.lock().expect("lock").hanging = hanging;
        }
    }

    #[async_trait]
    impl ChangeFeed for ScriptedFeed {
        async fn speed_progress(&self) -> Result<SpeedProgress, StoreError> {
            self.polls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let script = self.script.lock().expect("lock");
            if script.failing {
                return Err(StoreError::Unavailable("scripted outage".into()));
            }
            Ok(SpeedProgress {
                position: script.progress.clone(),
                last_accepted_at: None,
            })
        }

        async fn speed_changes(
            &self,
            partition: Partition,
            after: Offset,
        ) -> Result<Vec<(Offset, Vec<u64>)>, StoreError> {
            let hanging = self.script.lock().expect("lock").hanging;
            if hanging {
                std::future::pending::<()>().await;
            }
            let script = self.script.lock().expect("lock");
            if script.failing {
                return Err(StoreError::Unavailable("scripted outage".into()));
            }
            Ok(script
                .rows
                .iter()
                .filter(|(next, _)| partition == 0 && *next > after)
                .cloned()
                .collect())
        }
    }

    /// How often the tests' followers poll while the feed moves.
    const EVERY: Duration = Duration::from_millis(5);

    /// An embedded store (written behind the feed's back, so that what a
    /// read returns tells whether it read the store), a scripted feed, the
    /// follower of both and a tail cache serving through it.
    struct Setup {
        /// Holds the store's file for as long as the test runs.
        _dir: tempfile::TempDir,
        store: Arc<EmbeddedStore>,
        feed: Arc<ScriptedFeed>,
        followed: Arc<FollowedStore>,
        serving: TailCache,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).expect("opens"));
        let feed = Arc::new(ScriptedFeed::default());
        let followed = Arc::new(FollowedStore::new(store.clone(), feed.clone(), EVERY));
        let serving = TailCache::new(followed.clone(), 1 << 20, Duration::ZERO);
        Setup {
            _dir: dir,
            store,
            feed,
            followed,
            serving,
        }
    }

    impl Setup {
        /// Entries made durable in the store, the feed told nothing.
        async fn stored(&self, entries: Vec<PositionedEntry>, next: Offset) {
            self.store
                .apply_speed(write(entries, &[(0, next)]).into())
                .await
                .expect("apply");
        }

        /// The ids of `user`'s served history.
        async fn ids(&self, user: &str) -> Vec<String> {
            served_ids(self.serving.served_history(user).await.expect("read"))
        }
    }

    /// Until the follower has polled the feed up to `next`.
    async fn followed_to(followed: &FollowedStore, next: Offset) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while followed.followed().is_none_or(|p| p.next(0) < next) {
            assert!(
                Instant::now() < deadline,
                "the follower never reached {next}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The store itself is written behind the feed's back, so what a read
    /// returns tells whether it read the store (it sees those entries) or
    /// believed the feed (it does not).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn users_no_followed_write_touched_are_answered_from_their_kept_tails() {
        let s = setup();

        s.stored(vec![at("u", 0, 0), at("v", 0, 1)], 2).await;
        s.feed.wrote(2, &["u", "v"]);
        assert_eq!(s.ids("u").await, ["p0-0"]);
        followed_to(&s.followed, 2).await;
        assert_eq!(s.ids("u").await, ["p0-0"]);
        assert_eq!(s.ids("v").await, ["p0-1"]);

        // Written, not yet followed: the kept tail answers.
        s.stored(vec![at("u", 0, 2)], 3).await;
        assert_eq!(s.ids("u").await, ["p0-0"], "read without asking the store");
        // Followed: read again, and only the user it touched.
        s.feed.wrote(3, &["u"]);
        followed_to(&s.followed, 3).await;
        assert_eq!(s.ids("u").await, ["p0-0", "p0-2"]);
        s.stored(vec![at("v", 0, 3)], 4).await;
        assert_eq!(
            s.ids("v").await,
            ["p0-1"],
            "v is still answered from its tail"
        );
        s.feed.wrote(4, &["v"]);
        followed_to(&s.followed, 4).await;
        assert_eq!(s.ids("v").await, ["p0-1", "p0-3"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_that_stops_hearing_the_feed_reads_the_store_and_starts_over() {
        let s = setup();
        s.stored(vec![at("u", 0, 0), at("w", 0, 1)], 2).await;
        s.feed.wrote(2, &["u", "w"]);
        s.ids("u").await;
        followed_to(&s.followed, 2).await;
        // Kept with tokens of the follower.
        assert_eq!(s.ids("u").await, ["p0-0"]);
        assert_eq!(s.ids("w").await, ["p0-1"]);

        // The feed fails: once the last good poll is stale, reads go to
        // the store (and see what the feed cannot tell).
        s.feed.fail(true);
        s.stored(vec![at("w", 0, 2)], 3).await;
        tokio::time::sleep(stale_after(EVERY) + Duration::from_millis(50)).await;
        assert_eq!(s.ids("w").await, ["p0-1", "p0-2"]);

        // A write whose row the follower never sees (expired while it was
        // away): after the outage it starts from the progress, and u's
        // token of before the outage means nothing.
        s.stored(vec![at("u", 0, 3)], 4).await;
        s.feed.moved_without_a_row(4);
        s.feed.fail(false);
        followed_to(&s.followed, 4).await;
        assert_eq!(
            s.ids("u").await,
            ["p0-0", "p0-3"],
            "a token from before the outage is void"
        );
    }

    /// A poll that never answers (a hung node) counts as failed once it
    /// outlasts `stale_after`: reads go to the store meanwhile, and once
    /// the feed answers again the follower starts over from its progress.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poll_that_hangs_is_given_up_and_following_starts_over() {
        let s = setup();
        s.stored(vec![at("u", 0, 0)], 1).await;
        s.feed.wrote(1, &["u"]);
        s.ids("u").await;
        followed_to(&s.followed, 1).await;
        assert_eq!(s.ids("u").await, ["p0-0"]);

        s.feed.hang(true);
        s.stored(vec![at("u", 0, 1)], 2).await;
        tokio::time::sleep(stale_after(EVERY) + Duration::from_millis(50)).await;
        assert_eq!(s.followed.followed(), None, "a hung poll is not fresh");
        assert_eq!(
            s.ids("u").await,
            ["p0-0", "p0-1"],
            "read from the store while the feed hangs"
        );

        // The row of this write is never seen: the follower must start
        // from the progress it reads after the hang, with u's token void.
        s.stored(vec![at("u", 0, 2)], 3).await;
        s.feed.moved_without_a_row(3);
        s.feed.hang(false);
        followed_to(&s.followed, 3).await;
        assert_eq!(
            s.ids("u").await,
            ["p0-0", "p0-1", "p0-2"],
            "a token from before the hang is void"
        );
    }

    /// While nothing moves the follower slows down to `quiet_every` (a
    /// poll is a request per log partition), stays fresh, and still sees
    /// the next write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quiet_follower_polls_seldom_and_still_sees_the_next_write() {
        use std::sync::atomic::Ordering;
        let s = setup();
        s.stored(vec![at("u", 0, 0)], 1).await;
        s.feed.wrote(1, &["u"]);
        s.ids("u").await;
        followed_to(&s.followed, 1).await;

        // Quiet: about 4 polls a second at the default of 250 ms, where
        // polling every 5 ms would make about 200.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = s.feed.polls.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let quiet_polls = s.feed.polls.load(Ordering::Relaxed) - before;
        assert!(quiet_polls <= 12, "{quiet_polls} polls in a quiet second");
        assert!(s.followed.followed().is_some(), "a quiet follower is fresh");
        assert_eq!(s.ids("u").await, ["p0-0"]);

        s.stored(vec![at("u", 0, 1)], 2).await;
        s.feed.wrote(2, &["u"]);
        followed_to(&s.followed, 2).await;
        assert_eq!(s.ids("u").await, ["p0-0", "p0-1"]);
    }

    /// A quiet follower told that the log's end is past its progress (a
    /// write is on its way) polls at its fast pace at once, not at its
    /// next quiet poll; told of an end it has reached, or of the same end
    /// again while the speed layer is away, it stays quiet. Paused time:
    /// the paces are asserted exactly.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_follower_is_woken_by_the_log_ahead_of_it() {
        use std::sync::atomic::Ordering;
        let polls = |s: &Setup| s.feed.polls.load(Ordering::Relaxed);
        let s = setup();
        s.feed.wrote(1, &["u"]);
        s.followed.start_following();
        followed_to(&s.followed, 1).await;

        // Quiet long enough to poll every `quiet_every`; then just after a
        // poll, so that the next quiet one is 250 ms away.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = polls(&s);
        while polls(&s) == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        s.feed.wrote(2, &["u"]);
        let end: LogPosition = [(0, 2)].into_iter().collect();
        s.followed.log_end_seen(&end);
        tokio::time::sleep(EVERY * 3).await;
        assert_eq!(
            s.followed.followed().map(|p| p.next(0)),
            Some(2),
            "seen at the fast pace, not at the next quiet poll"
        );

        // Reached: answers that keep seeing that end wake nothing.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = polls(&s);
        for _ in 0..100 {
            s.followed.log_end_seen(&end);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let quiet_polls = polls(&s) - before;
        assert!(quiet_polls <= 5, "{quiet_polls} polls in a quiet second");

        // The speed layer is away: the log stays ahead at one end. One
        // wake-up, then the follower slows down again (5 + 10 + … ms).
        let ahead: LogPosition = [(0, 3)].into_iter().collect();
        let before = polls(&s);
        for _ in 0..100 {
            s.followed.log_end_seen(&ahead);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let polls_while_away = polls(&s) - before;
        assert!(
            polls_while_away <= 12,
            "{polls_while_away} polls in a second with the speed layer away"
        );
    }

    /// `evict_user` (the end of a deletion) returns only once another
    /// process's follower, quiet and polling every 250 ms, has applied the
    /// row that names the user: a read there right after it sees the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_eviction_returns_once_every_follower_has_seen_the_row() {
        // `s.serving` reads through another process's follower; this one
        // ends the deletion.
        let s = setup();
        let here = FollowedStore::new(s.store.clone(), s.feed.clone(), EVERY);
        s.stored(vec![at("u", 0, 0)], 1).await;
        s.feed.wrote(1, &["u"]);
        s.ids("u").await;
        followed_to(&s.followed, 1).await;
        assert_eq!(s.ids("u").await, ["p0-0"]);
        // Quiet long enough for the other follower to poll every 250 ms.
        tokio::time::sleep(Duration::from_secs(1)).await;

        // What the erasure does to the store and the feed, then its end.
        s.stored(vec![at("u", 0, 1)], 2).await;
        s.feed.wrote(2, &["u"]);
        here.evict_user("u").await.expect("evicted");
        assert_eq!(
            s.ids("u").await,
            ["p0-0", "p0-1"],
            "the other process still answered from before the row"
        );
    }
}
