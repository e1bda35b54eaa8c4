//! The CQL schema (`infra/cql/schema.cql`) and the statements prepared on it.

use ::scylla::client::session::Session;
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::statement::{Consistency, SerialConsistency};

use super::driver;
use crate::StoreError;

/// `infra/cql/schema.cql`, with `{keyspace}` and `{replication_factor}` placeholders.
pub const SCHEMA: &str = include_str!("../../../../infra/cql/schema.cql");

/// The tables [`SCHEMA`] creates; the store is usable once all exist.
pub const TABLES: [&str; 9] = [
    "speed_entries",
    "event_index_buckets",
    "speed_progress",
    "speed_changes",
    "batch_records",
    "batch_record_pieces",
    "batch_users",
    "batch_manifests",
    "batch_pointer",
];

/// The statements of [`SCHEMA`] for `keyspace`: comments dropped,
/// placeholders substituted, split on `;`, empty ones left out.
pub fn migration(keyspace: &str, replication_factor: u32) -> Vec<String> {
    let text: String = SCHEMA
        .lines()
        .map(|line| line.split_once("--").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    text.replace("{keyspace}", keyspace)
        .replace("{replication_factor}", &replication_factor.to_string())
        .split(';')
        .map(|s| {
            s.lines()
                .map(str::trim_end)
                .filter(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Rows of the first page of a user's speed entries.
pub const HEAD_ROWS: i32 = 64;

/// Declares [`Statements`]: one field per statement, `{ks}` standing for the keyspace.
macro_rules! statements {
    ($($(#[doc = $doc:literal])* $name:ident = $cql:literal;)*) => {
        /// Every statement the store runs, prepared once.
        pub struct Statements {
            $($(#[doc = $doc])* pub $name: PreparedStatement,)*
        }

        impl Statements {
            /// Prepares every statement on `keyspace` (all at once).
            pub async fn prepare(session: &Session, keyspace: &str) -> Result<Statements, StoreError> {
                let ($($name,)*) = futures::try_join!(
                    $(prepare(session, $cql.replace("{ks}", keyspace)),)*
                )?;
                let mut statements = Statements { $($name,)* };
                statements.tune();
                Ok(statements)
            }

            /// Every statement, for settings they all share.
            fn all_mut(&mut self) -> Vec<&mut PreparedStatement> {
                vec![$(&mut self.$name,)*]
            }
        }
    };
}

statements! {
    /// A run of speed entries, keyed by the log position of its last entry.
    insert_entry = "INSERT INTO {ks}.speed_entries (user_id, log_partition, log_offset, entry) VALUES (?, ?, ?, ?)";
    /// A speed entry at its log position, with an explicit write timestamp (erasure's marker).
    insert_entry_at = "INSERT INTO {ks}.speed_entries (user_id, log_partition, log_offset, entry) VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
    /// All of a user's speed entries (erasure), as of an explicit write timestamp.
    delete_user_entries = "DELETE FROM {ks}.speed_entries USING TIMESTAMP ? WHERE user_id = ?";
    /// A user's speed rows in log order, with their write times, in small
    /// pages: the first page is all of a light user, and says whether a
    /// read should seek past what it holds instead.
    select_entries_head = "SELECT log_partition, log_offset, entry, WRITETIME(entry) FROM {ks}.speed_entries WHERE user_id = ?";
    /// The key of a user's first speed row at or after a position.
    select_next_entry = "SELECT log_partition, log_offset FROM {ks}.speed_entries WHERE user_id = ? AND (log_partition, log_offset) >= (?, ?) LIMIT 1";
    /// A user's speed rows of one log partition whose keys are at or past an offset.
    select_entries_from = "SELECT log_partition, log_offset, entry, WRITETIME(entry) FROM {ks}.speed_entries WHERE user_id = ? AND log_partition = ? AND log_offset >= ?";
    /// A user's speed rows (garbage collection counts the entries it deletes).
    select_entry_runs = "SELECT log_partition, log_offset, entry FROM {ks}.speed_entries WHERE user_id = ?";
    /// Every user with speed entries (a token-range scan; garbage collection only).
    select_speed_users = "SELECT DISTINCT user_id FROM {ks}.speed_entries";
    /// One range tombstone: a user's entries of one log partition before an offset.
    delete_entries_before = "DELETE FROM {ks}.speed_entries WHERE user_id = ? AND log_partition = ? AND log_offset < ?";
    /// An event index entry, in its bucket.
    insert_index = "INSERT INTO {ks}.event_index_buckets (bucket, event_id, entry) VALUES (?, ?, ?) USING TTL ?";
    /// The entries of some ids of one bucket.
    select_index = "SELECT event_id, entry FROM {ks}.event_index_buckets WHERE bucket = ? AND event_id IN ?";
    /// A partition's progress, as a max-register: the write timestamp is the next offset.
    insert_progress = "INSERT INTO {ks}.speed_progress (log_partition, next_offset, last_accepted_at) VALUES (?, ?, ?) USING TIMESTAMP ?";
    /// Every partition's progress.
    select_progress = "SELECT log_partition, next_offset, last_accepted_at FROM {ks}.speed_progress";
    /// The users one speed write touched on one log partition.
    insert_change = "INSERT INTO {ks}.speed_changes (log_partition, next_offset, write_id, users) VALUES (?, ?, ?, ?)";
    /// The writes on one log partition that end past a follower's cursor.
    select_changes = "SELECT next_offset, users FROM {ks}.speed_changes WHERE log_partition = ? AND next_offset > ?";
    /// A user's record of a version.
    insert_record = "INSERT INTO {ks}.batch_records (version, user_id, record) VALUES (?, ?, ?)";
    /// A user's record of a version.
    select_record = "SELECT record FROM {ks}.batch_records WHERE version = ? AND user_id = ?";
    /// A user's record of a version.
    delete_record = "DELETE FROM {ks}.batch_records WHERE version = ? AND user_id = ?";
    /// A piece of a record too large for one cell.
    insert_piece = "INSERT INTO {ks}.batch_record_pieces (version, user_id, piece, bytes) VALUES (?, ?, ?, ?)";
    /// One piece of a record.
    select_piece = "SELECT bytes FROM {ks}.batch_record_pieces WHERE version = ? AND user_id = ? AND piece = ?";
    /// A record's pieces in order, a few to a page.
    select_pieces = "SELECT piece, bytes FROM {ks}.batch_record_pieces WHERE version = ? AND user_id = ?";
    /// A record's pieces.
    delete_pieces = "DELETE FROM {ks}.batch_record_pieces WHERE version = ? AND user_id = ?";
    /// A user in a version's listing.
    insert_listing = "INSERT INTO {ks}.batch_users (version, bucket, user_id) VALUES (?, ?, ?)";
    /// The users of one bucket of a version's listing.
    select_listing = "SELECT user_id FROM {ks}.batch_users WHERE version = ? AND bucket = ?";
    /// One bucket of a version's listing.
    delete_listing = "DELETE FROM {ks}.batch_users WHERE version = ? AND bucket = ?";
    /// Registers a version whose records are being written.
    register_version = "INSERT INTO {ks}.batch_manifests (version) VALUES (?)";
    /// Records the manifest a version is published with.
    set_version_manifest = "UPDATE {ks}.batch_manifests SET manifest = ? WHERE version = ?";
    /// Every registered version.
    select_versions = "SELECT version FROM {ks}.batch_manifests";
    /// A version's row, dropped last when the version is collected.
    delete_version = "DELETE FROM {ks}.batch_manifests WHERE version = ?";
    /// The published version and manifest.
    select_pointer = "SELECT version, manifest FROM {ks}.batch_pointer WHERE name = 'published'";
    /// The same, as a Paxos (SERIAL) read, for publishing.
    select_pointer_serial = "SELECT version, manifest FROM {ks}.batch_pointer WHERE name = 'published'";
    /// The first publication.
    create_pointer = "INSERT INTO {ks}.batch_pointer (name, version, manifest) VALUES ('published', ?, ?) IF NOT EXISTS";
    /// The checkpoint of an unpublished batch run.
    select_checkpoint = "SELECT manifest FROM {ks}.batch_pointer WHERE name = 'checkpoint'";
    /// Records the checkpoint of the batch run in progress.
    upsert_checkpoint = "INSERT INTO {ks}.batch_pointer (name, version, manifest) VALUES ('checkpoint', ?, ?)";
    /// Clears the checkpoint once its run published.
    delete_checkpoint = "DELETE FROM {ks}.batch_pointer WHERE name = 'checkpoint'";
    /// The checkpoint, as a Paxos (SERIAL) read, for claiming it.
    select_checkpoint_serial = "SELECT version, manifest FROM {ks}.batch_pointer WHERE name = 'checkpoint'";
    /// The first claim of a checkpoint.
    create_checkpoint = "INSERT INTO {ks}.batch_pointer (name, version, manifest) VALUES ('checkpoint', ?, ?) IF NOT EXISTS";
    /// A claim replacing the checkpoint of an older version.
    replace_checkpoint = "UPDATE {ks}.batch_pointer SET version = ?, manifest = ? WHERE name = 'checkpoint' IF version = ?";
    /// A row of the pointer table by name (a share of a partitioned run).
    upsert_pointer_row = "INSERT INTO {ks}.batch_pointer (name, version, manifest) VALUES (?, ?, ?)";
    /// Every row of the (tiny) pointer table.
    select_pointer_rows = "SELECT name, manifest FROM {ks}.batch_pointer";
    /// A row of the pointer table by name.
    delete_pointer_row = "DELETE FROM {ks}.batch_pointer WHERE name = ?";
    /// Every later publication: compare-and-set on the version read before.
    advance_pointer = "UPDATE {ks}.batch_pointer SET version = ?, manifest = ? WHERE name = 'published' IF version = ?";
}

impl Statements {
    /// Statement settings: all idempotent (every write rewrites the same
    /// row with the same value), Paxos where it is used, page sizes.
    fn tune(&mut self) {
        // Conditional writes too: a retry that finds its own write already
        // applied is recognised by `publish`, which reads the pointer again.
        for statement in self.all_mut() {
            statement.set_is_idempotent(true);
        }
        self.select_pointer_serial
            .set_consistency(Consistency::Serial);
        self.create_pointer
            .set_serial_consistency(Some(SerialConsistency::Serial));
        self.advance_pointer
            .set_serial_consistency(Some(SerialConsistency::Serial));
        self.select_checkpoint_serial
            .set_consistency(Consistency::Serial);
        self.create_checkpoint
            .set_serial_consistency(Some(SerialConsistency::Serial));
        self.replace_checkpoint
            .set_serial_consistency(Some(SerialConsistency::Serial));
        self.select_speed_users.set_page_size(1000);
        self.select_entries_head.set_page_size(HEAD_ROWS);
        self.select_listing.set_page_size(1000);
        // Pieces are a MiB each: pages of a few MiB, far below a frame.
        self.select_pieces.set_page_size(4);
    }
}

/// Prepares one statement.
async fn prepare(session: &Session, cql: String) -> Result<PreparedStatement, StoreError> {
    session
        .prepare(cql.as_str())
        .await
        .map_err(driver(format_args!("prepare `{cql}`")))
}
