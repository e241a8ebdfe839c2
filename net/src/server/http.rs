//! The HTTP admin listener: `/metrics` (OpenMetrics text, once the shards serve), `/health`
//! (the process answers), `/ready` (started and not stopping) and the operations under
//! `/v1/` (JSON, while serving; the owner answers them). It listens before the
//! protocol listeners do, so a client that reached one finds it. It runs on its own thread,
//! off the shards: the metrics come from a function the owner gives, which asks each shard
//! for its counters like any cross-shard request, so the data path takes no locks for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// Renders the metrics for a scrape, or says why they are unavailable.
pub type Metrics = Box<dyn Fn() -> Result<String, String> + Send>;

/// Answers an operation under `/v1/`: given the method and the path, the status and the
/// JSON body.
pub type Operations = Box<dyn Fn(&str, &str) -> (u16, String) + Send>;

/// Where the broker is in its life, as the admin listener reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Shards are being set up: not ready, and no metrics yet.
    Starting,
    /// The protocol listeners accept: ready.
    Serving,
    /// Shutting down: not ready; metrics still answer.
    Stopping,
}

/// The process's [`Phase`], shared with the admin thread; starts at `Starting` (0).
#[derive(Clone, Default)]
pub struct PhaseCell(Arc<AtomicU8>);

impl PhaseCell {
    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Release);
    }

    fn get(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Stopping,
        }
    }
}

/// A running admin listener.
pub struct AdminServer {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Where the admin listener is bound.
    pub fn address(&self) -> String {
        self.server.server_addr().to_string()
    }

    pub fn start(
        address: SocketAddr,
        phase: PhaseCell,
        metrics: Metrics,
        operations: Operations,
    ) -> Result<AdminServer, String> {
        let server = tiny_http::Server::http(address)
            .map_err(|error| format!("HTTP admin listener on {address}: {error}"))?;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("coremq-admin-http".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    let (status, content_type, body) = answer(
                        request.method().as_str(),
                        request.url(),
                        (&metrics, &operations),
                        phase.get(),
                    );
                    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type)
                        .expect("a static header is valid");
                    let response = tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header);
                    if let Err(error) = request.respond(response) {
                        log::debug!("admin HTTP response not sent: {error}");
                    }
                }
            })
            .map_err(|error| format!("starting the HTTP admin thread: {error}"))?;
        Ok(AdminServer {
            server,
            thread: Some(thread),
        })
    }
}

/// Stops serving and waits for the admin thread.
impl Drop for AdminServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(
    method: &str,
    url: &str,
    (metrics, operations): (&Metrics, &Operations),
    phase: Phase,
) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    match url.split('?').next().unwrap_or_default() {
        path if path.starts_with("/v1/") => match phase {
            Phase::Serving => {
                let (status, body) = operations(method, path);
                (status, JSON, body)
            }
            _ => (503, JSON, r#"{"error":"not serving"}"#.into()),
        },
        "/health" => (200, TEXT, "ok\n".into()),
        "/ready" if phase == Phase::Serving => (200, TEXT, "ready\n".into()),
        "/ready" => (503, TEXT, "not ready\n".into()),
        "/metrics" if phase == Phase::Starting => (503, TEXT, "starting\n".into()),
        "/metrics" => match metrics() {
            Ok(text) => (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(error) => (503, TEXT, format!("metrics unavailable: {error}\n")),
        },
        _ => (
            404,
            TEXT,
            "not found: try /metrics, /health, /ready or /v1/cluster\n".into(),
        ),
    }
}
