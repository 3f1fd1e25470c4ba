//! Where idle cleartext HTTP/1 connections wait for their next request: one epoll set watched
//! by one thread for all of them, instead of a task, a reactor registration and a timer each.
//! A parked connection costs a slot here (its socket, what its server needs to resume it, its
//! deadline) and nothing else; its task ended when it was parked.
//!
//! When a parked socket becomes readable (the next request, or the client closing), it leaves
//! the lot and `resume` serves it (on a new task). When its keep-alive deadline passes first, it
//! is closed. [`Lot::close`] closes every parked connection at once and ends the watch.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

/// Readiness events taken from the epoll set per wake-up.
const EVENTS_PER_WAKE: usize = 256;
/// The token of the lot's own waker (never a slot: slots are far fewer).
const WAKER: Token = Token(usize::MAX);

/// Parked connections, each a socket and a `T` (what its server needs to resume it).
pub struct Lot<T> {
    inner: Mutex<Slots<T>>,
    /// Wakes the watch: a deadline earlier than any before it, or closing.
    waker: Waker,
    gauge: prometheus::IntGauge,
}

struct Slots<T> {
    registry: mio::Registry,
    slots: Vec<Option<Parked<T>>>,
    free: Vec<usize>,
    /// Deadlines, earliest first, with the slot and its generation (a slot is reused).
    deadlines: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Bumped each time a slot is filled.
    generation: u32,
    closed: bool,
}

struct Parked<T> {
    stream: TcpStream,
    deadline: Instant,
    generation: u32,
    payload: T,
}

impl<T> Slots<T> {
    fn take(&mut self, slot: usize, generation: Option<u32>) -> Option<Parked<T>> {
        let entry = self.slots.get_mut(slot)?;
        if generation.is_some_and(|g| entry.as_ref().is_some_and(|p| p.generation != g)) {
            return None;
        }
        let parked = entry.take()?;
        self.free.push(slot);
        let _ = self
            .registry
            .deregister(&mut SourceFd(&parked.stream.as_raw_fd()));
        Some(parked)
    }

    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Drops the deadlines of connections that left the lot, once they outnumber the parked
    /// ones (a connection resumed leaves its deadline behind).
    fn compact(&mut self) {
        if self.deadlines.len() <= 2 * self.len() + 1024 {
            return;
        }
        self.deadlines = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| Reverse((p.deadline, i, p.generation))))
            .collect();
    }
}

/// The lot's epoll set, for the thread that runs [`Lot::watch`].
pub struct Watch(Poll);

