//! The guards a request holds: a slot ([`Permit`]), a place in line ([`Ticket`]) and an early
//! returner's hold ([`Hold`]). Each gives back what it holds when dropped, so a client that
//! disconnects or resets its stream leaves no residue.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::super::queue::Place;
use super::{Gate, Waiter, EVICTED, GRANTED, TAKEN, WAITING};

/// Held by an admitted request; frees its slot (to the head of the line) when dropped.
#[must_use]
pub struct Permit {
    pub(super) gate: &'static Gate,
}

impl Permit {
    /// The id of its gate ([`Gate::by_id`]); `u32::MAX` for a gate that is not the process's.
    pub fn gate_id(&self) -> u32 {
        self.gate.id.load(Ordering::Relaxed)
    }

    /// Gives the slot up without freeing it: someone else frees it with
    /// [`Gate::release_disarmed`].
    pub fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release_slot();
    }
}

/// A place in line. Dropped while waiting it leaves the line; dropped after being granted a slot
/// it was never used for, it frees the slot.
#[must_use]
pub struct Ticket {
    pub(super) gate: &'static Gate,
    pub(super) place: Place,
    pub(super) waiter: Arc<Waiter>,
    /// When the client first asked (kept for its next attempt).
    pub first_ms: u64,
    /// The client came back before its time.
    pub early: bool,
}

impl Ticket {
    /// Resolves when the slot is granted or the place is lost to a better one; then call
    /// [`Ticket::take`]. A wake-up sent before this is awaited is not lost.
    pub async fn notified(&self) {
        self.waiter.notify.notified().await;
    }

    /// The slot, if it was granted; `Err(true)` if the place was lost to a better request.
    pub fn take(&self) -> Result<Permit, bool> {
        match self.waiter.state.compare_exchange(
            GRANTED,
            TAKEN,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Ok(Permit { gate: self.gate }),
            Err(s) => Err(s == EVICTED),
        }
    }

    /// Waits until the slot is granted (`Some`), the place is lost to a better request or
    /// `deadline` passes (`None`). Allocates nothing: the timer and the wake-up are held in this
    /// future, inside the request's own.
    pub async fn granted_by(&self, deadline: tokio::time::Instant) -> Option<Permit> {
        loop {
            match self.take() {
                Ok(permit) => return Some(permit),
                Err(true) => return None,
                Err(false) => {}
            }
            tokio::time::timeout_at(deadline, self.notified())
                .await
                .ok()?;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut line = self.gate.line();
        match self.waiter.state.load(Ordering::Acquire) {
            WAITING if line.leave(self.place).is_some() => {
                self.gate.waiting.0.fetch_sub(1, Ordering::SeqCst);
            }
            GRANTED => {
                // Granted but never taken (the client went away at that moment): pass it on.
                self.waiter.state.store(TAKEN, Ordering::Release);
                self.gate.inflight.0.fetch_sub(1, Ordering::SeqCst);
                self.gate.dispatch(&mut line);
            }
            _ => {}
        }
    }
}

/// An early returner held before its reject, counted while held.
#[must_use]
pub struct Hold {
    pub(super) gate: &'static Gate,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.gate.held.fetch_sub(1, Ordering::AcqRel);
    }
}
