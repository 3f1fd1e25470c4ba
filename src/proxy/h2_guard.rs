//! A guard on HTTP/2 connections against control-frame floods. Every SETTINGS and PING a
//! client sends must be acknowledged, so a client that sends them without end makes the proxy
//! work for nothing (the h2 library answers each one forever). The guard reads the frame
//! headers as they pass (it never buffers or changes a byte), counts SETTINGS and PING frames
//! that ask for an answer, and past the budget sends `GOAWAY` with `ENHANCE_YOUR_CALM` and ends
//! the connection. It writes its GOAWAY only between two of the server's frames.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Control frames a client may send per window before it is told to calm down.
pub const CONTROL_BUDGET: u32 = 1000;
/// The window the budget applies to.
pub const CONTROL_WINDOW: Duration = Duration::from_secs(10);

/// Follows frame boundaries in one direction of an HTTP/2 byte stream.
#[derive(Debug, Default)]
struct Frames {
    skip: usize,
    header: [u8; FRAME_HEADER],
    have: usize,
    payload_left: usize,
}

impl Frames {
    fn after_preface(skip: usize) -> Self {
        Self {
            skip,
            ..Self::default()
        }
    }

    /// Feeds bytes; calls `on_header(type, flags, stream)` for each complete frame header.
    fn feed(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(u8, u8, u32)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (FRAME_HEADER - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == FRAME_HEADER {
                    let h = self.header;
                    self.have = 0;
                    self.payload_left =
                        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    on_header(h[3], h[4], stream);
                }
            }
        }
    }

    /// Between two frames.
    fn at_boundary(&self) -> bool {
        self.skip == 0 && self.have == 0 && self.payload_left == 0
    }
}

/// `S` (an HTTP/2 server connection), with a budget on the client's control frames.
pub struct H2Guard<S> {
    inner: S,
    reads: Frames,
    writes: Frames,
    window_start: Instant,
    control: u32,
    last_stream: u32,
    /// The GOAWAY to send and how much of it is written; set once the budget is spent.
    goaway: Option<([u8; 17], usize)>,
}

impl<S> H2Guard<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            reads: Frames::after_preface(PREFACE_LEN),
            writes: Frames::default(),
            window_start: Instant::now(),
            control: 0,
            last_stream: 0,
            goaway: None,
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        let mut control = 0;
        let mut last = self.last_stream;
        self.reads.feed(bytes, |kind, flags, stream| {
            if (kind == SETTINGS || kind == PING) && flags & ACK == 0 {
                control += 1;
            } else if kind == HEADERS {
                last = last.max(stream);
            }
        });
        self.last_stream = last;
        if control == 0 {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.window_start) > CONTROL_WINDOW {
            self.window_start = now;
            self.control = 0;
        }
        self.control = self.control.saturating_add(control);
        if self.control > CONTROL_BUDGET && self.goaway.is_none() {
            let mut f = [0u8; 17];
            f[2] = 8; // payload length
            f[3] = 0x7; // GOAWAY
            f[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
            f[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
            self.goaway = Some((f, 0));
            tracing::debug!(
                frames = self.control,
                "HTTP/2 control-frame flood; sending GOAWAY (ENHANCE_YOUR_CALM)"
            );
        }
    }

    fn calm_down() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "HTTP/2 control-frame flood (GOAWAY ENHANCE_YOUR_CALM sent)",
        )
    }
}

impl<S: AsyncWrite + Unpin> H2Guard<S> {
    /// Writes what is left of the GOAWAY, if one is due and the server is between frames.
    /// Ready once there is nothing more to write.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((frame, done)) = self.goaway.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if *done == 0 && !self.writes.at_boundary() {
            // Mid-frame (rare: hyper writes whole frames): close without a word.
            return Poll::Ready(Ok(()));
        }
        while *done < frame.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &frame[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for H2Guard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.goaway.is_some() {
            return match this.poll_goaway(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(_) => Poll::Ready(Err(Self::calm_down())),
            };
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.saw(&buf.filled()[before..]);
            if this.goaway.is_some() {
                // Hand over nothing more; the next read sends the GOAWAY and ends it.
                buf.set_filled(before);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H2Guard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.goaway.is_some() {
            return match this.poll_goaway(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(_) => Poll::Ready(Err(Self::calm_down())),
            };
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.writes.feed(&buf[..n], |_, _, _| {});
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn follows_frames_split_anywhere() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0; 6]));
        bytes.extend(frame(HEADERS, 0x4, 5, &[1, 2, 3]));
        bytes.extend(frame(PING, ACK, 0, &[0; 8]));
        for split in 1..bytes.len() {
            let mut f = Frames::after_preface(PREFACE_LEN);
            let mut seen = Vec::new();
            for chunk in bytes.chunks(split) {
                f.feed(chunk, |k, fl, s| seen.push((k, fl, s)));
            }
            assert_eq!(
                seen,
                [(SETTINGS, 0, 0), (HEADERS, 0x4, 5), (PING, ACK, 0)],
                "split {split}"
            );
            assert!(f.at_boundary());
        }
    }

    #[tokio::test]
    async fn a_ping_flood_gets_goaway_enhance_your_calm() {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut g = H2Guard::new(server);
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(HEADERS, 0x4, 3, &[]));
        for _ in 0..=CONTROL_BUDGET {
            bytes.extend(frame(PING, 0, 0, &[0; 8]));
        }
        client.write_all(&bytes).await.unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let err = loop {
            match g.read(&mut sink).await {
                Ok(0) => panic!("end of stream before the flood was noticed"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        drop(g);
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert_eq!(out.len(), 17);
        assert_eq!(out[3], 0x7, "GOAWAY");
        assert_eq!(&out[9..13], &3u32.to_be_bytes(), "last stream seen");
        assert_eq!(&out[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
    }

    #[tokio::test]
    async fn a_few_control_frames_pass() {
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut g = H2Guard::new(server);
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for _ in 0..50 {
            bytes.extend(frame(PING, 0, 0, &[0; 8]));
        }
        client.write_all(&bytes).await.unwrap();
        drop(client);
        let mut all = Vec::new();
        g.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, bytes, "passed through unchanged");
    }
}
