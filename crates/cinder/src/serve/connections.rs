//! Accepting connections: how many, how slow, which HTTP version, and OpenAI-shaped bodies
//! for the errors hyper's HTTP/1 parser answers by itself.
//!
//! A client may take at most `header_timeout` to send a request's head (and to start the
//! next one on a kept-alive connection; an HTTP/2 connection is closed once it has had no
//! request in flight for as long), and a client that stops reading is dropped after
//! `send_timeout`; the body's own limit is the request extractor's (`routes::RequestBody`).
//! Over `max_connections`, a new connection gets a 503 and is closed, so slow clients
//! cannot use up the process's descriptors.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, HttpBody};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};

use super::api::ApiError;

/// What a connection may cost the server.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest wait for a request's head, and for the next one on an idle connection.
    pub header_timeout: Duration,
    /// Longest a response may wait for the client to read it.
    pub send_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// What a client sends first on an HTTP/2 connection without upgrade (prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight end
/// for at most `drain`: false if some were still open then (their connections close).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> bool {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection holds a receiver; shutdown sends, then waits for them all to go.
    let (stopping, stop) = watch::channel(());
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // Pings find peers that vanished; a stream's body has the extractor's timeout.
    http2.timer(TokioTimer::new()).keep_alive_interval(limits.header_timeout).keep_alive_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was taken: not
                    // fatal; a pause keeps an exhausted process from spinning.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse_busy(stream, limits.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (http1, http2, stop, app) = (http1.clone(), http2.clone(), stop.clone(), app.clone());
        tokio::spawn(async move {
            match read_version(&stream, limits.header_timeout).await {
                Some(Version::Http1) => {
                    let io = TokioIo::new(Guarded::new(stream, limits.send_timeout, true));
                    let connection = http1.serve_connection(io, TowerToHyperService::new(app));
                    drive(connection, |c| c.graceful_shutdown(), stop, None).await;
                }
                Some(Version::Http2) => {
                    let io = TokioIo::new(Guarded::new(stream, limits.send_timeout, false));
                    let activity = Arc::new(Activity::new());
                    let app = Tracked { app, activity: activity.clone() };
                    let connection = http2.serve_connection(io, TowerToHyperService::new(app));
                    drive(connection, |c| c.graceful_shutdown(), stop, Some((activity, limits.header_timeout))).await;
                }
                None => {}
            }
            drop(slot);
        });
    }
    drop((listener, stop));
    let _ = stopping.send(());
    tokio::time::timeout(drain, stopping.closed()).await.is_ok()
}

/// Serves a connection until it ends, closing it gracefully (requests in flight finish)
/// when the server stops or, given `idle`, once it has had no request in flight for the
/// timeout.
async fn drive<C: Future>(connection: C, close: impl Fn(Pin<&mut C>), mut stop: watch::Receiver<()>, idle: Option<(Arc<Activity>, Duration)>) {
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = stop.changed(), if !closing => {
                closing = true;
                close(connection.as_mut());
            }
            () = idle_for(idle.as_ref()), if !closing => {
                closing = true;
                close(connection.as_mut());
            }
        }
    }
}

/// Resolves once `idle`'s connection has had nothing in flight for its timeout; never
/// without one.
async fn idle_for(idle: Option<&(Arc<Activity>, Duration)>) {
    let Some((activity, timeout)) = idle else { return std::future::pending().await };
    loop {
        let wait = match activity.idle_since() {
            Some(since) if since.elapsed() >= *timeout => return,
            Some(since) => *timeout - since.elapsed(),
            None => *timeout,
        };
        tokio::time::sleep(wait).await;
    }
}

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last_end: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self { in_flight: AtomicUsize::new(0), last_end: Mutex::new(Instant::now()) }
    }

    /// Since when nothing has been in flight; `None` while something is.
    fn idle_since(&self) -> Option<Instant> {
        let last_end = *self.last_end.lock().unwrap_or_else(|e| e.into_inner());
        (self.in_flight.load(Ordering::Acquire) == 0).then_some(last_end)
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

/// A request in flight: it ends when its response's body is done or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last_end.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The app, counting the requests in flight on its connection.
#[derive(Clone)]
struct Tracked {
    app: Router,
    activity: Arc<Activity>,
}

impl tower::Service<axum::http::Request<Incoming>> for Tracked {
    type Response = axum::http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        let response = tower::ServiceExt::oneshot(self.app.clone(), request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(TrackedBody { body, _in_flight: in_flight })))
        })
    }
}

