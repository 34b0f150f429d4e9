//! The gateway's connection handling, bounded so that idle or slow clients cannot starve the
//! daemon: a cap on concurrent connections (further clients wait in the kernel's accept queue,
//! costing the daemon no descriptor), a deadline for request headers and an idle timeout.

use crate::gateway::Peer;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::time::{Instant, Sleep};

/// At most this many connections are served at once. Kept well under the unit's
/// `LimitNOFILE` (systemd/numa-cached.service), so the engine always has descriptors left.
pub const MAX_CONNECTIONS: usize = 256;
/// A request's headers must arrive within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that neither sends nor receives anything for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A listener the gateway accepts from.
pub(crate) trait Accept: Send + 'static {
    /// The connection type.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection and who is on the other end.
    fn next(&self) -> impl Future<Output = io::Result<(Self::Stream, Peer)>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next(&self) -> io::Result<(Self::Stream, Peer)> {
        let (s, addr) = self.accept().await?;
        Ok((s, Peer::Tcp(addr)))
    }
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> io::Result<(Self::Stream, Peer)> {
        let (s, _) = self.accept().await?;
        let creds = s.peer_cred().ok().map(|c| (c.pid(), c.uid()));
        Ok((s, Peer::Unix(creds)))
    }
}

/// Serve `router` on `listener` until `stop` fires, then let running requests finish.
pub(crate) async fn serve<L: Accept>(
    listener: L,
    router: Router,
    mut stop: broadcast::Receiver<()>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (draining, _) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.recv() => break,
        };
        let accepted = tokio::select! {
            a = listener.next() => a,
            _ = stop.recv() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the connection stays queued.
                tracing::warn!("the HTTP gateway could not accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service =
            TowerToHyperService::new(router.clone().layer(axum::Extension(ConnectInfo(peer))));
        let mut drain = draining.subscribe();
        conns.spawn(async move {
            let _slot = permit;
            let io = TokioIo::new(Idle::new(stream, IDLE_TIMEOUT));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = drain.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    let _ = draining.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// A stream that fails with `TimedOut` once nothing has moved in either direction for
/// `limit`.
struct Idle<S> {
    inner: S,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Idle<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Idle {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn progressed(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.limit);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the HTTP client was idle too long")
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                self.progressed();
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
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
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut idle = Idle::new(a, Duration::from_millis(200));
        let mut buf = [0u8; 8];
        tokio::io::AsyncWriteExt::write_all(&mut b, b"x")
            .await
            .unwrap();
        assert_eq!(idle.read(&mut buf).await.unwrap(), 1);
        let e = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
