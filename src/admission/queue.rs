//! The wait line's order and bounds, pure: higher priority first, then the oldest *first*
//! arrival (remembered across retries), then arrival order. At the length bound the lowest
//! priority and newest leave first.

use std::collections::BTreeMap;

use super::priority::Priority;

/// A place in line; smaller is served first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    /// 0 for critical … 3 for low.
    rank: u8,
    first_ms: u64,
    seq: u64,
}

impl Place {
    /// The place of a request of `priority` whose client first came at `first_ms`; `seq` breaks ties.
    pub fn new(priority: Priority, first_ms: u64, seq: u64) -> Self {
        Self {
            rank: 3 - priority.index() as u8,
            first_ms,
            seq,
        }
    }

    /// The priority of this place.
    pub fn priority(&self) -> Priority {
        Priority::ALL[3 - usize::from(self.rank.min(3))]
    }
}

/// What joining the line did.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined<T> {
    /// In line.
    Joined,
    /// In line; the line was full, so the worst place left to make room.
    Evicted(Place, T),
    /// The line is full of places at least as good: not in line.
    Refused,
}

/// A bounded ordered line of waiters.
#[derive(Debug)]
pub struct Line<T> {
    map: BTreeMap<Place, T>,
    per_priority: [u32; 4],
    max_len: usize,
}

impl<T> Line<T> {
    /// An empty line holding at most `max_len` places.
    pub fn new(max_len: usize) -> Self {
        Self {
            map: BTreeMap::new(),
            per_priority: [0; 4],
            max_len,
        }
    }

    /// Changes the bound (a reload); places beyond it stay until they leave.
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// Places in line.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Places in line by priority.
    pub fn per_priority(&self) -> [u32; 4] {
        self.per_priority
    }

    /// The next place to be served.
    pub fn head(&self) -> Option<Place> {
        self.map.keys().next().copied()
    }

    /// Joins at `place`.
    pub fn join(&mut self, place: Place, item: T) -> Joined<T> {
        let mut out = Joined::Joined;
        if self.map.len() >= self.max_len {
            match self.map.last_key_value() {
                Some((worst, _)) if *worst > place => {
                    if let Some((p, t)) = self.map.pop_last() {
                        self.count(p, false);
                        out = Joined::Evicted(p, t);
                    }
                }
                _ => return Joined::Refused,
            }
        }
        self.count(place, true);
        self.map.insert(place, item);
        out
    }

    /// Takes the head of the line.
    pub fn pop(&mut self) -> Option<(Place, T)> {
        let (p, t) = self.map.pop_first()?;
        self.count(p, false);
        Some((p, t))
    }

    /// Leaves the line from `place` (a client went away, or its wait ran out).
    pub fn leave(&mut self, place: Place) -> Option<T> {
        let t = self.map.remove(&place)?;
        self.count(place, false);
        Some(t)
    }

    /// How many places are served before `place` (walks them: for rejects, not admits).
    pub fn ahead_of(&self, place: Place) -> usize {
        self.map.range(..place).count()
    }

    /// How many places of the same priority are served before `place`.
    pub fn ahead_in_priority(&self, place: Place) -> usize {
        let start = Place {
            rank: place.rank,
            first_ms: 0,
            seq: 0,
        };
        self.map.range(start..place).count()
    }

    /// Places of `priority` or higher.
    pub fn at_or_above(&self, priority: Priority) -> usize {
        self.per_priority[priority.index()..]
            .iter()
            .map(|&n| n as usize)
            .sum()
    }

    fn count(&mut self, p: Place, joined: bool) {
        let c = &mut self.per_priority[p.priority().index()];
        *c = if joined { *c + 1 } else { c.saturating_sub(1) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_first_then_first_arrival() {
        let mut l = Line::new(10);
        l.join(Place::new(Priority::Low, 0, 1), "low-old");
        l.join(Place::new(Priority::Critical, 500, 2), "crit-new");
        l.join(Place::new(Priority::Critical, 100, 3), "crit-old");
        l.join(Place::new(Priority::Normal, 50, 4), "normal");
        let order: Vec<_> = std::iter::from_fn(|| l.pop().map(|(_, t)| t)).collect();
        assert_eq!(order, ["crit-old", "crit-new", "normal", "low-old"]);
        assert_eq!(l.per_priority(), [0; 4]);
    }

    #[test]
    fn at_the_bound_the_lowest_and_newest_leave_first() {
        let mut l = Line::new(2);
        let low_old = Place::new(Priority::Low, 10, 1);
        let low_new = Place::new(Priority::Low, 20, 2);
        assert_eq!(l.join(low_old, 1), Joined::Joined);
        assert_eq!(l.join(low_new, 2), Joined::Joined);
        // Another low, newer still: refused.
        assert_eq!(l.join(Place::new(Priority::Low, 30, 3), 3), Joined::Refused);
        // A critical: the newest low leaves.
        let crit = Place::new(Priority::Critical, 40, 4);
        assert_eq!(l.join(crit, 4), Joined::Evicted(low_new, 2));
        // An older low (a retrier that kept its first arrival) beats the one in line.
        let low_older = Place::new(Priority::Low, 5, 5);
        assert_eq!(l.join(low_older, 5), Joined::Evicted(low_old, 1));
        assert_eq!(l.ahead_of(low_older), 1);
        assert_eq!(l.ahead_in_priority(low_older), 0);
        assert_eq!(l.per_priority(), [1, 0, 0, 1]);
        assert_eq!(l.at_or_above(Priority::High), 1);
    }

    #[test]
    fn leaving_frees_the_place() {
        let mut l = Line::new(4);
        let a = Place::new(Priority::High, 1, 1);
        l.join(a, ());
        assert_eq!(l.leave(a), Some(()));
        assert_eq!(l.leave(a), None, "twice is harmless");
        assert!(l.is_empty());
        assert_eq!(l.per_priority(), [0; 4]);
    }
}
