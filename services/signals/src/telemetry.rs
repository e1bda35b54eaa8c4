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
    use metrics::{describe_counter, describe_histogram, Unit};
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
        "Speed-layer backend calls retried after a transient error"
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
