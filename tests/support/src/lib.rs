//! Where integration tests find the real services: Kafka, ScyllaDB (or
//! Cassandra, over CQL) and Redis. Every test that needs one asks here, so
//! the rule is the same everywhere:
//!
//! 1. `SIGNALS_TEST_KAFKA_BROKERS`, `SIGNALS_TEST_CQL_NODES`,
//!    `SIGNALS_TEST_REDIS_URL` set (e.g. by `eval "$(infra/local/up)"`): use
//!    them.
//! 2. Otherwise `SIGNALS_TEST_SKIP_SERVICES=1`: the caller gets `None` and
//!    skips, saying so on stderr.
//! 3. Otherwise, when a Docker daemon is reachable (`DOCKER_HOST`, or a
//!    Docker socket at its usual places) and the `containers` feature is on
//!    (the default): start the service in a container with testcontainers,
//!    once per test process, named `signals-test-<service>` and marked for
//!    reuse, so later test runs find it running instead of starting another.
//!    `docker rm -f signals-test-kafka signals-test-scylla signals-test-redis`
//!    removes them.
//! 4. Otherwise: panic with a message saying how to start the services.
//!
//! Tests must still keep to their own resources on shared services: a topic,
//! keyspace or key prefix of their own ([`unique_name`]).
//!
//! This crate depends on none of the workspace's crates, so any of them can
//! take it as a dev-dependency.

/// The services a test may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Kafka,
    Cql,
    Redis,
}

impl Service {
    /// The variable naming the service's endpoint.
    pub fn variable(self) -> &'static str {
        match self {
            Service::Kafka => "SIGNALS_TEST_KAFKA_BROKERS",
            Service::Cql => "SIGNALS_TEST_CQL_NODES",
            Service::Redis => "SIGNALS_TEST_REDIS_URL",
        }
    }

    /// The `infra/local/up` argument that starts it alone.
    fn infra_name(self) -> &'static str {
        match self {
            Service::Kafka => "kafka",
            Service::Cql => "cassandra",
            Service::Redis => "redis",
        }
    }
}

/// Kafka bootstrap servers, `host:port[,...]`; `None`: skip the test.
pub fn kafka_brokers() -> Option<String> {
    endpoint(Service::Kafka)
}

/// CQL contact points, `host:port[,...]`; `None`: skip the test.
pub fn cql_nodes() -> Option<String> {
    endpoint(Service::Cql)
}

/// A `redis://` URL; `None`: skip the test.
pub fn redis_url() -> Option<String> {
    endpoint(Service::Redis)
}

/// The endpoints of all three, or `None` (skip) when any is skipped.
pub fn all() -> Option<(String, String, String)> {
    Some((kafka_brokers()?, cql_nodes()?, redis_url()?))
}

/// Whether the caller asked to skip tests of real services.
pub fn skip_requested() -> bool {
    std::env::var("SIGNALS_TEST_SKIP_SERVICES")
        .is_ok_and(|value| !value.is_empty() && value != "0" && value != "false")
}

/// `prefix` made unique to this process and moment: a topic, group,
/// keyspace (`-` becomes `_` there) or key prefix of a test's own.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!(
        "{prefix}-{}-{millis}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A loopback port free now, for a process the test starts next.
///
/// Picked below the kernel's ephemeral range, from 20000 up (above the
/// ports `infra/local/up` uses by default): binding port 0 picks one inside
/// that range, which an outgoing connection of any process (a client of
/// Kafka or Cassandra) may take in the moments before the test's process
/// binds it. CI saw `signals speed` exit "Address already in use" that way.
/// Where it starts is drawn per call, so that tests picking at once rarely
/// try the same ports; each is checked by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    const FIRST: u32 = 20_000;
    let end = ephemeral_start().max(FIRST + 1_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seed = nanos
        ^ u64::from(std::process::id()).rotate_left(32)
        ^ CALLS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // SplitMix64's finaliser: consecutive seeds land far apart.
    let mut mixed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    mixed ^= mixed >> 31;
    let span = u64::from(end - FIRST);
    let start = mixed % span;
    (0..span)
        .map(|i| FIRST + ((start + i) % span) as u32)
        .filter_map(|port| u16::try_from(port).ok())
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port")
        })
}

/// The first port of the kernel's ephemeral range (Linux; 32768 elsewhere).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Where an endpoint comes from, by the rules in the module doc.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// The `SIGNALS_TEST_*` variable's value.
    Given(String),
    /// Skip the test: asked for with `SIGNALS_TEST_SKIP_SERVICES`.
    Skip,
    /// Start a container.
    Container,
    /// Neither: fail with this message.
    Missing(String),
}

