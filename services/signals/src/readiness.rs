//! Readiness while a process starts and while its layers run.
//!
//! * Before the backends are open (they may be waited for, see
//!   `backends::wait_for`), the process already listens: `/healthz` says
//!   `ok`, `/readyz` answers 503 with what start-up waits for, `/metrics`
//!   counts the attempts, anything else is 503. The socket is bound once and
//!   handed to the real server afterwards, so it never closes in between.
//! * Afterwards, the speed layer's state (what it retries, or that it
//!   stopped and is restarted) and, in `signals up`, whether the insights
//!   worker is stopped and restarted join the backends' checks in `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use signals_api::routes::ops::Conditions;
use signals_speed::SpeedStatus;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::backends::Startup;
use crate::supervise::Down;

/// A listening socket bound before start-up, served by the start-up
/// routes until [`Starting::finish`] hands it to the real server.
pub struct Starting {
    listener: std::net::TcpListener,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Starting {
    /// Binds `address` (a taken port stops start-up here, naming `key`) and
    /// answers the start-up routes on it.
    pub fn bind(
        address: SocketAddr,
        key: &str,
        startup: Arc<Startup>,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Starting> {
        let listener = std::net::TcpListener::bind(address)
            .with_context(|| format!("cannot listen on {address} ({key})"))?;
        listener.set_nonblocking(true)?;
        let serving = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
        info!(address = %listener.local_addr()?, "listening; ready once the backends are open");
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/metrics",
                get(move || {
                    let text = metrics.as_ref().map(PrometheusHandle::render);
                    async move { text.unwrap_or_default() }
                }),
            )
            .fallback(move || {
                let problem = startup
                    .problem()
                    .unwrap_or_else(|| "opening the backends".to_owned());
                async move {
                    let body = serde_json::json!({
                        "status": "not_ready",
                        "checks": {"startup": problem},
                    });
                    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
                }
            });
        // Timeouts as on the API: a connection that never sends its request
        // must not hold `finish` (and so the start) waiting for it.
        let server = crate::http_server::serve(
            serving,
            app,
            None,
            crate::http_server::Limits::OPERATIONS,
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::warn!(%error, "start-up endpoint failed");
            }
        });
        Ok(Starting {
            listener,
            stop,
            task,
        })
    }

    /// Stops the start-up routes and returns the socket, still listening.
    pub async fn finish(self) -> anyhow::Result<tokio::net::TcpListener> {
        self.stop.cancel();
        let _ = self.task.await;
        Ok(tokio::net::TcpListener::from_std(self.listener)?)
    }
}

/// The speed layer of `signals up`, restarted after a failure; what it
/// waits for or why it stopped, for readiness.
#[derive(Default)]
pub struct SpeedHealth {
    pub status: Arc<SpeedStatus>,
    pub stopped: Arc<Down>,
}

impl SpeedHealth {
    pub fn problem(&self) -> Option<String> {
        self.stopped.reason().or_else(|| self.status.problem())
    }

    /// `/readyz`'s extra check named `speed`.
    pub fn condition(self: &Arc<Self>) -> Conditions {
        let health = self.clone();
        Conditions::default().with("speed", move || health.problem())
    }
}
