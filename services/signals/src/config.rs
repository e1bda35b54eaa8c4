//! Configuration: built-in defaults, then a TOML file, then `SIGNALS_*`
//! environment variables. Unknown keys and bad values stop start-up with a
//! message naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use signals_core::{DedupWindow, Deduplication, Definitions, SegmentSpec, Segments, SignalSpec};

/// The defaults, shipped inside the binary.
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    /// How long `serve`, `speed`, `up` and `batch` wait at start-up for a
    /// backend that is unavailable (retrying with backoff) before giving up.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub speed: SpeedConfig,
    pub batch: BatchConfig,
    pub telemetry: TelemetryConfig,
    pub signals: Vec<SignalSpec>,
    /// Segments: named rules over signal values (`[[segments]]`).
    pub segments: Vec<SegmentSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub api_tokens: Vec<String>,
    pub admin_token: Option<String>,
    pub max_body_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Events in one `POST /v1/events`; more get 413.
    pub max_events_per_request: usize,
    /// User ids in one `POST /v1/signals/query`; more get 400.
    pub max_users_per_query: usize,
    /// Signal names in one request; more get 400.
    pub max_names_per_query: usize,
    /// Requests in handlers at once; more get 503.
    pub max_concurrent_requests: usize,
    /// Open connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// Longest wait for a request's head, also how long an idle
    /// keep-alive connection (or a TLS handshake) is kept.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest wait for a request's body once its head is in.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// PEM certificate chain: serve HTTPS (with `tls_key`).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub backend: LogBackend,
    /// How long after its counted occurrence's acceptance an event id stays
    /// reserved (copies within it never count): both layers' rule.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// How long the event index keeps an id beyond the window: how far the
    /// speed layer may fall behind the collector and still catch copies.
    #[serde(with = "humantime_serde")]
    pub index_grace: Duration,
    pub embedded: EmbeddedLogConfig,
    pub kafka: KafkaConfig,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum LogBackend {
    Embedded,
    Kafka,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    pub topic: String,
    pub dead_letter_topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// `forever` or a duration.
    pub retention: String,
    pub create_topics: bool,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consumer group of the speed layer.
    pub group: String,
    /// How long a dead group member keeps its partitions (Kafka allows 6s..30min by default).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// librdkafka `security.protocol`: plaintext, ssl, sasl_plaintext, sasl_ssl.
    #[serde(default)]
    pub security_protocol: Option<String>,
    /// `sasl.mechanism`: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password: Option<String>,
    /// `ssl.ca.location`: PEM certificates the brokers' must chain to.
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
    /// `ssl.certificate.location` and `ssl.key.location`: a client
    /// certificate for brokers that require one (mTLS).
    #[serde(default)]
    pub ssl_certificate_location: Option<PathBuf>,
    #[serde(default)]
    pub ssl_key_location: Option<PathBuf>,
    #[serde(default)]
    pub ssl_key_password: Option<String>,
    /// A Confluent-compatible schema registry (`http://host:port`); empty
    /// for none. See `signals_schemas::registry`.
    pub schema_registry_url: String,
    /// `min.insync.replicas` of the topics Signals creates.
    pub min_insync_replicas: i32,
    /// The collector's Kafka `transactional.id`; empty: `signals-collector-<host>-<listen address>`.
    pub transactional_id: String,
    /// Where `signals insights` produces the segment feed.
    pub segments_topic: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `redis://host:port` (`rediss://` for TLS); no cache when empty.
    pub redis_url: String,
    /// ACL user and password (replacing any in `redis_url`).
    #[serde(default)]
    pub redis_username: Option<String>,
    #[serde(default)]
    pub redis_password: Option<String>,
    /// PEM certificates trusted for `rediss://` instead of the system's.
    #[serde(default)]
    pub redis_tls_ca: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Decoded records kept in each process in front of Redis, in encoded
    /// bytes (0: every read asks Redis).
    pub local_bytes: usize,
    /// Users' speed tails each serving process keeps between reads (sorted
    /// and tiled, extended with what the speed layer wrote since), about
    /// this many bytes; 0: every read decodes and folds the whole tail.
    pub tail_bytes: usize,
    /// Users' latest signal values each serving process keeps, each until
    /// it can change (ADR 011), about this many bytes; 0: every read
    /// evaluates.
    pub answer_bytes: usize,
    /// Consecutive Redis failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker sends reads straight to the store.
    #[serde(with = "humantime_serde")]
    pub breaker_cool_down: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedLogConfig {
    pub partitions: u32,
    pub segment_bytes: u64,
    pub fsync: Fsync,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    Always,
    Never,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub scylla: ScyllaConfig,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    Embedded,
    Scylla,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Contact points, `host:port[,host:port...]`.
    pub nodes: String,
    pub keyspace: String,
    pub replication_factor: u32,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_in_flight: usize,
    /// Apply the schema (idempotent) at start-up; otherwise run `signals migrate`.
    pub migrate_on_start: bool,
    /// PasswordAuthenticator credentials (both or neither).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// TLS to the nodes, trusting this PEM file's certificates.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// How often serving reads which users the speed layer's writes touched
    /// (one read per log partition), to answer the others without a read
    /// of their speed entries; `0s`: every answer reads them.
    #[serde(with = "humantime_serde")]
    pub follow_every: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeedConfig {
    pub max_batch: usize,
    #[serde(with = "humantime_serde")]
    pub poll_wait: Duration,
    /// Where `signals speed` serves /metrics, /healthz and /readyz.
    pub listen: Listen,
}

/// An optional HTTP address: `off`, or `host:port` (port 0: any free one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(SocketAddr),
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "off" {
            return Ok(Listen::Off);
        }
        text.parse().map(Listen::At).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{text}` is not \"off\" or an address like \"127.0.0.1:9091\""
            ))
        })
    }
}

/// The least `batch.memory_bytes` accepted.
const MIN_BATCH_MEMORY: usize = 16 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub schedule: Schedule,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// The bot rule: a user's minute with more events than this is bot
    /// traffic and the batch drops it (0: off).
    pub bot_max_events_per_minute: u32,
    /// Users per store write and per run checkpoint.
    pub write_chunk: usize,
    /// Bytes of the log a run holds while reading; the rest is spilled to
    /// sorted runs under `data_dir`.
    pub memory_bytes: usize,
}

/// When `signals up` runs the batch by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Off,
    /// Daily at this many minutes past midnight UTC.
    DailyAt(u32),
    Every(Duration),
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Schedule::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        if text == "off" {
            return Ok(Schedule::Off);
        }
        if let Some((h, m)) = text.split_once(':') {
            let hour: u32 = h
                .parse()
                .map_err(|_| format!("`{text}`: hour is not a number"))?;
            let minute: u32 = m
                .parse()
                .map_err(|_| format!("`{text}`: minute is not a number"))?;
            if hour > 23 || minute > 59 {
                return Err(format!("`{text}` is not a time of day (00:00 to 23:59)"));
            }
            return Ok(Schedule::DailyAt(hour * 60 + minute));
        }
        match humantime::parse_duration(text) {
            Ok(d) if d >= Duration::from_secs(1) => Ok(Schedule::Every(d)),
            _ => Err(format!("`{text}` is not \"off\", a UTC time of day like \"02:00\", or a duration like \"15m\"")),
        }
    }

    /// How long from `now` until the next run.
    pub fn next_after(self, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
        match self {
            Schedule::Off => None,
            Schedule::Every(d) => Some(d),
            Schedule::DailyAt(minutes) => {
                let midnight = now.date_naive().and_hms_opt(0, 0, 0)?.and_utc();
                let mut next = midnight + chrono::Duration::minutes(i64::from(minutes));
                if next <= now {
                    next += chrono::Duration::days(1);
                }
                (next - now).to_std().ok()
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    pub log_level: String,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Loads the configuration: defaults, then `file`, then the environment.
pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
    let mut figment = Figment::from(Toml::string(DEFAULT_CONFIG));
    if let Some(file) = file {
        if !file.exists() {
            bail!("config file {} does not exist", file.display());
        }
        figment = figment.merge(Toml::file_exact(file));
    }
    // Not settings: SIGNALS_TEST_* point test suites at services,
    // SIGNALS_INFRA_* and SIGNALS_MAVEN_REPO steer infra/local, and
    // SIGNALS_CONFIG names the file (the --config flag).
    let env = Env::prefixed("SIGNALS_").split("__").filter(|key| {
        let key = key.as_str().to_ascii_lowercase();
        !(key.starts_with("test_")
            || key.starts_with("infra_")
            || key == "maven_repo"
            || key == "config")
    });
    figment = figment.merge(env);
    let config: Config = figment
        .extract()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    config.check()?;
    Ok(config)
}

impl Config {
    fn check(&self) -> anyhow::Result<()> {
        let loopback = self.server.listen.ip().is_loopback();
        if !loopback && self.server.api_tokens.is_empty() {
            bail!(
                "invalid configuration: server.listen = {} is not a loopback address, so server.api_tokens must list at least one token",
                self.server.listen
            );
        }
        if !loopback && self.server.admin_token.is_none() {
            bail!(
                "invalid configuration: server.listen = {} is not a loopback address, so server.admin_token must be set",
                self.server.listen
            );
        }
        if self
            .server
            .api_tokens
            .iter()
            .chain(self.server.admin_token.iter())
            .any(|t| t.len() < 16)
        {
            bail!("invalid configuration: server.api_tokens and server.admin_token must be at least 16 characters");
        }
        for (key, value) in [
            (
                "server.max_events_per_request",
                self.server.max_events_per_request,
            ),
            (
                "server.max_users_per_query",
                self.server.max_users_per_query,
            ),
            (
                "server.max_names_per_query",
                self.server.max_names_per_query,
            ),
            (
                "server.max_concurrent_requests",
                self.server.max_concurrent_requests,
            ),
            ("server.max_connections", self.server.max_connections),
        ] {
            if value == 0 {
                bail!("invalid configuration: {key} must be at least 1");
            }
        }
        if self.server.max_connections > u32::MAX as usize {
            bail!(
                "invalid configuration: server.max_connections must be at most {}",
                u32::MAX
            );
        }
        if self.server.header_read_timeout.is_zero() || self.server.body_timeout.is_zero() {
            bail!("invalid configuration: server.header_read_timeout and server.body_timeout must be more than 0s");
        }
        if let Some(protocol) = &self.log.kafka.security_protocol {
            if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&protocol.as_str()) {
                bail!("invalid configuration: log.kafka.security_protocol = `{protocol}` is not plaintext, ssl, sasl_plaintext or sasl_ssl");
            }
        }
        if let Some(mechanism) = &self.log.kafka.sasl_mechanism {
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism.as_str()) {
                bail!("invalid configuration: log.kafka.sasl_mechanism = `{mechanism}` is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512");
            }
        }
        if self.store.scylla.username.is_some() != self.store.scylla.password.is_some() {
            bail!("invalid configuration: store.scylla.username and store.scylla.password go together: set both or neither");
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            bail!("invalid configuration: server.tls_cert and server.tls_key go together: set both or neither");
        }
        if self.log.kafka.retention != "forever"
            && humantime::parse_duration(&self.log.kafka.retention).is_err()
        {
            bail!(
                "invalid configuration: log.kafka.retention = `{}` is not `forever` or a duration like 7d",
                self.log.kafka.retention
            );
        }
        let registry = &self.log.kafka.schema_registry_url;
        if !registry.is_empty() && !registry.starts_with("http://") {
            bail!("invalid configuration: log.kafka.schema_registry_url = `{registry}` must be an http:// URL (https is not built in; put a TLS-terminating proxy beside the registry)");
        }
        if self.log.kafka.partitions < 1 || self.log.kafka.replication_factor < 1 {
            bail!("invalid configuration: log.kafka.partitions and log.kafka.replication_factor must be at least 1");
        }
        if self.log.kafka.min_insync_replicas < 1
            || self.log.kafka.min_insync_replicas > self.log.kafka.replication_factor
        {
            bail!("invalid configuration: log.kafka.min_insync_replicas must be between 1 and log.kafka.replication_factor ({})", self.log.kafka.replication_factor);
        }
        if self.cache.breaker_failures == 0 {
            bail!("invalid configuration: cache.breaker_failures must be at least 1");
        }
        if self.log.embedded.partitions == 0 {
            bail!("invalid configuration: log.embedded.partitions must be at least 1");
        }
        if self.speed.max_batch == 0 {
            bail!("invalid configuration: speed.max_batch must be at least 1");
        }
        if self.log.dedup_window < Duration::from_secs(60) {
            bail!("invalid configuration: log.dedup_window must be at least 1m (copies a client resends must still be caught)");
        }
        if self.log.index_grace < Duration::from_secs(60) {
            bail!("invalid configuration: log.index_grace must be at least 1m");
        }
        if self.batch.retention < Duration::from_secs(3600) {
            bail!("invalid configuration: batch.retention must be at least 1h");
        }
        if self.batch.write_chunk == 0 {
            bail!("invalid configuration: batch.write_chunk must be at least 1");
        }
        if self.batch.memory_bytes < MIN_BATCH_MEMORY {
            bail!("invalid configuration: batch.memory_bytes must be at least {MIN_BATCH_MEMORY} (16 MiB): below it a run writes a spill file every few thousand events");
        }
        self.definitions()?;
        Ok(())
    }

    /// The signal definitions, checked.
    pub fn definitions(&self) -> anyhow::Result<Definitions> {
        Definitions::compile(&self.signals).context("invalid configuration in [[signals]]")
    }

    /// The segments, checked against `definitions`.
    pub fn segments(&self, definitions: &Definitions) -> anyhow::Result<Segments> {
        Segments::compile(&self.segments, definitions).context(
            "invalid configuration in [[segments]] (a [[signals]] list in your file replaces \
                 the default signals, which the default segments read: declare [[segments]] \
                 too, or `segments = []` for none)",
        )
    }

    /// The deduplication rules both layers apply.
    pub fn deduplication(&self) -> Deduplication {
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Deduplication {
            window: DedupWindow::new(millis(self.log.dedup_window)),
            grace: millis(self.log.index_grace),
        }
    }

    pub fn retention_millis(&self) -> i64 {
        i64::try_from(self.batch.retention.as_millis()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_text(text: &str) -> anyhow::Result<Config> {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("written");
        load(Some(file.path()))
    }

    #[test]
    fn the_shipped_defaults_load_with_the_contract_signals() {
        let config = load(None).expect("defaults are valid");
        let names: Vec<String> = config
            .definitions()
            .expect("valid")
            .iter()
            .map(|d| d.name.clone())
            .collect();
        assert_eq!(
            names,
            [
                "recent_views",
                "recent_searches",
                "wishlist",
                "views_1h",
                "views_24h",
                "views_7d",
                "clicks_24h",
                "searches_24h",
                "top_cities_7d",
                "last_active",
                "sessions_7d",
                "session_minutes_7d",
                "current_session"
            ]
        );
        let definitions = config.definitions().expect("valid");
        let segments = config.segments(&definitions).expect("valid segments");
        let names: Vec<&str> = segments.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["active_browser", "engaged", "searcher"]);
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.batch.schedule, Schedule::DailyAt(120));
        assert_eq!(
            config.speed.listen,
            Listen::At("127.0.0.1:9091".parse().expect("address"))
        );
    }

    #[test]
    fn the_speed_endpoint_is_an_address_or_off() {
        let config = load_text("[speed]\nlisten = \"off\"").expect("off");
        assert_eq!(config.speed.listen, Listen::Off);
        let config = load_text("[speed]\nlisten = \"0.0.0.0:0\"").expect("any port");
        assert_eq!(
            config.speed.listen,
            Listen::At("0.0.0.0:0".parse().expect("address"))
        );
        let err = load_text("[speed]\nlisten = \"on\"")
            .expect_err("neither")
            .to_string();
        assert!(
            err.contains("speed.listen") && err.contains("`on`"),
            "{err}"
        );
    }

    #[test]
    fn the_example_config_loads() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
        let config = load(Some(Path::new(example))).expect("example is valid");
        let definitions = config.definitions().expect("valid");
        config.segments(&definitions).expect("valid segments");
    }

    #[test]
    fn a_segment_over_an_unknown_signal_names_segment_and_signal() {
        let config =
            load_text("[[segments]]\nname = \"fans\"\nrule = \"likes_24h >= 3\"").expect("parses");
        let definitions = config.definitions().expect("valid");
        let err = format!("{:#}", config.segments(&definitions).expect_err("unknown"));
        assert_eq!(
            err,
            "invalid configuration in [[segments]] (a [[signals]] list in your file replaces \
             the default signals, which the default segments read: declare [[segments]] too, \
             or `segments = []` for none): segment `fans`: `rule` = `likes_24h >= 3`: `likes_24h` is not a defined signal"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = load_text("[server]\nlisten = \"nowhere\"")
            .expect_err("bad address")
            .to_string();
        assert!(err.contains("server.listen"), "{err}");
        let err = load_text("[speed]\nmax_batchh = 3")
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("max_batchh"), "{err}");
        let err = load_text("[batch]\nschedule = \"25:00\"")
            .expect_err("bad time")
            .to_string();
        assert!(
            err.contains("batch.schedule") && err.contains("25:00"),
            "{err}"
        );
        let err = load_text("[server]\nlisten = \"0.0.0.0:8080\"")
            .expect_err("no tokens")
            .to_string();
        assert!(err.contains("server.api_tokens"), "{err}");
        let err = load_text("[batch]\nmemory_bytes = 1000")
            .expect_err("too small")
            .to_string();
        assert!(
            err.contains("batch.memory_bytes must be at least 16777216"),
            "{err}"
        );
        let err =
            load_text("[[signals]]\nname = \"x\"\naggregation = \"avg\"").expect_err("bad signal");
        assert!(
            format!("{err:#}").contains("signal `x`: unknown aggregation `avg`"),
            "{err:#}"
        );
    }

    #[test]
    // figment's own test jail fixes the closure's error type.
    #[allow(clippy::result_large_err)]
    fn variables_that_are_not_settings_are_ignored() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SIGNALS_TEST_KAFKA_BROKERS", "127.0.0.1:1");
            jail.set_env("SIGNALS_INFRA_CACHE", "/tmp");
            jail.set_env("SIGNALS_MAVEN_REPO", "/tmp");
            jail.set_env("SIGNALS_SPEED__MAX_BATCH", "7");
            let config = load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.speed.max_batch, 7);
            Ok(())
        });
    }

    #[test]
    fn schedules_parse_and_step() {
        use chrono::TimeZone;
        assert_eq!(Schedule::parse("off"), Ok(Schedule::Off));
        assert_eq!(
            Schedule::parse("15m"),
            Ok(Schedule::Every(Duration::from_secs(900)))
        );
        let now = chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 3, 0, 0)
            .single()
            .expect("valid");
        assert_eq!(
            Schedule::DailyAt(120).next_after(now),
            Some(Duration::from_secs(23 * 3600))
        );
        assert_eq!(
            Schedule::DailyAt(240).next_after(now),
            Some(Duration::from_secs(3600))
        );
    }
}