impl<T> Lot<T> {
    /// A new, empty lot. Fails only if the system refuses an epoll set.
    pub fn new(gauge: prometheus::IntGauge) -> io::Result<(Arc<Self>, Watch)> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let lot = Arc::new(Self {
            inner: Mutex::new(Slots {
                registry,
                slots: Vec::new(),
                free: Vec::new(),
                deadlines: BinaryHeap::new(),
                generation: 0,
                closed: false,
            }),
            waker,
            gauge,
        });
        Ok((lot, Watch(poll)))
    }

    fn slots(&self) -> MutexGuard<'_, Slots<T>> {
        // Nothing panics while the lock is held; a poisoned lot is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Parks `stream` until it becomes readable or `deadline` passes. A stream the lot cannot
    /// take (closed, or refused by epoll) is closed, and its payload dropped.
    pub fn park(&self, stream: TcpStream, deadline: Instant, payload: T) {
        let mut s = self.slots();
        if s.closed {
            return;
        }
        let slot = s.free.pop().unwrap_or(s.slots.len());
        if let Err(e) = s.registry.register(
            &mut SourceFd(&stream.as_raw_fd()),
            Token(slot),
            Interest::READABLE,
        ) {
            tracing::debug!(error = %e, "parking a connection failed; closing it");
            if slot < s.slots.len() {
                s.free.push(slot);
            }
            return;
        }
        if slot == s.slots.len() {
            s.slots.push(None);
        }
        s.generation = s.generation.wrapping_add(1);
        let generation = s.generation;
        let sooner = s
            .deadlines
            .peek()
            .is_none_or(|Reverse((d, _, _))| deadline < *d);
        s.deadlines.push(Reverse((deadline, slot, generation)));
        s.slots[slot] = Some(Parked {
            stream,
            deadline,
            generation,
            payload,
        });
        drop(s);
        self.gauge.inc();
        if sooner {
            let _ = self.waker.wake();
        }
    }

    /// How many connections are parked.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every parked connection, refuses new ones, and ends the watch.
    pub fn close(&self) {
        let parked: Vec<_> = {
            let mut s = self.slots();
            s.closed = true;
            s.deadlines.clear();
            s.free.clear();
            s.slots.drain(..).flatten().collect()
        };
        self.gauge.sub(parked.len() as i64);
        drop(parked);
        let _ = self.waker.wake();
    }

    /// Closes the connections whose deadline is at or before `now`; returns when the next one
    /// is due.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut closed = Vec::new();
        let next = {
            let mut s = self.slots();
            loop {
                match s.deadlines.peek() {
                    Some(Reverse((d, slot, g))) if *d <= now => {
                        let (slot, g) = (*slot, *g);
                        s.deadlines.pop();
                        closed.extend(s.take(slot, Some(g)));
                    }
                    Some(Reverse((d, _, _))) => break Some(*d),
                    None => break None,
                }
            }
        };
        self.gauge.sub(closed.len() as i64);
        // Dropped outside the lock: each closes its socket.
        drop(closed);
        next
    }

    /// Watches the parked sockets (blocking this thread) until [`Lot::close`]: each that
    /// becomes readable is handed to `resume`, each whose deadline passes is closed.
    pub fn watch(&self, watch: Watch, mut resume: impl FnMut(TcpStream, T)) {
        let Watch(mut poll) = watch;
        let mut events = Events::with_capacity(EVENTS_PER_WAKE);
        let mut ready = Vec::with_capacity(EVENTS_PER_WAKE);
        loop {
            let now = Instant::now();
            let timeout = self.expire(now).map(|d| d.saturating_duration_since(now));
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::warn!(error = %e, "the parked connections' epoll set failed; closing them");
                break;
            }
            {
                let mut s = self.slots();
                if s.closed {
                    break;
                }
                let woken = events.iter().filter(|e| e.token() != WAKER);
                ready.extend(woken.filter_map(|e| s.take(e.token().0, None)));
                s.compact();
            }
            self.gauge.sub(ready.len() as i64);
            for p in ready.drain(..) {
                resume(p.stream, p.payload);
            }
        }
        self.close();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::time::Duration;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (client, server)
    }

    type Resumed = mpsc::Receiver<(TcpStream, u32)>;
    type Watcher = std::thread::JoinHandle<()>;

    /// A lot watched on its own thread; what it resumes comes out of the channel.
    fn lot() -> (Arc<Lot<u32>>, Resumed, Watcher, prometheus::IntGauge) {
        let gauge = prometheus::IntGauge::new("parked", "parked").unwrap();
        let (lot, watch) = Lot::new(gauge.clone()).unwrap();
        let (tx, rx) = mpsc::channel();
        let watcher = {
            let lot = Arc::clone(&lot);
            std::thread::spawn(move || {
                lot.watch(watch, |s, id| {
                    let _ = tx.send((s, id));
                })
            })
        };
        (lot, rx, watcher, gauge)
    }

    #[test]
    fn a_parked_connection_is_resumed_when_its_client_writes_and_keeps_its_bytes() {
        let (lot, resumed, watcher, gauge) = lot();
        let (mut c1, s1) = pair();
        let (_c2, s2) = pair();
        let later = Instant::now() + Duration::from_secs(60);
        lot.park(s1, later, 1);
        lot.park(s2, later, 2);
        assert_eq!((lot.len(), gauge.get()), (2, 2));
        c1.write_all(b"GET").unwrap();
        let (mut s, id) = resumed.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(id, 1);
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(
            &buf, b"GET",
            "the bytes that woke it are still there to read"
        );
        assert_eq!((lot.len(), gauge.get()), (1, 1));
        // The slot freed is taken again; its last tenant's deadline does not apply.
        let (_c3, s3) = pair();
        lot.park(s3, later, 3);
        assert_eq!(lot.len(), 2);
        lot.close();
        watcher.join().unwrap();
        assert_eq!((lot.len(), gauge.get()), (0, 0));
    }

    #[test]
    fn a_parked_connection_is_closed_at_its_deadline_and_on_close() {
        let (lot, resumed, watcher, gauge) = lot();
        let (mut soon_c, soon) = pair();
        let (mut late_c, late) = pair();
        lot.park(late, Instant::now() + Duration::from_secs(60), 1);
        // Earlier than every deadline before it: the watch wakes to wait for it instead.
        let parked_at = Instant::now();
        lot.park(soon, parked_at + Duration::from_millis(200), 2);
        let mut buf = [0u8; 1];
        assert_eq!(soon_c.read(&mut buf).unwrap(), 0, "closed at its deadline");
        assert!(parked_at.elapsed() >= Duration::from_millis(200));
        assert_eq!((lot.len(), gauge.get()), (1, 1));
        lot.close();
        watcher.join().unwrap();
        assert_eq!(late_c.read(&mut buf).unwrap(), 0, "closed by close()");
        // Once closed, a connection offered to the lot is closed.
        let (mut c, s) = pair();
        lot.park(s, Instant::now() + Duration::from_secs(60), 3);
        assert_eq!(c.read(&mut buf).unwrap(), 0);
        assert_eq!((lot.len(), gauge.get()), (0, 0));
        assert!(resumed.try_recv().is_err(), "none was resumed");
    }
}
