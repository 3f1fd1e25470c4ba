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

use super::budget::{ClientBudget, Rate};
use super::clients::{ClientEntry, ClientTable};
use super::controller::Decision;
use super::priority::{PerPriority, Priority};
use super::queue::{Joined, Line, Place};
use super::retry::{mix64, RetryPolicy};

/// Operator switch for a feature; a forced switch beats the ramp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureState {
    /// Follows the ramp's stages while one is engaged.
    Auto,
    /// Admitted whatever the stage (still within the limit), never held.
    On,
    /// Always shed.
    Off,
}

impl FeatureState {
    /// Parses `auto`, `on` or `off`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auto" => FeatureState::Auto,
            "on" => FeatureState::On,
            "off" => FeatureState::Off,
            _ => return None,
        })
    }

    /// The config / API name.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureState::Auto => "auto",
            FeatureState::On => "on",
            FeatureState::Off => "off",
        }
    }
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// An engaged ramp has not reached the feature's priority stage yet.
    Stage,
    /// An operator switched the feature off.
    FeatureOff,
    /// The wait line was full of requests at least as important.
    QueueFull,
    /// The request waited its priority's longest wait without a slot.
    QueueTimeout,
    /// The request-rate limit is spent.
    Rate,
    /// The client key already holds its share of the limit (`gate.per_client_share`).
    ClientLimit,
    /// The client key is over its own request-rate budget (`gate.per_client_rate`).
    ClientRate,
}

impl RejectReason {
    /// Every reason, in [`RejectReason::index`] order.
    pub const ALL: [RejectReason; 7] = [
        RejectReason::Stage,
        RejectReason::FeatureOff,
        RejectReason::QueueFull,
        RejectReason::QueueTimeout,
        RejectReason::Rate,
        RejectReason::ClientLimit,
        RejectReason::ClientRate,
    ];

    /// Its place in [`RejectReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Label for bodies, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Stage => "warming_up",
            RejectReason::FeatureOff => "feature_off",
            RejectReason::QueueFull => "queue_full",
            RejectReason::QueueTimeout => "queue_timeout",
            RejectReason::Rate => "over_rate",
            RejectReason::ClientLimit => "client_limit",
            RejectReason::ClientRate => "client_rate",
        }
    }
}

/// A rejection and when to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub retry_after_s: u32,
    /// The client came back before the time it was told (it is held before this answer).
    pub early: bool,
    /// The client's first arrival (the clock's ms), for its return ticket.
    pub first_ms: u64,
}

/// Everything the gate needs to know about one request.
#[derive(Clone, Copy, Debug)]
pub struct Ask {
    pub priority: Priority,
    pub state: FeatureState,
    /// The feature's key ([`feature_key`]: early-return memory is per feature, and a reload
    /// that reorders features keeps whose history is whose).
    pub feature: u64,
    /// Hash of the client key.
    pub client: u64,
    pub now_ms: u64,
    /// The client already holds its share of the limit while others hold or wait for slots
    /// too (`gate.per_client_share`): it may take a free slot, not a place in line.
    pub over_share: bool,
    /// The first arrival a valid return ticket vouches for (the clock's ms; 0: none).
    pub ticket_ms: u64,
}

/// Gate settings that change only on reload.
#[derive(Clone, Copy, Debug)]
pub struct GatePolicy {
    pub retry: RetryPolicy,
    /// How long after an admitted critical request the same client's follow-ups pass closed stages.
    pub session_grace_ms: u64,
    /// Lowest priority the session grace applies to.
    pub grace_min_priority: Priority,
    /// Longest wait in line per priority; 0 means a full limit rejects at once.
    pub max_wait_ms: PerPriority<u64>,
    /// The share of the limit one client key may hold at once (1: no cap of its own).
    pub per_client_share: f64,
    /// One client key's request-rate budget (`None`: none).
    pub per_client_rate: Option<Rate>,
}

impl Default for GatePolicy {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            session_grace_ms: 30_000,
            grace_min_priority: Priority::High,
            max_wait_ms: [1_500; 4],
            per_client_share: 0.5,
            per_client_rate: None,
        }
    }
}

