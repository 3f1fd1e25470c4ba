//! Reads and writes on a shared `&TcpStream`, with deadlines: the request path reads and
//! writes its sockets directly (no codec in between), and may watch a client for hang-up
//! while it waits for the upstream.

use std::io::{self, Read};
use std::task::Poll;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use crate::lazy_timer::Lazy;

/// One read of what is there (`WouldBlock` if nothing is). A read that fills less than `dst`
/// took all the socket held, so the socket's readiness is cleared as the reactor last reported
/// it: the next read waits for the reactor's next event instead of spending a `recv` that finds
/// nothing (nginx does the same). Bytes that arrive during or after the read come with an event
/// of their own, which a clear of the earlier one leaves alone.
pub fn read_now(s: &TcpStream, dst: &mut [u8]) -> io::Result<usize> {
    let mut short = 0;
    let r = s.try_io(Interest::READABLE, || {
        match (&*socket2::SockRef::from(s)).read(dst) {
            Ok(n) if n > 0 && n < dst.len() => {
                short = n;
                Err(io::ErrorKind::WouldBlock.into())
            }
            r => r,
        }
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
        r => r,
    }
}

/// Why a read or write did not complete.
#[derive(Debug)]
pub enum IoFail {
    Timeout,
    Io(io::Error),
}

/// Reads what is there, waiting for something until `deadline` (timed by `timer`); 0 at end
/// of stream. The wait is polled by hand: this future is a few words, with no readiness or
/// timer future inside.
pub async fn read_by(
    s: &TcpStream,
    dst: &mut [u8],
    deadline: Instant,
    timer: &mut Lazy,
) -> Result<usize, IoFail> {
    loop {
        match read_now(s, dst) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = s.poll_read_ready(cx) {
                        return Poll::Ready(r.map_err(IoFail::Io));
                    }
                    timer
                        .poll_until(cx, deadline)
                        .map(|()| Err(IoFail::Timeout))
                })
                .await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IoFail::Io(e)),
        }
    }
}

/// [`read_by`] from `src`, relaying to `dst`: when `src` has nothing yet, what writes to `dst`
/// flagged `MSG_MORE` held back (`held_back`, then cleared) is pushed out first, not after the
/// wait.
pub async fn read_else_push(
    (src, dst): (&TcpStream, &TcpStream),
    room: &mut [u8],
    held_back: &mut bool,
    deadline: Instant,
    timer: &mut Lazy,
) -> Result<usize, IoFail> {
    match read_now(src, room) {
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            if std::mem::take(held_back) {
                push(dst);
            }
            read_by(src, room, deadline, timer).await
        }
        Err(e) => Err(IoFail::Io(e)),
    }
}

/// `try_write`, or with `more` a send flagged `MSG_MORE`: more bytes follow at once, so the
/// kernel holds a partial segment back to fill it with them (as HAProxy sends a body it is
/// still reading). A body of four buffers leaves as one or two segments, not four, and the
/// reader is woken once or twice, not four times. What is held is sent with the next write
/// without the flag, or by [`push`]; left alone, the kernel holds it up to 200 ms.
pub fn try_send(s: &TcpStream, bytes: &[u8], more: bool) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    if more {
        return s.try_io(Interest::WRITABLE, || {
            socket2::SockRef::from(s).send_with_flags(bytes, libc::MSG_MORE)
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = more;
    s.try_write(bytes)
}

/// Sends at once what writes flagged `MSG_MORE` left held back (setting `TCP_NODELAY` again
/// flushes pending output, tcp(7)): before waiting for the bytes that were to follow.
pub fn push(s: &TcpStream) {
    let _ = s.set_nodelay(true);
}

/// Writes all of `bytes`, each wait for room bounded by `idle`.
pub async fn write_all(
    s: &TcpStream,
    bytes: &[u8],
    idle: std::time::Duration,
) -> Result<(), IoFail> {
    send_all(s, bytes, false, idle).await
}

/// [`write_all`], the bytes flagged as followed at once with `more` ([`try_send`]).
pub async fn send_all(
    s: &TcpStream,
    mut bytes: &[u8],
    more: bool,
    idle: std::time::Duration,
) -> Result<(), IoFail> {
    while !bytes.is_empty() {
        match try_send(s, bytes, more) {
            Ok(0) => return Err(IoFail::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => bytes = &bytes[n..],
            // Boxed: a full socket is rare, and the wait's futures would otherwise make
            // every request's future larger.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Box::pin(writable_within(s, idle)).await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IoFail::Io(e)),
        }
    }
    Ok(())
}

/// Waits until `s` takes bytes again, for `idle` at most.
pub async fn writable_within(s: &TcpStream, idle: std::time::Duration) -> Result<(), IoFail> {
    match tokio::time::timeout(idle, s.writable()).await {
        Ok(r) => r.map_err(IoFail::Io),
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Resolves when the client has closed its side (or the connection failed). A client that
/// sends more (a pipelined request) is not gone: this then waits forever.
pub async fn gone(s: &TcpStream) {
    let mut probe = [0u8; 1];
    match s.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// A short read clears the readiness it took all the bytes of; bytes that come later
    /// still wake the next read, and a read that fills its buffer leaves the rest readable.
    #[tokio::test]
    async fn a_short_read_waits_for_the_next_bytes_and_a_full_one_reads_on() {
        let (mut w, r) = pair().await;
        let mut timer = Lazy::default();
        let deadline = || Instant::now() + std::time::Duration::from_secs(5);
        let mut buf = [0u8; 8];
        w.write_all(b"abc").await.unwrap();
        assert_eq!(
            read_by(&r, &mut buf, deadline(), &mut timer).await.unwrap(),
            3
        );
        // The readiness is cleared: a wait registers instead of reporting stale readiness
        // (which a read that found nothing would otherwise have had to clear).
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(r.poll_read_ready(&mut cx).is_pending());
        let late = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            w.write_all(b"0123456789").await.unwrap();
            w
        });
        assert_eq!(
            read_by(&r, &mut buf, deadline(), &mut timer).await.unwrap(),
            8
        );
        assert_eq!(&buf, b"01234567");
        // The buffer was filled: the rest is read without another wake-up.
        assert_eq!(
            read_by(&r, &mut buf, deadline(), &mut timer).await.unwrap(),
            2
        );
        let w = late.await.unwrap();
        drop(w);
        assert_eq!(
            read_by(&r, &mut buf, deadline(), &mut timer).await.unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn a_read_with_nothing_coming_times_out() {
        let (_w, r) = pair().await;
        let mut timer = Lazy::default();
        let mut buf = [0u8; 8];
        let by = Instant::now() + std::time::Duration::from_millis(50);
        assert!(matches!(
            read_by(&r, &mut buf, by, &mut timer).await,
            Err(IoFail::Timeout)
        ));
    }
}
