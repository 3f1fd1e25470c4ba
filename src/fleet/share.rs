//! Splitting the fleet's limit into per-instance shares (pure; the leader runs it each sync).
//!
//! Targets follow demand, higher priorities first, and are work-conserving: what no instance
//! needs is spread evenly so an idle instance can still take a burst. A share that grows is
//! granted only from what no instance holds now (the shares they applied last), so the shares
//! in force never add up past the limit while one instance learns it must give back and
//! another that it may take more: capacity moves in two syncs, never double-booked.

/// One instance as the leader sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// Requests in flight there now.
    pub inflight: u32,
    /// Requests waiting there now, by priority (low, normal, high, critical: `Priority::index`).
    pub waiting: [u32; 4],
    /// The share it applies now (0 for one that just joined).
    pub acked: u32,
}

/// The shares of `limit` for `members`, in their order. Their sum never exceeds `limit`.
pub fn allocate(limit: u32, members: &[Member]) -> Vec<u32> {
    let n = members.len() as u32;
    if n == 0 {
        return Vec::new();
    }
    let target = targets(limit, members);
    let held: u64 = members.iter().map(|m| u64::from(m.acked)).sum();
    let free = u64::from(limit).saturating_sub(held);
    let want: Vec<u64> = members
        .iter()
        .zip(&target)
        .map(|(m, &t)| u64::from(t.saturating_sub(m.acked)))
        .collect();
    let grants = split(free, &want);
    members
        .iter()
        .zip(target.iter().zip(grants))
        .map(
            |(m, (&t, g))| {
                if t <= m.acked {
                    t
                } else {
                    m.acked + g as u32
                }
            },
        )
        .collect()
}

/// What each instance should have: a floor of one (when the limit allows), then what it has
/// in flight, then what waits there by priority, critical first; the rest evenly.
pub fn targets(limit: u32, members: &[Member]) -> Vec<u32> {
    let n = members.len();
    let mut out = vec![0u64; n];
    let mut rem = u64::from(limit);
    if rem >= n as u64 {
        out.iter_mut().for_each(|s| *s = 1);
        rem -= n as u64;
    }
    // Levels of need: critical and high waiting, then what is in flight (work admitted,
    // whatever its priority), then normal and low waiting.
    let levels: [fn(&Member) -> u32; 5] = [
        |m| m.waiting[3],
        |m| m.waiting[2],
        |m| m.inflight,
        |m| m.waiting[1],
        |m| m.waiting[0],
    ];
    let mut cum = vec![0u64; n];
    for level in &levels {
        if rem == 0 {
            break;
        }
        for (c, m) in cum.iter_mut().zip(members) {
            *c += u64::from(level(m));
        }
        // Each instance needs its cumulative need beyond what it has been given.
        let need: Vec<u64> = cum
            .iter()
            .zip(&out)
            .map(|(c, o)| c.saturating_sub(*o))
            .collect();
        let g = split(rem, &need);
        for (o, x) in out.iter_mut().zip(&g) {
            *o += x;
        }
        rem -= g.iter().sum::<u64>();
    }
    // Nobody needs the rest: level the shares up so any instance can take a burst.
    level_up(&mut out, rem);
    out.into_iter()
        .map(|s| s.min(u64::from(u32::MAX)) as u32)
        .collect()
}