/// A response body that holds its request in flight until it is done or dropped.
struct TrackedBody {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

enum Version {
    Http1,
    Http2,
}

/// Which HTTP the client speaks, from its first bytes (left unread); None when it closed
/// or sent nothing telling within `timeout`.
async fn read_version(stream: &TcpStream, timeout: Duration) -> Option<Version> {
    let deadline = Instant::now() + timeout;
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        if first[..n] != H2_PREFACE[..n] {
            return Some(Version::Http1);
        }
        if n == H2_PREFACE.len() {
            return Some(Version::Http2);
        }
        // A partial preface: peek does not wait for more, so wait a little.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Answers a connection over the limit with a 503 and closes it.
async fn refuse_busy(mut stream: TcpStream, max: usize) {
    let error = ApiError::unavailable(format!("the server has {max} connections open; try again later"));
    let body = error.body().to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// A client connection with a limit on how long a write may wait, which also gives
/// hyper's own HTTP/1 error responses (400, 414, 431: a head with `content-length: 0`)
/// an OpenAI error body.
struct Guarded {
    stream: TcpStream,
    send_timeout: Duration,
    /// Set while a write waits for the client to read.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Rewrite bodiless error heads (HTTP/1 only).
    rewrite_errors: bool,
    /// Bytes owed to the client before anything else: a rewritten error response.
    pending: Vec<u8>,
}

impl Guarded {
    fn new(stream: TcpStream, send_timeout: Duration, rewrite_errors: bool) -> Self {
        Self { stream, send_timeout, stalled: None, rewrite_errors, pending: Vec::new() }
    }

    /// Polls a write, failing it once the client has not read for `send_timeout`.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.send_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")));
        }
        Poll::Pending
    }

    /// Writes what is owed; ready once nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let poll = Pin::new(&mut self.stream).poll_write(cx, &self.pending);
            let n = ready!(self.guard(cx, poll))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

/// `head` with an OpenAI error body if it is a whole bodiless error head from hyper.
fn error_response(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let status: u16 = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    const EMPTY: &str = "content-length: 0\r\n";
    if status < 400 || !text.ends_with("\r\n\r\n") || !text.contains(EMPTY) {
        return None;
    }
    let message = match status {
        414 => "the request's URI is too long",
        431 => "the request's headers are too large",
        _ => "the request is not valid HTTP",
    };
    let status = axum::http::StatusCode::from_u16(status).ok()?;
    let body = ApiError { status, ..ApiError::invalid(message, None) }.body().to_string();
    let headers = format!("content-type: application/json\r\ncontent-length: {}\r\n", body.len());
    Some((text.replacen(EMPTY, &headers, 1) + &body).into_bytes())
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        // hyper hands over a response's head in one write (writes are not vectored).
        if self.rewrite_errors
            && buf.starts_with(b"HTTP/1.1 4")
            && let Some(response) = error_response(buf)
        {
            self.pending = response;
            return Poll::Ready(Ok(buf.len()));
        }
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        let poll = Pin::new(&mut self.stream).poll_flush(cx);
        self.guard(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Raises the soft limit on open descriptors to the hard one (connections are
/// descriptors) and returns it.
#[cfg(unix)]
pub fn raise_descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur as u64)
}

#[cfg(not(unix))]
pub fn raise_descriptor_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bodiless_errors_get_an_openai_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let response = String::from_utf8(error_response(head).expect("rewritten")).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert!(json["error"]["message"].as_str().unwrap().contains("headers"));
        // A response with a body, or a success, is left alone.
        assert!(error_response(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(error_response(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n").is_none());
    }
}