/// What the gate decided.
#[must_use]
pub enum Admission {
    /// In: forward the request, holding the permit until the response ends.
    Admitted(Permit),
    /// Wait in line: await [`Ticket::notified`], then [`Ticket::take`], or [`Gate::expire`] at
    /// the priority's longest wait.
    Queued(Ticket),
    Rejected(Reject),
}

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

/// What the controller reads from the gate once per tick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TickCounters {
    /// Highest in-flight count since the last tick.
    pub peak_inflight: u32,
    /// Requests that found the limit full (waited or were refused for it) since the last tick.
    pub pressed: u64,
    /// Requests admitted by priority since the last tick (at once or from the line).
    pub admitted: PerPriority<u64>,
    /// Requests refused for a closed stage since the last tick: demand the ramp holds back.
    pub shed: u64,
    /// Requests in line now, by priority.
    pub waiting: PerPriority<u32>,
    /// The limit now (slow start may have raised it since the last tick).
    pub limit: u32,
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

/// Held by an admitted request; frees its slot (to the head of the line) when dropped.
#[must_use]
pub struct Permit {
    gate: &'static Gate,
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
    gate: &'static Gate,
    place: Place,
    waiter: Arc<Waiter>,
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
    gate: &'static Gate,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.gate.held.fetch_sub(1, Ordering::AcqRel);
    }
}

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

    /// From now on, note what clients are told so the fleet can share it.
    pub fn share_told(&self) {
        let _ = self.told.set(crossbeam_queue::ArrayQueue::new(TOLD_QUEUE));
    }

    /// What clients were told since the last call (client memory key, entry), oldest first.
    pub fn drain_told(&self) -> Vec<(u64, ClientEntry)> {
        let Some(q) = self.told.get() else {
            return Vec::new();
        };
        std::iter::from_fn(|| q.pop()).take(TOLD_QUEUE).collect()
    }

    /// What another instance told a client: remembered as if told here (the earlier first
    /// arrival and the later return time win).
    pub fn learn(&self, key: u64, e: ClientEntry, now_ms: u64) {
        let e = match self.early.get(key, now_ms) {
            Some(mine) => ClientEntry {
                until_ms: mine.until_ms.max(e.until_ms),
                first_ms: mine.first_ms.min(e.first_ms),
            },
            None => e,
        };
        self.early.put(key, e);
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
        Permit { gate: self }
    }

    /// Records a slot taken from the line for a queued request of `ask` (critical grace).
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

    fn in_grace(&self, policy: &GatePolicy, ask: Ask) -> bool {
        ask.priority >= policy.grace_min_priority
            && self.grace.get(ask.client, ask.now_ms).is_some()
    }

    /// The client's first arrival (remembered here, vouched for by its ticket, or now: the
    /// earliest) and whether it came back early.
    fn recall(&self, ask: Ask) -> (u64, bool) {
        let told = if ask.ticket_ms > 0 {
            ask.ticket_ms.min(ask.now_ms)
        } else {
            ask.now_ms
        };
        match self.early.get(early_key(ask), ask.now_ms) {
            Some(e) => (e.first_ms.min(told), ask.now_ms < e.until_ms),
            None => (told, false),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &self,
        d: &Decision,
        policy: &GatePolicy,
        ask: Ask,
        reason: RejectReason,
        first_ms: u64,
        early: bool,
        (ahead, ahead_same): (usize, usize),
    ) -> Reject {
        let p = ask.priority.index();
        // Everyone ahead is served at the rate of this priority and above, and those of the
        // same priority at this priority's own rate: the turn comes after the slower of the two.
        let rate = |n: usize, rps: f64| (rps > 0.0).then(|| (n as f64 + 1.0) / rps);
        let eta_s = match reason {
            RejectReason::Stage => d.eta_s[p],
            RejectReason::FeatureOff => policy.retry.max_s,
            _ => match (
                rate(ahead, d.drain_rps(ask.priority)),
                rate(ahead_same, d.admit_rps[p]),
            ) {
                (Some(a), Some(b)) => a.max(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => policy.retry.min_s,
            },
        };
        let rand = mix64(self.nonce.0.fetch_add(1, Ordering::Relaxed) ^ ask.client);
        let retry_after_s = policy.retry.retry_after(eta_s, rand);
        // A little slack (a quarter of the delay, at most a second) keeps a polite client whose
        // clock rounds differently from counting as early.
        let ms = u64::from(retry_after_s) * 1000;
        let until_ms = ask.now_ms + ms - (ms / 4).min(1000);
        let told = ClientEntry { until_ms, first_ms };
        self.early.put(early_key(ask), told);
        if let Some(q) = self.told.get() {
            let _ = q.push((early_key(ask), told));
        }
        Reject {
            reason,
            retry_after_s,
            early: early && ask.state != FeatureState::On,
            first_ms,
        }
    }
}

/// Early returns and first arrivals are remembered per client and feature: a client told to
/// wait for its feed may still log in.
fn early_key(ask: Ask) -> u64 {
    ask.client ^ mix64(ask.feature)
}

/// A feature's key for the client memory: a hash of its name (FNV-1a), the same in every
/// process and across reloads.
pub fn feature_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::super::controller::{CtlState, Health};
    use super::*;

    fn decision(engaged: bool, open: [bool; 4]) -> Decision {
        Decision {
            engaged,
            progress: 0.3,
            state: CtlState::Advancing,
            health: Health::Healthy,
            limit: 0,
            open,
            eta_s: [50.0, 20.0, 0.0, 0.0],
            admit_rps: [10.0, 10.0, 10.0, 10.0],
            ..Decision::default()
        }
    }

    fn ask(priority: Priority, client: u64, now_ms: u64) -> Ask {
        Ask {
            priority,
            state: FeatureState::Auto,
            feature: priority.index() as u64,
            client,
            now_ms,
            over_share: false,
            ticket_ms: 0,
        }
    }

    fn gate(limit: u32) -> &'static Gate {
        let g = Gate::leak(1024, 8);
        g.set_limit(limit, limit, false);
        g
    }

    fn admitted(a: Admission) -> Option<Permit> {
        match a {
            Admission::Admitted(p) => Some(p),
            _ => None,
        }
    }

    fn queued(a: Admission) -> Option<Ticket> {
        match a {
            Admission::Queued(t) => Some(t),
            _ => None,
        }
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_client_over_its_share_takes_a_free_slot_but_no_place_in_line() {
        let g = Gate::leak(1024, 2);
        g.set_limit(1, 1, false);
        let policy = GatePolicy::default();
        let d = decision(false, [true; 4]);
        let over = |p: Priority, client: u64| Ask {
            over_share: true,
            ticket_ms: 0,
            ..ask(p, client, 0)
        };
        // A free slot goes to whoever asks, over its share or not.
        let held = admitted(g.admit(&d, &policy, over(Priority::Low, 1), || true));
        assert!(held.is_some());
        let w1 = queued(g.admit(&d, &policy, ask(Priority::Low, 2, 0), || true)).unwrap();
        let w2 = queued(g.admit(&d, &policy, ask(Priority::Low, 3, 0), || true)).unwrap();
        // The line is full of others: a critical request over its share would evict one of
        // them and wait ahead of both; it is refused, with a Retry-After from the drain.
        match g.admit(&d, &policy, over(Priority::Critical, 1), || true) {
            Admission::Rejected(r) => {
                assert_eq!(r.reason, RejectReason::ClientLimit);
                assert!(r.retry_after_s >= 1);
            }
            _ => panic!("refused"),
        }
        assert_eq!(g.waiting(), 2);
        assert!(
            matches!(w1.take(), Err(false)),
            "still waiting, not evicted"
        );
        assert!(matches!(w2.take(), Err(false)));
    }

    fn rejected(a: Admission) -> Option<Reject> {
        match a {
            Admission::Rejected(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn without_an_engaged_ramp_every_priority_is_admitted() {
        let g = gate(4);
        let d = decision(false, [false; 4]);
        let pol = GatePolicy::default();
        for p in Priority::ALL {
            assert!(admitted(g.admit(&d, &pol, ask(p, 1, 0), || true)).is_some());
        }
        assert_eq!(g.inflight(), 0, "permits dropped at end of statement");
    }

    #[test]
    fn an_engaged_ramp_sheds_by_stage_and_tells_when_to_return() {
        let g = gate(10);
        let d = decision(true, [false, false, true, true]);
        let pol = GatePolicy::default();
        let r = rejected(g.admit(&d, &pol, ask(Priority::Low, 1, 0), || true));
        let r = r.map(|r| (r.reason, r.retry_after_s));
        assert!(
            matches!(r, Some((RejectReason::Stage, s)) if (50..=75).contains(&s)),
            "{r:?}"
        );
        assert!(admitted(g.admit(&d, &pol, ask(Priority::High, 2, 0), || true)).is_some());
    }

    #[test]
    fn a_freed_slot_goes_to_the_highest_priority_then_the_oldest_first_arrival() {
        let g = gate(1);
        let d = decision(false, [true; 4]);
        let pol = GatePolicy::default();
        let held = admitted(g.admit(&d, &pol, ask(Priority::Low, 1, 0), || true));
        assert!(held.is_some());
        let low = queued(g.admit(&d, &pol, ask(Priority::Low, 2, 10), || true));
        let crit_new = queued(g.admit(&d, &pol, ask(Priority::Critical, 3, 30), || true));
        // Client 4 was told to come back earlier: it keeps its first arrival (5 ms).
        let mut a4 = ask(Priority::Critical, 4, 0);
        let r = rejected(g.admit(
            &d,
            &GatePolicy {
                max_wait_ms: [0; 4],
                ..pol
            },
            a4,
            || true,
        ));
        assert_eq!(r.map(|r| r.reason), Some(RejectReason::QueueFull));
        a4.now_ms = 40;
        let crit_old = queued(g.admit(&d, &pol, a4, || true));
        assert_eq!(crit_old.as_ref().map(|t| t.early), Some(true));
        assert_eq!(g.waiting(), 3);
        let (low, crit_new, crit_old) = (
            low.unwrap_or_else(|| panic!()),
            crit_new.unwrap_or_else(|| panic!()),
            crit_old.unwrap_or_else(|| panic!()),
        );
        drop(held);
        let first = crit_old.take();
        assert!(first.is_ok(), "oldest first arrival first");
        assert!(crit_new.take().is_err() && low.take().is_err());
        assert_eq!(g.inflight(), 1, "the slot moved, it was not freed");
        assert_eq!(g.waiting(), 2);
    }

    #[test]
    fn leaving_the_line_leaves_no_residue() {
        let g = gate(1);
        let d = decision(false, [true; 4]);
        let pol = GatePolicy::default();
        let held = admitted(g.admit(&d, &pol, ask(Priority::High, 1, 0), || true));
        let t = queued(g.admit(&d, &pol, ask(Priority::High, 2, 0), || true));
        assert_eq!(g.waiting(), 1);
        drop(t); // the client went away
        assert_eq!(g.waiting(), 0);
        assert_eq!(g.waiting_by_priority(), [0; 4]);
        // Granted but never taken: the slot is passed on, not lost.
        let t = queued(g.admit(&d, &pol, ask(Priority::High, 3, 0), || true));
        let t2 = queued(g.admit(&d, &pol, ask(Priority::High, 4, 1), || true));
        drop(held);
        assert_eq!(g.inflight(), 1);
        drop(t);
        assert_eq!(g.inflight(), 1, "handed to the next in line");
        let p = t2.map(|t| t.take().is_ok());
        assert_eq!(p, Some(true));
        assert_eq!(g.inflight(), 0);
        assert_eq!(g.waiting(), 0);
    }

    #[test]
    fn expiry_rejects_with_the_measured_drain() {
        let g = gate(1);
        let d = decision(false, [true; 4]); // 10 admissions a second
        let pol = GatePolicy {
            retry: RetryPolicy {
                min_s: 1.0,
                max_s: 600.0,
                jitter_s: 0.0,
                spread: 0.0,
            },
            ..Default::default()
        };
        let _held = admitted(g.admit(&d, &pol, ask(Priority::Normal, 1, 0), || true));
        let mut tickets = Vec::new();
        for c in 0..5 {
            tickets.push(queued(g.admit(
                &d,
                &pol,
                ask(Priority::Normal, 10 + c, c),
                || true,
            )));
        }
        let last = tickets.pop().flatten().unwrap_or_else(|| panic!());
        let r = g
            .expire(last, &d, &pol, ask(Priority::Normal, 14, 1_000))
            .err();
        // Four ahead, itself fifth, at 10/s: half a second, rounded up to whole seconds.
        assert_eq!(
            r.map(|r| (r.reason, r.retry_after_s)),
            Some((RejectReason::QueueTimeout, 1))
        );
        assert_eq!(g.waiting(), 4);
        tickets.clear();
        assert_eq!(g.waiting(), 0);
    }

    #[test]
    fn at_the_bound_the_newest_lowest_is_evicted() {
        let g = Gate::leak(1024, 1);
        g.set_limit(1, 1, false);
        let d = decision(false, [true; 4]);
        let pol = GatePolicy::default();
        let _held = admitted(g.admit(&d, &pol, ask(Priority::Low, 1, 0), || true));
        let low = queued(g.admit(&d, &pol, ask(Priority::Low, 2, 0), || true));
        let r = rejected(g.admit(&d, &pol, ask(Priority::Low, 3, 5), || true));
        assert_eq!(r.map(|r| r.reason), Some(RejectReason::QueueFull));
        let crit = queued(g.admit(&d, &pol, ask(Priority::Critical, 4, 9), || true));
        assert!(crit.is_some());
        let low = low.unwrap_or_else(|| panic!());
        assert_eq!(low.take().err(), Some(true), "evicted");
        let r = g.expire(low, &d, &pol, ask(Priority::Low, 2, 100)).err();
        assert_eq!(r.map(|r| r.reason), Some(RejectReason::QueueFull));
        assert_eq!(g.waiting(), 1);
    }

    #[test]
    fn overrides_beat_the_stage() {
        let g = gate(10);
        let d = decision(true, [false, false, false, true]);
        let pol = GatePolicy::default();
        let on = Ask {
            state: FeatureState::On,
            ..ask(Priority::Low, 1, 0)
        };
        assert!(admitted(g.admit(&d, &pol, on, || true)).is_some());
        let off = Ask {
            state: FeatureState::Off,
            ..ask(Priority::Critical, 2, 0)
        };
        let r = rejected(g.admit(&d, &pol, off, || true));
        assert_eq!(r.map(|r| r.reason), Some(RejectReason::FeatureOff));
    }

    #[test]
    fn session_grace_lets_follow_ups_through() {
        let g = gate(10);
        let d = decision(true, [false, false, false, true]);
        let pol = GatePolicy {
            session_grace_ms: 5_000,
            ..Default::default()
        };
        assert!(rejected(g.admit(&d, &pol, ask(Priority::High, 42, 0), || true)).is_some());
        assert!(admitted(g.admit(&d, &pol, ask(Priority::Critical, 43, 0), || true)).is_some());
        assert!(admitted(g.admit(&d, &pol, ask(Priority::High, 43, 1_000), || true)).is_some());
        assert!(rejected(g.admit(&d, &pol, ask(Priority::Low, 43, 1_000), || true)).is_some());
        assert!(rejected(g.admit(&d, &pol, ask(Priority::High, 43, 6_000), || true)).is_some());
    }

    #[test]
    fn rate_limit_rejects_without_taking_a_slot() {
        let g = gate(10);
        let d = decision(false, [true; 4]);
        let r = rejected(g.admit(
            &d,
            &GatePolicy::default(),
            ask(Priority::High, 1, 0),
            || false,
        ));
        assert_eq!(r.map(|r| r.reason), Some(RejectReason::Rate));
        assert_eq!(g.inflight(), 0);
    }

    #[test]
    fn slow_start_grows_on_fast_completions_up_to_the_ceiling() {
        let g = Gate::leak(16, 8);
        g.set_limit(2, 4, true);
        let d = decision(false, [true; 4]);
        let pol = GatePolicy::default();
        let a = admitted(g.admit(&d, &pol, ask(Priority::High, 1, 0), || true));
        let b = admitted(g.admit(&d, &pol, ask(Priority::High, 2, 0), || true));
        for _ in 0..10 {
            g.fast_completion();
        }
        assert_eq!(g.limit(), 4, "capped at the ceiling");
        drop((a, b));
        g.set_limit(2, 100, true);
        g.fast_completion();
        assert_eq!(g.limit(), 2, "no growth without demand");
        let counters = g.take_tick_counters();
        assert_eq!(counters.admitted[Priority::High.index()], 2);
    }

    #[test]
    fn holds_are_bounded_and_released() {
        let g = gate(1);
        let a = g.hold(1);
        assert!(a.is_some());
        assert!(g.hold(1).is_none());
        drop(a);
        assert_eq!(g.held(), 0);
    }
}