/// Raises the smallest entries first until `amount` is given: the highest level `l` with
/// `Σ max(0, l − x) ≤ amount`, then one more each to the earliest at that level.
fn level_up(out: &mut [u64], amount: u64) {
    if out.is_empty() || amount == 0 {
        return;
    }
    let cost = |l: u64| -> u64 { out.iter().map(|&x| l.saturating_sub(x)).sum() };
    let (mut lo, mut hi) = (0u64, out.iter().max().copied().unwrap_or(0) + amount);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if cost(mid) <= amount {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let mut left = amount - cost(lo);
    for x in out.iter_mut() {
        *x = (*x).max(lo);
    }
    for x in out.iter_mut() {
        if left == 0 {
            break;
        }
        if *x == lo {
            *x += 1;
            left -= 1;
        }
    }
}

/// Gives out up to `amount` in proportion to `want` (all of it when there is enough), by
/// largest remainder; ties go to the earlier entry.
fn split(amount: u64, want: &[u64]) -> Vec<u64> {
    let total: u128 = want.iter().map(|&w| u128::from(w)).sum();
    if total <= u128::from(amount) {
        return want.to_vec();
    }
    // Equal wants (the even spread) are common: avoid overflow with u128.
    let mut out: Vec<u64> = want
        .iter()
        .map(|&w| (u128::from(w) * u128::from(amount) / total) as u64)
        .collect();
    let mut left = amount - out.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..want.len()).filter(|&i| want[i] > out[i]).collect();
    order.sort_by_key(|&i| {
        let r = u128::from(want[i]) * u128::from(amount) % total;
        std::cmp::Reverse(r)
    });
    for i in order.into_iter().cycle().take(left as usize) {
        out[i] += 1;
        left -= 1;
        if left == 0 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(inflight: u32, waiting: [u32; 4], acked: u32) -> Member {
        Member {
            inflight,
            waiting,
            acked,
        }
    }

    #[test]
    fn shares_never_add_up_past_the_limit() {
        let cases: Vec<(u32, Vec<Member>)> = vec![
            (8, vec![m(8, [50, 0, 0, 0], 8), m(0, [0, 0, 0, 9], 0)]),
            (3, vec![m(1, [0; 4], 1); 8]),
            (0, vec![m(1, [1; 4], 4); 3]),
            (100, vec![m(40, [0, 0, 0, 100], 10), m(1, [0; 4], 90)]),
            (10, vec![m(0, [0; 4], 30), m(0, [0; 4], 0)]),
        ];
        for (limit, members) in cases {
            let s = allocate(limit, &members);
            assert!(
                s.iter().sum::<u32>() <= limit,
                "{limit} {members:?} → {s:?}"
            );
            let t = targets(limit, &members);
            assert!(t.iter().sum::<u32>() <= limit);
        }
    }

    #[test]
    fn critical_demand_is_served_before_low_and_the_rest_is_spread() {
        // 12 to share: A has 8 low waiting, B 8 critical.
        let t = targets(12, &[m(0, [8, 0, 0, 0], 0), m(0, [0, 0, 0, 8], 0)]);
        assert_eq!(
            t,
            [4, 8],
            "a floor each, then all of B's critical, then A's low"
        );
        // Nobody waits: even.
        assert_eq!(targets(9, &[m(0, [0; 4], 0); 3]), [3, 3, 3]);
        // In flight counts first: the busy one keeps what it has running.
        assert_eq!(targets(8, &[m(6, [0; 4], 0), m(0, [0; 4], 0)]), [6, 2]);
    }

    #[test]
    fn a_joining_instance_takes_from_the_others_in_two_rounds() {
        // Two instances hold the whole limit of 8; a third joins with critical demand.
        let mut members = vec![m(4, [0; 4], 4), m(4, [0; 4], 4), m(0, [0, 0, 0, 6], 0)];
        let first = allocate(8, &members);
        assert_eq!(
            first,
            [1, 1, 0],
            "nothing is free yet: the others give back first"
        );
        // They apply it (and finish work down to their share).
        for (mm, s) in members.iter_mut().zip(&first) {
            mm.acked = *s;
            mm.inflight = mm.inflight.min(*s);
        }
        let second = allocate(8, &members);
        assert_eq!(second, [1, 1, 6], "the newcomer gets what was freed");
    }

    #[test]
    fn an_idle_instances_share_goes_to_a_busy_one() {
        let members = [m(0, [0; 4], 5), m(5, [0, 20, 0, 0], 5)];
        let t = targets(10, &members);
        assert_eq!(t, [1, 9]);
        let s = allocate(10, &members);
        assert_eq!(
            s,
            [1, 5],
            "the idle one gives back at once; the busy one grows next round"
        );
        let s2 = allocate(10, &[m(0, [0; 4], 1), m(5, [0, 20, 0, 0], 5)]);
        assert_eq!(s2, [1, 9]);
    }
}
