//! Admission decisions: pure and synchronous, time passed in, no I/O. The proxy calls into
//! these; tests and benches drive them directly.

pub mod admit;
pub mod budget;
pub mod classify;
pub mod clients;
pub mod controller;
pub mod curve;
pub mod gate;
pub mod limit;
pub mod narrate;
pub mod params;
pub mod per_client;
pub mod priority;
pub mod queue;
pub mod retry;

pub use controller::{Controller, CtlState, Decision, Health, SignalSnapshot};
pub use gate::{
    Admission, Ask, FeatureState, Gate, GatePolicy, Permit, Reject, RejectReason, Ticket,
};
pub use params::ControlParams;
pub use priority::Priority;
pub use retry::RetryPolicy;
