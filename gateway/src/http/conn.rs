//! Connection guard: the timeouts hyper's HTTP/1 server does not enforce on its own.
//!
//! [`GuardedIo`] wraps each accepted socket and closes it (an I/O error, which hyper turns into a
//! dropped connection) when the client stalls:
//! - *idle*: no request in progress and no bytes moved for `idle_timeout` (a keep-alive connection
//!   left open, or a connection that never sends its first byte);
//! - *header*: the first byte of a request head arrived, but the whole head did not within
//!   `header_read_timeout` (slow loris), however slowly the bytes trickle in;
//! - *closing*: at shutdown, a connection with no request in progress is closed at once, so a
//!   graceful stop never waits on clients that send nothing.
//!
//! The body of a request is the handler's business ([`super::body`]), bounded by its own timeout.
//! The service tells the guard when a request starts and ends through [`ConnActivity`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Connection timeouts, from [`crate::config::HttpConfig`].
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// Shared by every connection: set once when the server starts to shut down.
#[derive(Debug, Default)]
pub struct Closing(AtomicBool);

impl Closing {
    pub fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the service tells the guard of one connection: requests started and finished.
#[derive(Debug, Default)]
pub struct ConnActivity {
    started: AtomicU64,
    finished: AtomicU64,
}

impl ConnActivity {
    /// A request head was parsed and handed to the service.
    pub fn request_started(&self) -> RequestGuard<'_> {
        self.started.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self)
    }

    fn in_flight(&self) -> bool {
        self.started.load(Ordering::Acquire) != self.finished.load(Ordering::Acquire)
    }
}

/// Marks the request finished when dropped (also when the handler is cancelled).
#[derive(Debug)]
pub struct RequestGuard<'a>(&'a ConnActivity);

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
    }
}

/// Why a connection was closed by the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallKind {
    Idle,
    Header,
}

impl StallKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StallKind::Idle => "idle",
            StallKind::Header => "header",
        }
    }
}

/// A socket that fails its reads and writes once the client has stalled past a timeout.
pub struct GuardedIo<IO> {
    io: IO,
    activity: Arc<ConnActivity>,
    closing: Arc<Closing>,
    timeouts: ConnTimeouts,
    /// Last time bytes moved, or the connection was accepted.
    last_io: Instant,
    /// When the first byte of the current request head arrived, and the request count then.
    head: Option<(Instant, u64)>,
    sleep: Pin<Box<Sleep>>,
}

impl<IO> GuardedIo<IO> {
    pub fn new(
        io: IO,
        activity: Arc<ConnActivity>,
        closing: Arc<Closing>,
        timeouts: ConnTimeouts,
    ) -> Self {
        let now = Instant::now();
        Self {
            io,
            activity,
            closing,
            timeouts,
            last_io: now,
            head: None,
            sleep: Box::pin(tokio::time::sleep_until(now + timeouts.idle)),
        }
    }

    /// The head in progress, if its request has not reached the service yet.
    fn head_started(&mut self) -> Option<Instant> {
        let started = self.activity.started.load(Ordering::Acquire);
        match self.head {
            Some((at, count)) if count == started => Some(at),
            Some(_) => {
                self.head = None;
                None
            }
            None => None,
        }
    }

    /// The deadline that applies now, if any: none while a request is in progress.
    fn deadline(&mut self) -> Option<(Instant, StallKind)> {
        if self.activity.in_flight() {
            return None;
        }
        Some(match self.head_started() {
            Some(at) => (at + self.timeouts.header_read, StallKind::Header),
            None => (self.last_io + self.timeouts.idle, StallKind::Idle),
        })
    }

    /// Called when the inner socket is not ready: arm the timer, or fail if the deadline passed.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((deadline, kind)) = self.deadline() else {
            return Poll::Pending;
        };
        if Instant::now() < deadline {
            self.sleep.as_mut().reset(deadline);
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        metrics::counter!(crate::metrics::HTTP_TIMEOUTS, "kind" => kind.as_str()).increment(1);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("client stalled ({})", kind.as_str()),
        )))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for GuardedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let now = Instant::now();
                    this.last_io = now;
                    if !this.activity.in_flight() && this.head_started().is_none() {
                        this.head = Some((now, this.activity.started.load(Ordering::Acquire)));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.closing.is_set() && !this.activity.in_flight() {
                    // Shutting down and nothing in progress: end of stream, the connection closes.
                    return Poll::Ready(Ok(()));
                }
                this.check_stall(cx)
            }
            other => other,
        }
    }
}

impl<IO> GuardedIo<IO> {
    /// Note progress of a write, or fail it if the client has stopped reading past a timeout.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_io = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            // A client that does not read its answers stalls the connection like one that does
            // not send.
            Poll::Pending => match self.check_stall(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for GuardedIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        self.after_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn guarded(
        io: tokio::io::DuplexStream,
    ) -> (GuardedIo<tokio::io::DuplexStream>, Arc<ConnActivity>) {
        let activity = Arc::new(ConnActivity::default());
        let io = GuardedIo::new(
            io,
            activity.clone(),
            Arc::new(Closing::default()),
            ConnTimeouts {
                header_read: Duration::from_secs(5),
                idle: Duration::from_secs(30),
            },
        );
        (io, activity)
    }

    async fn read_err(io: &mut GuardedIo<tokio::io::DuplexStream>) -> io::ErrorKind {
        let mut buf = [0u8; 64];
        loop {
            match io.read(&mut buf).await {
                Ok(0) => panic!("unexpected end of stream"),
                Ok(_) => continue,
                Err(e) => return e.kind(),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
        let (client, server) = tokio::io::duplex(1024);
        let (mut io, _) = guarded(server);
        let started = Instant::now();
        assert_eq!(read_err(&mut io).await, io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_trickled_byte_by_byte_is_cut_at_the_header_timeout() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut io, _) = guarded(server);
        let trickle = tokio::spawn(async move {
            for b in b"POST /v1/events HTTP/1.1\r\nhost: x\r\n" {
                if client.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            std::future::pending::<()>().await;
        });
        let started = Instant::now();
        assert_eq!(read_err(&mut io).await, io::ErrorKind::TimedOut);
        // Cut at the header timeout, not the (longer) idle timeout, though bytes kept coming.
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_applies_while_a_request_is_in_progress() {
        let (client, server) = tokio::io::duplex(1024);
        let (mut io, activity) = guarded(server);
        let request = activity.request_started();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(120), io.read(&mut buf)).await;
        assert!(read.is_err(), "the read must still be waiting: {read:?}");
        drop(request);
        assert_eq!(read_err(&mut io).await, io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_ends_a_connection_with_nothing_in_progress() {
        let (client, server) = tokio::io::duplex(1024);
        let activity = Arc::new(ConnActivity::default());
        let closing = Arc::new(Closing::default());
        let mut io = GuardedIo::new(
            server,
            activity,
            closing.clone(),
            ConnTimeouts {
                header_read: Duration::from_secs(5),
                idle: Duration::from_secs(30),
            },
        );
        closing.start();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        drop(client);
    }
}
