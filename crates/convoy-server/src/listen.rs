//! Serving a router on a listener so that hostile clients cannot hold the
//! server, and urgent requests do not wait behind a flood.
//!
//! * **Header timeout.** A connection that has not sent a complete request
//!   head within it (a new one sending nothing, one sending a header line
//!   every few seconds, or a keep-alive connection idle between requests)
//!   is closed: hyper's header-read timeout.
//! * **Connection budget.** Past it a new connection is closed at once (and
//!   counted) instead of taking a file descriptor and a task the server may
//!   not have: a semaphore taken at accept. A small reserve past it (a
//!   sixteenth, at least 4) is kept for urgent requests: a connection over
//!   the budget is peeked at for [`RESERVE_PEEK`], and served only if its
//!   first request is urgent, so a flood larger than the budget does not
//!   lock urgent clients out.
//! * **The door.** Accepting, and reading the first request head of a new
//!   connection, happen on a thread of their own (the door), not on the
//!   runtime serving the connections: under a flood of thousands of busy
//!   connections that runtime's queue of ready tasks is long, and a new
//!   connection waiting in it waits for all of them. The door peeks at the
//!   head (nothing is consumed) for an `x-priority` header; a connection
//!   whose first request is urgent (`HttpLimits::urgent`: Critical and High
//!   by default) is served on the door's thread, the others on the
//!   embedder's runtime. The operating system shares the cores between the
//!   threads, so an urgent request waits for a time slice, not for every
//!   connection of the flood.
//! * **Receipt.** Each connection notes when its current request's first
//!   byte arrived (for a new connection: its accept), and hands that to the
//!   handler, which gives it to the runtime (`Request::received_at`): the
//!   latency convoy reports counts accepting, reading and decoding.
//!
//! The rest is hyper's own connection handling (hyper-util's graceful
//! shutdown, hyper's header-read timeout).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use convoy::Priority;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::parse_errors::{self, Replacing};
use crate::trim;

/// The request header the door reads a connection's priority from, before
/// any body: a name (`critical` … `background`) or a level 0–4, like the
/// body's `priority` field.
pub const PRIORITY_HEADER: &str = "x-priority";

/// How long a connection past the budget has to show an urgent first
/// request head before it is closed.
pub const RESERVE_PEEK: Duration = Duration::from_millis(200);

/// How long a client may take, and how many may connect at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A connection waiting this long for a complete request head is
    /// closed: hyper's header-read timeout, which runs from the moment the
    /// connection waits for a request, so it also bounds a keep-alive
    /// connection's idle time. Default 10 s.
    pub header_timeout: Duration,
    /// The body must arrive within this, plus the time its declared length
    /// takes at `min_body_rate`, after the head (408 otherwise). Default
    /// 10 s.
    pub body_timeout: Duration,
    /// The slowest transfer a body may keep up, in bytes per second: a
    /// 1 MiB body at the default 64 KiB/s gets 16 s on top of
    /// `body_timeout`.
    pub min_body_rate: u64,
    /// The most connections open at once; past it a new connection is
    /// closed at once and counted. Default: a quarter of the process's
    /// file-descriptor limit (`RLIMIT_NOFILE`), at least 64.
    pub max_connections: usize,
    /// A connection whose first request says (in the `x-priority` header)
    /// this level or a more urgent one is served on the door's own thread,
    /// away from the flood; `None` serves every connection on the
    /// embedder's runtime. Default `Some(High)`: Critical and High.
    pub urgent: Option<Priority>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            min_body_rate: 64 * 1024,
            max_connections: default_max_connections(),
            urgent: Some(Priority::High),
        }
    }
}