/// The rules, without the environment: the variable's value, whether
/// skipping was asked for, whether Docker is reachable.
pub fn source(service: Service, value: Option<String>, skip: bool, docker: bool) -> Source {
    match value {
        Some(value) if !value.trim().is_empty() => Source::Given(value),
        _ if skip => Source::Skip,
        _ if docker => Source::Container,
        _ => Source::Missing(format!(
            "{variable} is not set and no Docker daemon is reachable. Start the services with \
             `eval \"$(infra/local/up)\"` (or only this one: `eval \"$(infra/local/up {name})\"`), \
             or make Docker reachable so the tests start containers themselves, or set \
             SIGNALS_TEST_SKIP_SERVICES=1 to skip tests of real services",
            variable = service.variable(),
            name = service.infra_name(),
        )),
    }
}

/// The endpoint of `service` by the rules in the module doc; `None`: skip.
pub fn endpoint(service: Service) -> Option<String> {
    let value = std::env::var(service.variable()).ok();
    match source(service, value, skip_requested(), docker_reachable()) {
        Source::Given(value) => Some(value),
        Source::Skip => {
            eprintln!(
                "{} is unset and SIGNALS_TEST_SKIP_SERVICES is set: skipping this test",
                service.variable()
            );
            None
        }
        Source::Container => Some(containers::endpoint(service)),
        Source::Missing(message) => panic!("{message}"),
    }
}

/// A Docker daemon the containers can be started on: `DOCKER_HOST`, or a
/// socket where Docker Engine, Docker Desktop or rootless Docker put it.
pub fn docker_reachable() -> bool {
    if !cfg!(feature = "containers") {
        return false;
    }
    if std::env::var("DOCKER_HOST").is_ok_and(|h| !h.is_empty()) {
        return true;
    }
    let mut sockets = vec![std::path::PathBuf::from("/var/run/docker.sock")];
    if let Ok(home) = std::env::var("HOME") {
        sockets.push(std::path::Path::new(&home).join(".docker/run/docker.sock"));
    }
    if let Ok(runtime) = std::env::var("XDG_RUNTIME_DIR") {
        sockets.push(std::path::Path::new(&runtime).join("docker.sock"));
    }
    sockets.iter().any(|s| s.exists())
}

#[cfg(feature = "containers")]
mod containers {
    //! ScyllaDB, Kafka (KRaft) and Redis with testcontainers 0.28, the
    //! images and versions of `docker-compose.yml`. Host ports are on the
    //! local Docker host (127.0.0.1).

    use testcontainers::core::{ContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt, ReuseDirective};

    use std::sync::OnceLock;

    use super::Service;

    /// Endpoints of containers this process started, one per service.
    static STARTED: [OnceLock<String>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];

