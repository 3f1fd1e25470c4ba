//! A WebSocket tunnel after a `101 Switching Protocols`: bytes copied both ways until either
//! side closes or neither sends anything for the idle timeout. It holds no admission slot (the
//! backend's work per message is not a request we can gate); the open ones are counted in
//! `warmgate_websocket_tunnels`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Copies `r` into `w` until end of stream, noting the time of each chunk in `last`.
async fn pump<R, W>(mut r: R, mut w: W, base: Instant, last: &AtomicU64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        last.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Copies both ways between `a` and `b` until both directions end, either fails, or nothing
/// moves for `idle`.
pub async fn copy_until_idle<A, B>(a: A, b: B, idle: Duration) -> &'static str
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let base = Instant::now();
    let last = AtomicU64::new(0);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let both = async { tokio::try_join!(pump(ar, bw, base, &last), pump(br, aw, base, &last)) };
    let watchdog = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = base + since + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        r = both => if r.is_ok() { "closed" } else { "failed" },
        () = watchdog => "idle",
    }
}

/// Runs the tunnel once both sides have switched protocols.
pub async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    gauge: prometheus::IntGauge,
    _busy: super::phases::Active,
) {
    let (c, u) = match tokio::try_join!(client, upstream) {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket upgrade did not complete");
            return;
        }
    };
    gauge.inc();
    let how = copy_until_idle(TokioIo::new(c), TokioIo::new(u), idle).await;
    gauge.dec();
    tracing::debug!(ended = how, "WebSocket tunnel closed");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn copies_both_ways_and_closes_when_idle() {
        let (a, mut a_peer) = tokio::io::duplex(1024);
        let (b, mut b_peer) = tokio::io::duplex(1024);
        let t = tokio::spawn(copy_until_idle(a, b, Duration::from_secs(60)));
        a_peer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        b_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        tokio::time::sleep(Duration::from_secs(50)).await;
        b_peer.write_all(b"pong").await.unwrap();
        a_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        let start = Instant::now();
        assert_eq!(t.await.unwrap(), "idle");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(59),
            "idle counted from the last byte: {waited:?}"
        );
    }
}
