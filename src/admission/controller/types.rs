//! What the controller reads (the signals of one tick) and what it decides (the limit, the
//! stages and the drain rates the gate works from).

use super::super::limit::CLASSES;
use super::super::priority::{PerPriority, Priority};

/// What the data path measured, read once per tick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SignalSnapshot {
    /// Upstream responses in the guard-rail window.
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// `None` when no response carried the cache header.
    pub hit_ratio: Option<f64>,
    /// 5xx, connect failures and timeouts over forwarded requests in the window; `None` with no traffic.
    pub error_rate: Option<f64>,
    /// Requests in flight to the upstream right now.
    pub inflight: u32,
    /// Completions since the last tick by class (see [`super::limit::class_of`]).
    pub class_n: [u64; CLASSES],
    /// Their summed latency, microseconds.
    pub class_us: [u64; CLASSES],
    /// Dropped requests (5xx, timeouts, connect failures) since the last tick.
    pub dropped: u64,
    /// The gate's counters since the last tick.
    pub gate: TickCounters,
}

/// Health of the guard rails, worst first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Health {
    Critical,
    Warn,
    #[default]
    Healthy,
}

/// What the controller did on its last tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CtlState {
    /// No ramp engaged: every priority admitted within the limit.
    #[default]
    Open,
    Advancing,
    /// Engaged, waiting for evidence (completions, a short line) before advancing.
    Holding,
    BackingOff,
    /// A hit-ratio gate keeps progress where it is.
    WaitingForCache,
    Paused,
}

impl CtlState {
    /// Every state, for pre-registering metrics.
    pub const ALL: [CtlState; 6] = [
        CtlState::Open,
        CtlState::Advancing,
        CtlState::Holding,
        CtlState::BackingOff,
        CtlState::WaitingForCache,
        CtlState::Paused,
    ];

    /// Label for status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CtlState::Open => "open",
            CtlState::Advancing => "advancing",
            CtlState::Holding => "holding",
            CtlState::BackingOff => "backing_off",
            CtlState::WaitingForCache => "waiting_for_cache",
            CtlState::Paused => "paused",
        }
    }
}

/// The published result of a tick, read by the gate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Decision {
    /// Whether the ramp is engaged (stages apply, the curve caps the limit).
    pub engaged: bool,
    pub progress: f64,
    pub state: CtlState,
    pub health: Health,
    /// Max requests in flight.
    pub limit: u32,
    /// How far slow start on the data path may raise the limit before the next tick.
    pub ceiling: u32,
    /// The limit is still doubling (no queueing seen since the last restart).
    pub slow_start: bool,
    /// Whether each priority is admitted (always, unless an engaged ramp has not reached it).
    pub open: PerPriority<bool>,
    /// Expected seconds until each priority's stage opens (0 when open).
    pub eta_s: PerPriority<f64>,
    /// Measured admissions per second of each priority alone.
    pub admit_rps: PerPriority<f64>,
    /// Latency over the no-load latency of the same mix, last tick.
    pub inflation: Option<f64>,
    /// Requests per second allowed now, if rate limited.
    pub rps: Option<u32>,
    /// The backend answers again after an outage: the signals recorded during it are no
    /// evidence about its capacity and are to be forgotten.
    pub recovered: bool,
    /// The backend is down (nothing but failures for [`OUTAGE_MS`] and [`OUTAGE_FAILURES`]):
    /// one request at a time probes it, the rest keep their places in line.
    pub outage: bool,
}

impl Decision {
    /// Measured admissions per second of `p` and every priority above it: the pace at which
    /// everyone ahead of a place of `p` in line is served.
    pub fn drain_rps(&self, p: Priority) -> f64 {
        self.admit_rps[p.index()..].iter().sum()
    }
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