impl HttpLimits {
    /// How long a body of `declared` bytes (0 when not declared) may take
    /// to arrive.
    pub fn body_deadline(&self, declared: u64) -> Duration {
        let rate = self.min_body_rate.max(1);
        self.body_timeout
            .saturating_add(Duration::from_secs_f64(declared as f64 / rate as f64))
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

/// What the listener refused or sent where, for the logs and tests.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Connections closed at accept because the budget was spent.
    pub over_budget: AtomicU64,
    /// Connections served on the door's thread (urgent first requests).
    pub urgent: AtomicU64,
    /// Requests answered 429 before their body was read, because the
    /// level their `x-priority` header gives was shed; per level index.
    pub shed_at_door: [AtomicU64; Priority::COUNT],
}

/// When the request a handler serves reached the server: its connection's
/// accept, or the first byte after the previous response. Present in the
/// request's extensions when served by `serve_until`.
#[derive(Debug, Clone, Copy)]
pub struct Received(pub Instant);

/// Serves `router` on `listener` until `signal`, then stops accepting and
/// lets open connections finish within `drain`, closing what remains. The
/// accept loop and urgent connections run on a thread of their own (see
/// the module docs); the others on the runtime this is called from.
pub(crate) async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: HttpLimits,
    refusals: Arc<Refusals>,
    signal: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> io::Result<()> {
    let main = tokio::runtime::Handle::current();
    // Fixed before any stamp is taken, so none falls before it.
    let _ = epoch();
    let listener = listener.into_std()?;
    // The signal is awaited here, on the embedder's runtime, so that what
    // it spawns (a second-signal handler) outlives the door.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        signal.await;
        let _ = stop_tx.send(());
    });
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("convoy-door".into())
        .spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|door| {
                    door.block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        let stop = async move {
                            // A dropped sender (the watcher aborted) stops too.
                            let _ = stop_rx.await;
                        };
                        run_door(listener, router, limits, refusals, stop, drain, main).await
                    })
                });
            let _ = done_tx.send(served);
        })?;
    let served = done_rx
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the door thread ended without a word")));
    watcher.abort();
    served
}

