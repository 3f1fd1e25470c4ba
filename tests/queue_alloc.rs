//! What a request waiting in line costs the heap: its queue entry (one block, the waiter) and
//! its share of the line's tree nodes; waiting, being woken and taking the slot allocate
//! nothing. Counted by dhat's allocator (this test binary's global allocator).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use warmgate::admission::{
    Admission, Ask, Decision, FeatureState, Gate, GatePolicy, Permit, Priority,
};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const N: usize = 2000;

fn blocks() -> (u64, u64) {
    let s = dhat::HeapStats::get();
    (s.total_blocks, s.total_bytes)
}

fn ask(i: usize) -> Ask {
    let priority = Priority::ALL[i % 4];
    Ask {
        priority,
        state: FeatureState::Auto,
        feature: priority.index() as u64,
        client: i as u64 + 1,
        now_ms: 1_000 + i as u64,
        over_share: false,
        ticket_ms: 0,
    }
}

#[test]
fn a_queued_request_costs_only_its_queue_entry() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let _enter = rt.enter();
    let gate = Gate::leak(4096, N);
    gate.set_limit(1, 1, false);
    let d = Decision::default();
    let policy = GatePolicy {
        max_wait_ms: [60_000; 4],
        ..GatePolicy::default()
    };
    let Admission::Admitted(first) = gate.admit(&d, &policy, ask(N), || true) else {
        panic!("the first request takes the one slot");
    };
    let mut tickets = Vec::with_capacity(N);

    // Joining the line.
    let before = blocks();
    for i in 0..N {
        match gate.admit(&d, &policy, ask(i), || true) {
            Admission::Queued(t) => tickets.push(t),
            _ => panic!("request {i} should wait in line"),
        }
    }
    let (b, bytes) = (blocks().0 - before.0, blocks().1 - before.1);
    // One waiter each, and the B-tree's nodes (a leaf holds up to 11 places).
    assert!(
        b as usize <= N + N / 4,
        "{b} blocks for {N} queued requests"
    );
    assert!(
        bytes as usize <= N * 160,
        "{bytes} bytes for {N} queued requests ({} each)",
        bytes as usize / N
    );
    assert_eq!(gate.waiting() as usize, N);

    // Waiting, being woken and taking the slot. The futures are the requests' own (boxed here
    // only because a test cannot hold two thousand of them on its stack).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut waits: Vec<Pin<Box<dyn Future<Output = Option<Permit>> + '_>>> = tickets
        .iter()
        .map(|t| Box::pin(t.granted_by(deadline)) as Pin<Box<dyn Future<Output = _>>>)
        .collect();
    let mut done = vec![false; N];
    let mut served = 0;
    let mut cx = Context::from_waker(Waker::noop());
    let before = blocks();
    for w in waits.iter_mut() {
        assert!(w.as_mut().poll(&mut cx).is_pending(), "no slot yet");
    }
    drop(first);
    // Each finished request frees its slot to the next in line.
    while served < N {
        let mut progressed = false;
        for (i, w) in waits.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            if let Poll::Ready(permit) = w.as_mut().poll(&mut cx) {
                assert!(permit.is_some(), "request {i} was granted its slot");
                drop(permit);
                done[i] = true;
                served += 1;
                progressed = true;
            }
        }
        assert!(progressed, "a freed slot went to someone in line");
    }
    let after = blocks();
    assert_eq!(
        after.0 - before.0,
        0,
        "waiting and being served allocated {} bytes",
        after.1 - before.1
    );
    assert_eq!(gate.waiting(), 0);
    assert_eq!(gate.inflight(), 0);
}
