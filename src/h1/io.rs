//! Reads and writes on a shared `&TcpStream`, with deadlines: the request path reads and
//! writes its sockets directly (no codec in between), and may watch a client for hang-up
//! while it waits for the upstream.

use std::io;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Why a read or write did not complete.
#[derive(Debug)]
pub enum IoFail {
    Timeout,
    Io(io::Error),
}

/// Reads what is there (waiting for something until `deadline`); 0 at end of stream.
pub async fn read_by(s: &TcpStream, dst: &mut [u8], deadline: Instant) -> Result<usize, IoFail> {
    loop {
        match s.try_read(dst) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout_at(deadline, s.readable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(IoFail::Io(e)),
                    Err(_) => return Err(IoFail::Timeout),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IoFail::Io(e)),
        }
    }
}

/// A connection's timer for its waits on the upstream, moved forward only when it fires: a
/// busy connection does not register a timer per request (each wait's deadline is later than
/// the last, so the timer, if it fires early, is set again then).
#[derive(Default)]
pub struct Lazy(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl Lazy {
    /// Resolves at `deadline`.
    pub async fn until(&mut self, deadline: Instant) {
        let s = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if s.deadline() > deadline {
            s.as_mut().reset(deadline);
        }
        loop {
            s.as_mut().await;
            if s.deadline() >= deadline {
                return;
            }
            s.as_mut().reset(deadline);
        }
    }
}

/// [`read_by`], its waits timed by `timer`.
pub async fn read_timed(
    s: &TcpStream,
    dst: &mut [u8],
    deadline: Instant,
    timer: &mut Lazy,
) -> Result<usize, IoFail> {
    loop {
        match s.try_read(dst) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    biased;
                    r = s.readable() => r.map_err(IoFail::Io)?,
                    () = timer.until(deadline) => return Err(IoFail::Timeout),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IoFail::Io(e)),
        }
    }
}

/// Writes all of `bytes`, each wait for room bounded by `idle`.
pub async fn write_all(
    s: &TcpStream,
    mut bytes: &[u8],
    idle: std::time::Duration,
) -> Result<(), IoFail> {
    while !bytes.is_empty() {
        match s.try_write(bytes) {
            Ok(0) => return Err(IoFail::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(idle, s.writable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(IoFail::Io(e)),
                    Err(_) => return Err(IoFail::Timeout),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IoFail::Io(e)),
        }
    }
    Ok(())
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
