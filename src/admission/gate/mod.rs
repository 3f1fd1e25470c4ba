//! The gate: the per-request decision (admit, wait in line, or reject with a reason).
//!
//! The fast path is atomics only: the stage check against the controller's last [`Decision`],
//! then a compare-and-swap on the shared in-flight count while nobody waits. Only a request that
//! finds the limit full touches the wait line (a mutex around an ordered map, held for a push or
//! a pop): at that point the request is going to wait for a backend that takes milliseconds, so
//! a lock of a few hundred nanoseconds is not what limits anyone, and it buys an exact order
//! (priority, then first arrival) that a lock-free structure could only approximate.
//!
//! Every slot, place in line and hold is a guard released on drop ([`Permit`], [`Ticket`],
//! [`Hold`]): a client that disconnects or resets its stream while queued leaves no residue.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::budget::ClientBudget;
use super::clients::{ClientEntry, ClientTable};
use super::controller::Decision;
use super::priority::{PerPriority, Priority};
use super::queue::{Joined, Line, Place};
use super::retry::mix64;

mod guards;
mod memory;
#[cfg(test)]
mod tests;
mod types;

pub use super::controller::TickCounters;
pub use guards::{Hold, Permit, Ticket};
pub use memory::feature_key;
pub use types::{Admission, Ask, FeatureState, GatePolicy, Reject, RejectReason};

/// Keeps a hot counter on its own cache line, so cores updating neighbours do not collide.
#[repr(align(64))]
#[derive(Default)]
struct Padded<T>(T);

const WAITING: u8 = 0;
const GRANTED: u8 = 1;
const EVICTED: u8 = 2;
const TAKEN: u8 = 3;

/// One request waiting in line.
#[derive(Default)]
pub struct Waiter {
    state: AtomicU8,
    notify: Notify,
}

/// Shared admission state, one per process, kept across reloads. It lives as long as the
/// process ([`Gate::leak`]), so a permit is a plain reference: no reference count to bounce
/// between cores on every request.
pub struct Gate {
    inflight: Padded<AtomicU32>,
    limit: Padded<AtomicU32>,
    waiting: Padded<AtomicU32>,
    peak_inflight: Padded<AtomicU32>,
    nonce: Padded<AtomicU64>,
    pressed: Padded<AtomicU64>,
    shed: Padded<AtomicU64>,
    admitted: [Padded<AtomicU64>; 4],
    ceiling: AtomicU32,
    slow_start: AtomicBool,
    held: AtomicU32,
    line: Mutex<Line<Arc<Waiter>>>,
    early: ClientTable,
    grace: ClientTable,
    budget: ClientBudget,
    /// Its number among the process's gates (`u32::MAX`: not one of them).
    id: AtomicU32,
    /// In a fleet: what this gate told clients (when to come back, their first arrival), for
    /// the tick to share with the other instances (a bounded lock-free queue; full: dropped).
    told: std::sync::OnceLock<crossbeam_queue::ArrayQueue<(u64, ClientEntry)>>,
}

/// How many told entries wait for the next tick at most.
const TOLD_QUEUE: usize = 16_384;

/// Every process-lifetime gate, by id: what lets a slot held by a connection be released from
/// that connection's write path (one lock at gate creation and at a stall, never per request).
static GATES: std::sync::RwLock<Vec<&'static Gate>> = std::sync::RwLock::new(Vec::new());

/// Client memory is kept this long after the time a client was told.
const CLIENT_KEEP_MS: u64 = 120_000;

impl Gate {
    /// A gate whose client tables hold `client_slots` entries each and whose line holds
    /// `max_len` requests.
    pub fn new(client_slots: usize, max_len: usize) -> Self {
        Self {
            inflight: Padded::default(),
            limit: Padded(AtomicU32::new(1)),
            waiting: Padded::default(),
            peak_inflight: Padded::default(),
            nonce: Padded::default(),
            pressed: Padded::default(),
            shed: Padded::default(),
            admitted: Default::default(),
            ceiling: AtomicU32::new(u32::MAX),
            slow_start: AtomicBool::new(false),
            held: AtomicU32::new(0),
            line: Mutex::new(Line::new(max_len)),
            early: ClientTable::new(client_slots, CLIENT_KEEP_MS),
            grace: ClientTable::new(client_slots, 0),
            budget: ClientBudget::new(client_slots),
            id: AtomicU32::new(u32::MAX),
            told: std::sync::OnceLock::new(),
        }
    }