    pub fn endpoint(service: Service) -> String {
        let slot = &STARTED[service as usize];
        slot.get_or_init(|| {
            // Tests call this from inside their own runtime; the container
            // is started on a thread with a runtime of its own.
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?
                    .block_on(start(service))
            })
            .join()
            .unwrap_or_else(|_| Err("the container thread panicked".into()))
            .unwrap_or_else(|error| {
                panic!(
                    "{} is unset and Docker looked reachable, but starting a container failed: \
                     {error}. Start the services with `eval \"$(infra/local/up)\"` instead, or set \
                     SIGNALS_TEST_SKIP_SERVICES=1",
                    service.variable()
                )
            })
        })
        .clone()
    }

    async fn start(service: Service) -> Result<String, String> {
        let failed = |e: testcontainers::TestcontainersError| e.to_string();
        match service {
            Service::Redis => {
                let container = GenericImage::new("redis", "7")
                    .with_exposed_port(ContainerPort::Tcp(6379))
                    .with_wait_for(WaitFor::message_on_either_std(
                        "Ready to accept connections",
                    ))
                    .with_cmd(["redis-server", "--save", "", "--appendonly", "no"])
                    .with_container_name("signals-test-redis")
                    .with_reuse(ReuseDirective::Always)
                    .start()
                    .await
                    .map_err(failed)?;
                let port = container.get_host_port_ipv4(6379).await.map_err(failed)?;
                Ok(format!("redis://127.0.0.1:{port}"))
            }
            Service::Cql => {
                // The driver learns the node's address from system.local
                // (its rpc address, with the contact point's port):
                // broadcast 127.0.0.1 so that is the published port here.
                let container = GenericImage::new("scylladb/scylla", "2025.4")
                    .with_exposed_port(ContainerPort::Tcp(9042))
                    .with_wait_for(WaitFor::message_on_either_std("init - serving"))
                    .with_cmd([
                        "--smp",
                        "1",
                        "--memory",
                        "1G",
                        "--overprovisioned",
                        "1",
                        "--developer-mode",
                        "1",
                        "--reactor-backend=epoll",
                        "--broadcast-rpc-address",
                        "127.0.0.1",
                    ])
                    .with_container_name("signals-test-scylla")
                    .with_reuse(ReuseDirective::Always)
                    .with_startup_timeout(std::time::Duration::from_secs(300))
                    .start()
                    .await
                    .map_err(failed)?;
                let port = container.get_host_port_ipv4(9042).await.map_err(failed)?;
                Ok(format!("127.0.0.1:{port}"))
            }
            Service::Kafka => {
                // Kafka tells clients the address to reconnect to, so the
                // host port is chosen first and advertised; a reused
                // container keeps the port it was created with.
                let host_port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map_err(|e| e.to_string())?
                    .port();
                let env = [
                    ("CLUSTER_ID", "wFyMC1kAjWB09ybLFkwfoA".to_owned()),
                    ("KAFKA_NODE_ID", "1".to_owned()),
                    ("KAFKA_PROCESS_ROLES", "broker,controller".to_owned()),
                    (
                        "KAFKA_CONTROLLER_QUORUM_VOTERS",
                        "1@localhost:9093".to_owned(),
                    ),
                    (
                        "KAFKA_LISTENERS",
                        "PLAINTEXT://:9092,CONTROLLER://:9093,HOST://:29092".to_owned(),
                    ),
                    (
                        "KAFKA_ADVERTISED_LISTENERS",
                        format!("PLAINTEXT://localhost:9092,HOST://127.0.0.1:{host_port}"),
                    ),
                    (
                        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                        "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,HOST:PLAINTEXT".to_owned(),
                    ),
                    ("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER".to_owned()),
                    ("KAFKA_INTER_BROKER_LISTENER_NAME", "PLAINTEXT".to_owned()),
                    ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1".to_owned()),
                    ("KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS", "1".to_owned()),
                    (
                        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                        "1".to_owned(),
                    ),
                    ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1".to_owned()),
                    (
                        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
                        "1".to_owned(),
                    ),
                    (
                        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
                        "1".to_owned(),
                    ),
                    ("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0".to_owned()),
                ];
                let mut request = GenericImage::new("apache/kafka", "4.1.2")
                    .with_exposed_port(ContainerPort::Tcp(29092))
                    .with_wait_for(WaitFor::message_on_either_std("Kafka Server started"))
                    .with_mapped_port(host_port, ContainerPort::Tcp(29092))
                    .with_container_name("signals-test-kafka")
                    .with_reuse(ReuseDirective::Always)
                    .with_startup_timeout(std::time::Duration::from_secs(180));
                for (name, value) in env {
                    request = request.with_env_var(name, value);
                }
                let container = request.start().await.map_err(failed)?;
                let port = container.get_host_port_ipv4(29092).await.map_err(failed)?;
                Ok(format!("127.0.0.1:{port}"))
            }
        }
    }
}

#[cfg(not(feature = "containers"))]
mod containers {
    use super::Service;

    pub fn endpoint(_: Service) -> String {
        unreachable!("docker_reachable() is false without the `containers` feature")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_endpoint_wins_then_an_explicit_skip_then_docker() {
        let given = || Some("127.0.0.1:19092".to_owned());
        for (skip, docker) in [(false, false), (true, false), (false, true), (true, true)] {
            assert_eq!(
                source(Service::Kafka, given(), skip, docker),
                Source::Given("127.0.0.1:19092".into())
            );
        }
        for empty in [None, Some(String::new()), Some(" ".into())] {
            assert_eq!(
                source(Service::Cql, empty.clone(), true, true),
                Source::Skip
            );
            assert_eq!(
                source(Service::Cql, empty.clone(), false, true),
                Source::Container
            );
            let Source::Missing(message) = source(Service::Cql, empty, false, false) else {
                panic!("neither endpoint nor Docker must fail");
            };
            assert!(message.contains("SIGNALS_TEST_CQL_NODES"), "{message}");
            assert!(message.contains("eval \"$(infra/local/up)\""), "{message}");
            assert!(message.contains("infra/local/up cassandra"), "{message}");
            assert!(
                message.contains("SIGNALS_TEST_SKIP_SERVICES=1"),
                "{message}"
            );
        }
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("t"), unique_name("t"));
        assert!(unique_name("topic").starts_with("topic-"));
    }
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn free_ports_are_free_below_the_ephemeral_range_and_spread() {
        let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
        for &port in &ports {
            assert!(u32::from(port) >= 20_000 && u32::from(port) < ephemeral_start().max(21_000));
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("free");
        }
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() >= 15, "{ports:?}");
    }
}