/// The accept loop, on the door's thread.
async fn run_door(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: HttpLimits,
    refusals: Arc<Refusals>,
    stop: impl Future<Output = ()>,
    drain: Duration,
    main: tokio::runtime::Handle,
) -> io::Result<()> {
    // Open connections are this less the budget's free permits.
    let room = limits.max_connections.max(1);
    let budget = Arc::new(Semaphore::new(room));
    // Room past the budget for urgent connections only (none when the
    // urgent thread is off).
    let reserve = Arc::new(Semaphore::new(match limits.urgent {
        Some(_) => (limits.max_connections / 16).max(4),
        None => 0,
    }));
    let graceful = GracefulShutdown::new();
    // Every connection's task, so that those still open at the drain
    // deadline are ended, not left running in the embedder's runtime.
    let mut connections = tokio::task::JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    let mut warned = false;
    // Once a second: has a connection flood ebbed? (`trim.rs`)
    let mut ebb = trim::Ebb::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Reap what has finished, so the set holds only open connections.
        while connections.try_join_next().is_some() {}
        let (stream, _peer) = tokio::select! {
            _ = tick.tick() => {
                let open = room - budget.available_permits();
                let peak = ebb.peak();
                if ebb.ebbed(open) {
                    // Off this thread: a trim takes milliseconds.
                    tokio::task::spawn_blocking(move || trim::give_back(peak));
                }
                continue;
            }
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
            () = &mut stop => break,
        };
        let accepted = Instant::now();
        ebb.see(room - budget.available_permits() + 1);
        let mut stream = stream;
        if budget.available_permits() == 0 {
            // Past the budget: what has already arrived decides at once,
            // here in the accept loop, so a storm of reconnecting clients
            // is turned away without a task each; an urgent head, or one
            // not all there yet, goes on to the reserve.
            match urgent_now(stream, limits.urgent) {
                Ok((s, Some(true) | None)) => stream = s,
                Ok((_, Some(false))) | Err(_) => {
                    refusals.over_budget.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let (permit, reserved) = match budget.clone().try_acquire_owned() {
            Ok(permit) => {
                warned = false;
                (permit, false)
            }
            Err(_) => {
                if !warned {
                    tracing::warn!(
                        max = limits.max_connections,
                        "connection budget spent: closing new connections but urgent ones"
                    );
                    warned = true;
                }
                match reserve.clone().try_acquire_owned() {
                    Ok(permit) => (permit, true),
                    Err(_) => {
                        refusals.over_budget.fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (router, watcher, main, refusals) = (
            router.clone(),
            graceful.watcher(),
            main.clone(),
            refusals.clone(),
        );
        connections.spawn(async move {
            // Past the budget a connection has a moment to show it is
            // urgent; within it, as long as the header timeout.
            let wait = if reserved {
                RESERVE_PEEK.min(limits.header_timeout)
            } else {
                limits.header_timeout
            };
            let urgent = match limits.urgent {
                Some(least) => first_priority(&stream, wait)
                    .await
                    .is_some_and(|p| p <= least),
                None => false,
            };
            if reserved && !urgent {
                refusals.over_budget.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if urgent {
                refusals.urgent.fetch_add(1, Ordering::Relaxed);
                serve_connection(stream, accepted, router, limits, watcher).await;
            } else {
                // Re-registered with the embedder's runtime, whose reactor
                // then drives it. What was peeked is still unread.
                let Ok(stream) = stream.into_std() else {
                    return;
                };
                let task = main.spawn(async move {
                    if let Ok(stream) = TcpStream::from_std(stream) {
                        serve_connection(stream, accepted, router, limits, watcher).await;
                    }
                });
                // Aborting this task (the drain deadline) ends that one too.
                let mut task = AbortOnDrop(task);
                let _ = (&mut task.0).await;
            }
            // Its room in the budget goes back either way.
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

/// What the bytes already arrived on a new connection say: `Some(true)`
/// its first request is urgent, `Some(false)` it is not (or urgency is
/// off), `None` its head has not all arrived. A non-blocking peek on the
/// socket, which goes back to the door's reactor either way.
fn urgent_now(
    stream: TcpStream,
    urgent: Option<Priority>,
) -> io::Result<(TcpStream, Option<bool>)> {
    let Some(least) = urgent else {
        return Ok((stream, Some(false)));
    };
    // Tokio peeks only once its reactor has seen the socket readable;
    // std's peek on the (non-blocking) socket asks the kernel now.
    let std = stream.into_std()?;
    let mut buf = [0u8; 4096];
    let seen = match std.peek(&mut buf) {
        Ok(n) => match find(&buf[..n], b"\r\n\r\n") {
            Some(end) => Some(priority_in(&buf[..end]).is_some_and(|p| p <= least)),
            None if n == buf.len() || n == 0 => Some(false),
            None => None,
        },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => return Err(e),
    };
    Ok((TcpStream::from_std(std)?, seen))
}

/// Aborts the task when dropped, so that a door task aborted at the drain
/// deadline takes the connection it handed to the other runtime with it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// HTTP/1 on `stream` through `router`, each request stamped with when it
/// was received.
async fn serve_connection(
    stream: TcpStream,
    accepted: Instant,
    router: Router,
    limits: HttpLimits,
    graceful: Watcher,
) {
    let mark = Arc::new(FirstByte::at(accepted));
    let stamped = Stamped {
        inner: stream,
        mark: mark.clone(),
        replacing: None,
    };
    let service = router.map_request(move |mut request: axum::extract::Request<_>| {
        request.extensions_mut().insert(Received(mark.get()));
        request
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stamped), TowerToHyperService::new(service));
    // A connection that errs (a header timeout, a reset) simply ends.
    let _ = graceful.watch(conn).await;
}

/// The priority the first request on `stream` gives in its `x-priority`
/// header, read without consuming anything: `None` when it gives none, its
/// head has not begun within `wait`, or is not whole within a few
/// milliseconds of its first bytes (or does not fit one peek).
///
/// Waiting for a first byte costs nothing (the peek waits on readiness).
/// A partial head cannot be waited on that way, since a peek consumes
/// nothing and the socket stays readable, so it is looked at again only
/// [`HEAD_RETRIES`] times, [`HEAD_RETRY`] apart: a client that sends its
/// head in one piece is classified, and a slow one (thousands of which
/// must not keep this thread busy) goes to the main runtime, where hyper's
/// header timeout deals with it.
async fn first_priority(stream: &TcpStream, wait: Duration) -> Option<Priority> {
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    for _ in 0..=HEAD_RETRIES {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        let head = &buf[..n];
        if let Some(end) = find(head, b"\r\n\r\n") {
            return priority_in(&head[..end]);
        }
        if n == buf.len() {
            return None;
        }
        tokio::time::sleep(HEAD_RETRY).await;
    }
    None
}

/// How many more times a partial first head is peeked at.
const HEAD_RETRIES: usize = 3;
/// How long apart.
const HEAD_RETRY: Duration = Duration::from_millis(2);

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `x-priority` header's level in a request head.
fn priority_in(head: &[u8]) -> Option<Priority> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case(PRIORITY_HEADER) {
            value.trim().to_ascii_lowercase().parse().ok()
        } else {
            None
        }
    })
}

/// The first byte of a connection's current request: set by the first
/// read after a response was written (or at accept), read by the service
/// when the request's head is complete. One connection's reads, writes and
/// service calls run in one task, one at a time: relaxed orderings suffice.
struct FirstByte {
    /// Nanoseconds since `epoch()`, plus one; 0 while no request has begun.
    at: AtomicU64,
}

/// The instant the stamps count from, shared by every connection.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl FirstByte {
    fn at(accepted: Instant) -> Self {
        let mark = Self {
            at: AtomicU64::new(0),
        };
        mark.begin(accepted);
        mark
    }

    /// Notes `now` as the current request's first byte, unless one is noted.
    fn begin(&self, now: Instant) {
        if self.at.load(Ordering::Relaxed) == 0 {
            let ns = now.saturating_duration_since(epoch()).as_nanos();
            let ns = u64::try_from(ns).unwrap_or(u64::MAX - 1);
            self.at.store(ns + 1, Ordering::Relaxed);
        }
    }

    /// The current request is answered: the next byte read begins another.
    fn end(&self) {
        self.at.store(0, Ordering::Relaxed);
    }

    /// The current request's first byte (now, if none is noted).
    fn get(&self) -> Instant {
        match self.at.load(Ordering::Relaxed) {
            0 => Instant::now(),
            ns => epoch() + Duration::from_nanos(ns - 1),
        }
    }
}

/// A stream that notes the first byte of each request on its
/// [`FirstByte`]: a read that brings bytes begins a request (if none is
/// begun), a write (the response) ends it.
struct Stamped {
    inner: TcpStream,
    mark: Arc<FirstByte>,
    /// One of hyper's own error answers, being written with a JSON body
    /// (`parse_errors.rs`).
    replacing: Option<Replacing>,
}

impl Stamped {
    /// Writes `buf`, or its JSON replacement when it is one of hyper's own
    /// empty-bodied error answers (which come in one write and end the
    /// connection). While a replacement is being written, hyper's retried
    /// `buf` is the same answer, and is answered as written once the
    /// replacement is out.
    fn write_or_replace(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.replacing.is_none() {
            match parse_errors::json_for(buf) {
                Some(bytes) => {
                    self.replacing = Some(Replacing {
                        bytes,
                        written: 0,
                        claimed: buf.len(),
                    })
                }
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        let Self {
            inner, replacing, ..
        } = self;
        let r = replacing
            .as_mut()
            .expect("set above when it was not already");
        while r.written < r.bytes.len() {
            match Pin::new(&mut *inner).poll_write(cx, &r.bytes[r.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => r.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let claimed = r.claimed;
        *replacing = None;
        Poll::Ready(Ok(claimed))
    }
}

impl AsyncRead for Stamped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.mark.begin(Instant::now());
        }
        polled
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.mark.end();
        self.write_or_replace(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.mark.end();
        // An error answer hyper writes itself is a head alone: one slice.
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            return self.write_or_replace(cx, only);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_priority_header_is_read_from_the_head() {
        let head =
            b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nX-Priority: Critical\r\nContent-Length: 2";
        assert_eq!(priority_in(head), Some(Priority::Critical));
        let head = b"POST /v1/infer HTTP/1.1\r\nx-priority: 4\r\n";
        assert_eq!(priority_in(head), Some(Priority::Background));
        assert_eq!(priority_in(b"GET / HTTP/1.1\r\nHost: x"), None);
        assert_eq!(priority_in(b"GET / HTTP/1.1\r\nx-priority: soon"), None);
        // The request line is not a header, whatever it says.
        assert_eq!(priority_in(b"x-priority: critical\r\nHost: x"), None);
    }

    #[test]
    fn a_body_may_take_longer_the_longer_it_is() {
        let limits = HttpLimits {
            body_timeout: Duration::from_secs(2),
            min_body_rate: 1000,
            ..HttpLimits::default()
        };
        assert_eq!(limits.body_deadline(0), Duration::from_secs(2));
        assert_eq!(limits.body_deadline(3000), Duration::from_secs(5));
    }

    #[test]
    fn a_request_begins_at_its_first_byte_and_ends_at_the_answer() {
        let _ = epoch();
        let t0 = Instant::now();
        let mark = FirstByte::at(t0);
        mark.begin(t0 + Duration::from_millis(5));
        assert_eq!(mark.get(), t0, "the accept stands for the first request");
        mark.end();
        let t1 = t0 + Duration::from_millis(9);
        mark.begin(t1);
        mark.begin(t1 + Duration::from_millis(1));
        assert_eq!(mark.get(), t1);
    }
}