    /// A process-lifetime gate (one per process; reloads keep it).
    pub fn leak(client_slots: usize, max_len: usize) -> &'static Gate {
        let gate: &'static Gate = Box::leak(Box::new(Gate::new(client_slots, max_len)));
        let mut all = GATES.write().unwrap_or_else(|e| e.into_inner());
        gate.id.store(all.len() as u32, Ordering::Relaxed);
        all.push(gate);
        gate
    }

    /// The process-lifetime gate numbered `id` ([`Permit::gate_id`]).
    pub fn by_id(id: u32) -> Option<&'static Gate> {
        let all = GATES.read().unwrap_or_else(|e| e.into_inner());
        all.get(id as usize).copied()
    }

    /// Frees one slot held by a permit that was [`Permit::disarm`]ed (a response handed to a
    /// slow client: its slot is released while the body still streams).
    pub fn release_disarmed(&self) {
        self.release_slot();
    }

    fn line(&self) -> MutexGuard<'_, Line<Arc<Waiter>>> {
        // Nothing panics while holding it; if something did, the line is still consistent.
        self.line.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests admitted and not yet finished.
    pub fn inflight(&self) -> u32 {
        self.inflight.0.load(Ordering::Acquire)
    }

    /// The in-flight limit now.
    pub fn limit(&self) -> u32 {
        self.limit.0.load(Ordering::Acquire)
    }

    /// Requests waiting in line.
    pub fn waiting(&self) -> u32 {
        self.waiting.0.load(Ordering::Acquire)
    }

    /// Early returners held before their reject.
    pub fn held(&self) -> u32 {
        self.held.load(Ordering::Acquire)
    }

    /// Changes the bound on the line (a reload).
    pub fn set_max_len(&self, max_len: usize) {
        self.line().set_max_len(max_len);
    }

    /// Publishes the controller's limit; `ceiling` bounds slow start's growth on the data path.
    /// A larger limit serves the line at once.
    pub fn set_limit(&self, limit: u32, ceiling: u32, slow_start: bool) {
        self.ceiling.store(ceiling.max(1), Ordering::Release);
        self.slow_start.store(slow_start, Ordering::Release);
        self.limit.0.store(limit.max(1), Ordering::SeqCst);
        if self.waiting.0.load(Ordering::SeqCst) > 0 {
            self.dispatch(&mut self.line());
        }
    }

    /// Slow start on the data path: a request came back at the no-load latency while demand
    /// filled at least half the limit, so one more may go (TCP's +1 per acknowledgement).
    pub fn fast_completion(&self) {
        if !self.slow_start.load(Ordering::Relaxed) {
            return;
        }
        let limit = self.limit.0.load(Ordering::Relaxed);
        if limit >= self.ceiling.load(Ordering::Relaxed)
            || self.inflight.0.load(Ordering::Relaxed) * 2 < limit
        {
            return;
        }
        // A lost race only skips one increment.
        let _ =
            self.limit
                .0
                .compare_exchange(limit, limit + 1, Ordering::SeqCst, Ordering::Relaxed);
        if self.waiting.0.load(Ordering::SeqCst) > 0 {
            self.dispatch(&mut self.line());
        }
    }

    /// Counters since the last call (the controller reads these once per tick).
    pub fn take_tick_counters(&self) -> TickCounters {
        let now = self.inflight();
        TickCounters {
            peak_inflight: self.peak_inflight.0.swap(now, Ordering::AcqRel).max(now),
            pressed: self.pressed.0.swap(0, Ordering::AcqRel),
            admitted: std::array::from_fn(|i| self.admitted[i].0.swap(0, Ordering::AcqRel)),
            shed: self.shed.0.swap(0, Ordering::AcqRel),
            waiting: self.line().per_priority(),
            limit: self.limit(),
        }
    }

    /// Requests in line by priority (takes the line's lock: for status, not the hot path).
    pub fn waiting_by_priority(&self) -> PerPriority<u32> {
        self.line().per_priority()
    }

    /// Clients currently remembered as told to wait.
    pub fn waiting_clients(&self, now_ms: u64) -> usize {
        self.early.live(now_ms)
    }

    /// Admits, queues or rejects one request. `rate_ok` is asked only when everything else admits.
    pub fn admit(
        &'static self,
        d: &Decision,
        policy: &GatePolicy,
        ask: Ask,
        rate_ok: impl FnOnce() -> bool,
    ) -> Admission {
        let p = ask.priority.index();
        if let Some(rate) = policy.per_client_rate {
            if ask.state != FeatureState::Off {
                if let Err(wait_s) = self.budget.take(ask.client, rate, ask.now_ms) {
                    // The client's own doing: a 429 after its next token, jittered, and its
                    // memory (first arrival, early return) left as it was.
                    let rand = mix64(self.nonce.0.fetch_add(1, Ordering::Relaxed) ^ ask.client);
                    return Admission::Rejected(Reject {
                        reason: RejectReason::ClientRate,
                        retry_after_s: policy.retry.retry_after(wait_s, rand),
                        early: false,
                        first_ms: self.recall(ask).0,
                    });
                }
            }
        }
        let stage_closed = ask.state == FeatureState::Auto
            && d.engaged
            && !d.open[p]
            && !self.in_grace(policy, ask);
        if ask.state == FeatureState::Off || stage_closed || !rate_ok() {
            let reason = if ask.state == FeatureState::Off {
                RejectReason::FeatureOff
            } else if stage_closed {
                self.shed.0.fetch_add(1, Ordering::Relaxed);
                RejectReason::Stage
            } else {
                RejectReason::Rate
            };
            let (first_ms, early) = self.recall(ask);
            return Admission::Rejected(self.refuse(
                d,
                policy,
                ask,
                reason,
                first_ms,
                early,
                (0, 0),
            ));
        }
        if self.waiting.0.load(Ordering::SeqCst) == 0 && self.acquire() {
            return Admission::Admitted(self.admitted_now(policy, ask));
        }
        self.pressed.0.fetch_add(1, Ordering::Relaxed);
        let (first_ms, early) = self.recall(ask);
        if policy.max_wait_ms[p] == 0 || ask.over_share {
            let reason = if ask.over_share {
                RejectReason::ClientLimit
            } else {
                RejectReason::QueueFull
            };
            let ahead = {
                let line = self.line();
                (
                    line.at_or_above(ask.priority),
                    line.per_priority()[p] as usize,
                )
            };
            return Admission::Rejected(
                self.refuse(d, policy, ask, reason, first_ms, early, ahead),
            );
        }
        let seq = self.nonce.0.fetch_add(1, Ordering::Relaxed);
        let place = Place::new(ask.priority, first_ms, seq);
        let waiter = Arc::new(Waiter::default());
        let mut line = self.line();
        match line.join(place, Arc::clone(&waiter)) {
            Joined::Refused => {
                let ahead = (
                    line.at_or_above(ask.priority),
                    line.per_priority()[p] as usize,
                );
                drop(line);
                return Admission::Rejected(self.refuse(
                    d,
                    policy,
                    ask,
                    RejectReason::QueueFull,
                    first_ms,
                    early,
                    ahead,
                ));
            }
            Joined::Evicted(_, worst) => {
                worst.state.store(EVICTED, Ordering::Release);
                worst.notify.notify_one();
            }
            Joined::Joined => {
                self.waiting.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.dispatch(&mut line);
        drop(line);
        Admission::Queued(Ticket {
            gate: self,
            place,
            waiter,
            first_ms,
            early,
        })
    }

    /// The end of a wait: the slot if it was granted meanwhile, else a reject that tells the
    /// client when its turn is expected (its place in line over the measured admission rate).
    pub fn expire(
        &'static self,
        ticket: Ticket,
        d: &Decision,
        policy: &GatePolicy,
        ask: Ask,
    ) -> Result<Permit, Reject> {
        let ahead = {
            let mut line = self.line();
            if let Ok(p) = ticket.take() {
                return Ok(p);
            }
            let ahead = (
                line.ahead_of(ticket.place),
                line.ahead_in_priority(ticket.place),
            );
            if ticket.waiter.state.load(Ordering::Acquire) == WAITING
                && line.leave(ticket.place).is_some()
            {
                self.waiting.0.fetch_sub(1, Ordering::SeqCst);
                ticket.waiter.state.store(TAKEN, Ordering::Release);
            }
            ahead
        };
        let reason = if ticket.waiter.state.load(Ordering::Acquire) == EVICTED {
            RejectReason::QueueFull
        } else {
            RejectReason::QueueTimeout
        };
        Err(self.refuse(d, policy, ask, reason, ticket.first_ms, ticket.early, ahead))
    }

    /// Takes an in-flight slot whatever the limit (shadow mode: decisions recorded, never enforced).
    pub fn admit_unchecked(&'static self) -> Permit {
        let now = self.inflight.0.fetch_add(1, Ordering::AcqRel) + 1;
        self.note_peak(now);
        Permit { gate: self }
    }

    /// Counts one more early returner held, unless `max` are held already.
    pub fn hold(&'static self, max: u32) -> Option<Hold> {
        let before = self.held.fetch_add(1, Ordering::AcqRel);
        let hold = Hold { gate: self };
        (before < max).then_some(hold)
    }

    fn admitted_now(&'static self, policy: &GatePolicy, ask: Ask) -> Permit {
        let p = ask.priority.index();
        self.admitted[p].0.fetch_add(1, Ordering::Relaxed);
        self.note_queued_admit(policy, ask);
        Permit { gate: self }
    }

    /// Records a slot taken by `ask`, at once or from the line: an admitted critical request
    /// opens its client's session grace.
    pub fn note_queued_admit(&self, policy: &GatePolicy, ask: Ask) {
        if ask.priority == Priority::Critical && policy.session_grace_ms > 0 {
            let until_ms = ask.now_ms + policy.session_grace_ms;
            self.grace.put(
                ask.client,
                ClientEntry {
                    until_ms,
                    first_ms: 0,
                },
            );
        }
    }

    fn release_slot(&self) {
        self.inflight.0.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.0.load(Ordering::SeqCst) > 0 {
            self.dispatch(&mut self.line());
        }
    }

    /// Gives free slots to the head of the line (called with the line locked).
    fn dispatch(&self, line: &mut Line<Arc<Waiter>>) {
        while let Some(head) = line.head() {
            if !self.acquire() {
                return;
            }
            let Some((_, w)) = line.pop() else {
                self.inflight.0.fetch_sub(1, Ordering::SeqCst);
                return;
            };
            self.waiting.0.fetch_sub(1, Ordering::SeqCst);
            self.admitted[head.priority().index()]
                .0
                .fetch_add(1, Ordering::Relaxed);
            w.state.store(GRANTED, Ordering::Release);
            w.notify.notify_one();
        }
    }

    /// Raises the tick's peak; a plain read first, so the common case writes nothing.
    fn note_peak(&self, now: u32) {
        if now > self.peak_inflight.0.load(Ordering::Relaxed) {
            self.peak_inflight.0.fetch_max(now, Ordering::Relaxed);
        }
    }

    fn acquire(&self) -> bool {
        let limit = self.limit.0.load(Ordering::SeqCst);
        let mut cur = self.inflight.0.load(Ordering::Relaxed);
        loop {
            if cur >= limit {
                return false;
            }
            match self.inflight.0.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.note_peak(cur + 1);
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
    }
}
