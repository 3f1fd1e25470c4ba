//! `floor`: the least an HTTP/1.1 reverse proxy can do for a request, to measure what the
//! system calls and the loopback TCP stack alone cost on the machine (`benches/load.sh` runs it
//! beside nginx, HAProxy and warmgate).
//!
//! Each client connection gets one upstream connection of its own, opened with it. A request
//! head goes out byte for byte (no header added, dropped or checked); the response comes back
//! as it is read, framed by its `Content-Length`. Per request that is one read and one write on
//! each side, as for any proxy that keeps its upstream connections alive. It is not a proxy:
//! requests with a body, interim responses, responses with a body but no `Content-Length`, and
//! anything else a proxy has to handle end the connection. One thread (tokio's current-thread
//! runtime), as warmgate with `server.workers = 1`.

use std::net::SocketAddr;
use std::sync::LazyLock;

use anyhow::{bail, Context};
use memchr::memmem::Finder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(clap::Args, Debug)]
pub struct FloorConfig {
    /// Where to listen (a loopback address).
    #[arg(long, default_value = "127.0.0.1:18089")]
    pub listen: SocketAddr,
    /// The upstream (a loopback address).
    #[arg(long)]
    pub upstream: SocketAddr,
}

/// A request head larger than this ends its connection.
const HEAD_MAX: usize = 16 * 1024;
/// What one read of a response takes at most.
const READ: usize = 64 * 1024;

pub async fn run(cfg: FloorConfig) -> anyhow::Result<()> {
    if !cfg.listen.ip().is_loopback() || !cfg.upstream.ip().is_loopback() {
        bail!("floor listens and connects on loopback addresses only");
    }
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    eprintln!("floor: {} -> {}", cfg.listen, cfg.upstream);
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("floor: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let upstream = cfg.upstream;
        tokio::spawn(async move {
            if let Err(e) = relay(client, upstream).await {
                // A client that goes away (a load generator stopping) is no news.
                let gone = e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    )
                });
                if !gone {
                    eprintln!("floor: {e:#}");
                }
            }
        });
    }
}

/// Relays the requests of one client connection until it closes.
async fn relay(mut client: TcpStream, upstream: SocketAddr) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let mut up = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("connecting to {upstream}"))?;
    up.set_nodelay(true)?;
    let mut req = vec![0u8; HEAD_MAX];
    let mut held = 0;
    let mut resp = vec![0u8; READ];
    loop {
        // A request head (and whatever of the next came with it).
        let end = loop {
            if let Some(end) = head_end(&req[..held]) {
                break end;
            }
            if held == req.len() {
                bail!("a request head over {HEAD_MAX} bytes");
            }
            let n = client.read(&mut req[held..]).await?;
            if n == 0 {
                return Ok(());
            }
            held += n;
        };
        let head = &req[..end];
        if length(head)?.unwrap_or(0) != 0 || has(head, b"transfer-encoding") {
            bail!("a request with a body");
        }
        // The response to a HEAD has no body whatever its Content-Length says.
        let bodiless = head.starts_with(b"HEAD ");
        up.write_all(head).await?;
        req.copy_within(end..held, 0);
        held -= end;

        // Its response: the head and the body that came with it in one write, then the rest
        // of the body as it is read.
        let mut got = 0;
        let total = loop {
            let n = up.read(&mut resp[got..]).await?;
            if n == 0 {
                bail!("the upstream closed the connection before a response");
            }
            got += n;
            if let Some(end) = head_end(&resp[..got]) {
                // The status code, after "HTTP/1.1 ".
                let status = resp.get(9..12).unwrap_or_default();
                if status.starts_with(b"1") {
                    bail!("an interim response");
                }
                // No body after a 204 or a 304 either.
                if bodiless || status == b"204" || status == b"304" {
                    break end;
                }
                match length(&resp[..end])? {
                    Some(len) => break end + len,
                    None => bail!("a response without a Content-Length"),
                }
            }
            if got == resp.len() {
                bail!("a response head over {READ} bytes");
            }
        };
        let now = got.min(total);
        client.write_all(&resp[..now]).await?;
        let mut left = total - now;
        while left > 0 {
            let n = up.read(&mut resp[..left.min(READ)]).await?;
            if n == 0 {
                bail!("the upstream closed the connection inside a body");
            }
            client.write_all(&resp[..n]).await?;
            left -= n;
        }
    }
}

