//! Logs and metrics.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the log subscriber; `RUST_LOG` overrides the configured level.
pub fn init_logs(config: &TelemetryConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Installs the Prometheus recorder and describes every metric.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0, 30.0, 60.0,
        ])?
        .install_recorder()?;
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "signals_http_requests_total",
        "HTTP requests by method, route template and status"
    );
    describe_histogram!(
        "signals_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route template"
    );
    describe_counter!(
        "signals_collector_events_total",
        "Events posted to the collector, by outcome (accepted, rejected)"
    );
    describe_counter!(
        "signals_collector_retractions_total",
        "Retraction records appended"
    );
    describe_counter!(
        "signals_speed_records_total",
        "Log records processed by the speed layer, by outcome"
    );
    describe_counter!(
        "signals_speed_retries_total",
        "Speed-layer calls retried after a transient error, by operation (poll the log, apply speed write, ...)"
    );
    describe_gauge!(
        "signals_speed_waiting",
        "1 while the speed layer retries a failing call (see /readyz), else 0"
    );
    describe_counter!(
        "signals_speed_restarts_total",
        "Restarts of the speed layer of `signals up` after it stopped on an error"
    );
    describe_counter!(
        "signals_insights_restarts_total",
        "Restarts of the insights worker of `signals up` after it stopped on an error"
    );
    describe_counter!(
        "signals_insights_transitions_total",
        "Segment transitions (entered, left) the insights worker published to the feed"
    );
    describe_counter!(
        "signals_insights_timers_fired_total",
        "Users the insights worker evaluated because their timer was due (time alone may change a segment)"
    );
    describe_gauge!(
        "signals_insights_publish_delay_seconds",
        "From the last published transition's instant to its publication, in the worker's latest pass"
    );
    describe_counter!(
        "signals_startup_retries_total",
        "Start-up attempts to open a backend that failed transiently, by backend (log, store)"
    );
    describe_counter!(
        "signals_kafka_appends_total",
        "Collector transactions on Kafka by outcome (committed, failed, invalid, refused: failed fast while Kafka is down)"
    );
    describe_counter!(
        "signals_kafka_producer_recreated_total",
        "Transactional producers dropped after a failed transaction and created anew"
    );
    describe_counter!(
        "signals_cache_requests_total",
        "Reads of published records by where they were answered (local, hit, miss, bypassed: Redis failed or its circuit is open)"
    );
    describe_counter!(
        "signals_cache_errors_total",
        "Redis calls that failed or timed out"
    );
    describe_gauge!(
        "signals_cache_circuit_open",
        "1 while the Redis circuit breaker keeps reads away from Redis, else 0"
    );
    describe_counter!(
        "signals_cache_circuit_opened_total",
        "Times the Redis circuit breaker opened"
    );
    describe_counter!(
        "signals_serving_values_total",
        "Signal values served, by whether a kept value held (kept) or the user's view was evaluated (computed); ADR 011"
    );
    describe_counter!(
        "signals_freshness_stale_answers_total",
        "Answers whose freshness positions are from an older reading (positions_stale)"
    );
    describe_counter!(
        "signals_freshness_reading_failures_total",
        "Failed readings of the speed progress and the log's end"
    );
    describe_histogram!(
        "signals_speed_batch_duration_seconds",
        Unit::Seconds,
        "Time to apply one speed-layer batch"
    );
    describe_counter!("signals_batch_runs_total", "Batch runs by outcome");
    describe_histogram!(
        "signals_batch_duration_seconds",
        Unit::Seconds,
        "Duration of successful batch runs"
    );
    Ok(handle)
}
