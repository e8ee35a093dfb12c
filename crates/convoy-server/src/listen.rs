//! Serving a router on a listener so that hostile clients cannot hold the
//! server: a connection that has not sent a complete request head within
//! the header timeout (a new one sending nothing, one sending a header
//! line every few seconds, or a keep-alive connection idle between
//! requests) is closed, and past the connection budget a new connection
//! is closed at once (and counted) instead of taking a file descriptor and
//! a task the server may not have.
//!
//! This is hyper's own connection handling (hyper-util's graceful
//! shutdown, hyper's header-read timeout); the budget is a semaphore taken
//! at accept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

/// How long a client may take, and how many may connect at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A connection waiting this long for a complete request head is
    /// closed: hyper's header-read timeout, which runs from the moment the
    /// connection waits for a request, so it also bounds a keep-alive
    /// connection's idle time. Default 10 s.
    pub header_timeout: Duration,
    /// The most connections open at once; past it a new connection is
    /// closed at once and counted. Default: a quarter of the process's
    /// file-descriptor limit (`RLIMIT_NOFILE`), at least 64.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections: default_max_connections(),
        }
    }
}

/// A quarter of the soft `RLIMIT_NOFILE` (the rest stays for the
/// runtime, logs and the clients of a loaded process), at least 64; 1024
/// where the limit cannot be read.
pub fn default_max_connections() -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|soft| soft.parse::<usize>().ok())
        });
    match limit {
        Some(n) => (n / 4).max(64),
        None => 1024,
    }
}

/// What the listener refused, for the logs and tests.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Connections closed at accept because the budget was spent.
    pub over_budget: AtomicU64,
}

/// Serves `router` on `listener` until `signal`, then stops accepting and
/// lets open connections finish within `drain`, closing what remains.
pub(crate) async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: HttpLimits,
    refusals: Arc<Refusals>,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let budget = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // Every connection's task, so that those still open at the drain
    // deadline are ended, not left running in the embedder's runtime.
    let mut connections = tokio::task::JoinSet::new();
    let mut signal = std::pin::pin!(signal);
    let mut warned = false;
    loop {
        // Reap what has finished, so the set holds only open connections.
        while connections.try_join_next().is_some() {}
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                // Out of descriptors or a connection reset before accept:
                // the listener itself is fine; wait a moment and go on.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let Ok(permit) = budget.clone().try_acquire_owned() else {
            refusals.over_budget.fetch_add(1, Ordering::Relaxed);
            if !warned {
                tracing::warn!(
                    max = limits.max_connections,
                    "connection budget spent: closing new connections"
                );
                warned = true;
            }
            drop(stream);
            continue;
        };
        warned = false;
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            // A connection that errs (a header timeout, a reset) simply
            // ends; its room in the budget goes back either way.
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(
                drain_ms = drain.as_millis() as u64,
                open = connections.len(),
                "drain deadline passed: closing the connections still open"
            );
            // Dropping a connection's task closes its socket.
            connections.abort_all();
        }
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}