/// The length of the head at the start of `b`, its blank line included, once it is all there.
fn head_end(b: &[u8]) -> Option<usize> {
    static END: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n\r\n"));
    END.find(b).map(|i| i + 4)
}

/// The head's lines after the first, without their line ends.
fn fields(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', head)
        .map(move |end| {
            let line = &head[start..end];
            start = end + 1;
            line.strip_suffix(b"\r").unwrap_or(line)
        })
        .skip(1)
}

/// Whether the head has a field named `name` (lowercase).
fn has(head: &[u8], name: &[u8]) -> bool {
    fields(head).any(|l| value_of(l, name).is_some())
}

/// The value of line `l` if it is the field `name` (lowercase).
fn value_of<'a>(l: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = l.get(name.len()..)?;
    (l[..name.len()].eq_ignore_ascii_case(name) && rest.first() == Some(&b':')).then(|| &rest[1..])
}

/// The head's `Content-Length`, if it has one.
fn length(head: &[u8]) -> anyhow::Result<Option<usize>> {
    // Found at once when spelt as usual, looked for line by line otherwise.
    static USUAL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\nContent-Length:"));
    let usual = USUAL.find(head).map(|i| {
        let v = &head[i + 17..];
        &v[..memchr::memchr(b'\r', v).unwrap_or(v.len())]
    });
    let Some(v) = usual.or_else(|| fields(head).find_map(|l| value_of(l, b"content-length")))
    else {
        return Ok(None);
    };
    let v = std::str::from_utf8(v).context("a Content-Length that is not text")?;
    Ok(Some(v.trim().parse().with_context(|| {
        format!("a Content-Length that is not a number: {v:?}")
    })?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_their_framing_are_found() {
        let usual = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nServer: x\r\n\r\n";
        assert_eq!(length(usual).unwrap(), Some(7));
        let r = b"HTTP/1.1 200 OK\r\nServer: x\r\nCONTENT-LENGTH: 12\r\n\r\nbody";
        let end = head_end(r).unwrap();
        assert_eq!(&r[end..], b"body");
        assert_eq!(length(&r[..end]).unwrap(), Some(12));
        assert!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n").is_none());
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(length(get).unwrap(), None);
        assert!(!has(get, b"transfer-encoding"));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(has(chunked, b"transfer-encoding"));
        assert!(length(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn a_response_is_relayed_whole_and_the_connection_kept() {
        // An upstream that answers each request head with a 70,000-byte body.
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = up.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut held = 0;
            loop {
                let n = s.read(&mut buf[held..]).await.unwrap();
                if n == 0 {
                    return;
                }
                held += n;
                while let Some(end) = head_end(&buf[..held]) {
                    let to_head = buf.starts_with(b"HEAD ");
                    buf.copy_within(end..held, 0);
                    held -= end;
                    let body = vec![b'x'; 70_000];
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    s.write_all(head.as_bytes()).await.unwrap();
                    if !to_head {
                        s.write_all(&body).await.unwrap();
                    }
                }
            }
        });
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let proxy = tokio::spawn(async move {
            let (c, _) = front.accept().await.unwrap();
            relay(c, up_addr).await
        });
        // Bounded: a relay that waits for bytes that never come fails the test.
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), async move {
            let mut c = TcpStream::connect(front_addr).await.unwrap();
            // Two requests in one write (pipelined), then a third.
            c.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            let one = b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n".len() + 70_000;
            let mut got = vec![0u8; 2 * one];
            c.read_exact(&mut got).await.unwrap();
            // A HEAD: its response is the head alone.
            c.write_all(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            let mut head = vec![0u8; one - 70_000];
            c.read_exact(&mut head).await.unwrap();
            assert!(head.ends_with(b"Content-Length: 70000\r\n\r\n"));
            c.write_all(b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            let mut third = vec![0u8; one];
            c.read_exact(&mut third).await.unwrap();
            assert!(third.starts_with(b"HTTP/1.1 200 OK\r\n"));
            assert_eq!(third[one - 1], b'x');
            // A request with a body ends the connection.
            c.write_all(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
                .await
                .unwrap();
            assert_eq!(c.read(&mut third).await.unwrap(), 0);
            proxy.await.unwrap().unwrap_err()
        })
        .await
        .unwrap();
        assert!(e.to_string().contains("with a body"), "{e:#}");
    }
}
