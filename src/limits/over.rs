//! The over-limit cache of the Redis limiter (as in Envoy's rate-limit service): once Redis refused a counter
//! that has nothing left in its window, "this counter is over until T" is remembered here, and that counter's
//! requests are refused without a Redis round trip until T.
//!
//! Bounded and lock-free: a fixed array of slots, each an `ArcSwapOption` (a load is a few atomic operations,
//! no lock), indexed by a hash of the counter's Redis key. A slot keeps the whole key, the limit it was refused
//! at and the deadline, and a lookup compares all three: two counters sharing a slot evict each other, which
//! costs a Redis trip, never a wrong refusal; a reloaded, higher limit is not refused by an entry made under
//! the old one. Concurrency is never cached: a permit can free at any moment.
//!
//! What it cannot see: tokens given back by another gateway's settlement during the window. A counter refused
//! with nothing left stays refused here until its window ends (this gateway's own settlements clear it).
//!
//! Beside it, [`StandingCache`]: the last standing Redis reported for a request's first subject (the values of
//! its `x-ratelimit-*` headers), kept until the window it was read in ends, so that a refusal given from the
//! over-limit cache carries the same headers a refusal decided by Redis would. Same slots, same rules.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use super::Standing;

/// One remembered refusal.
#[derive(Debug)]
struct Entry {
    key: Box<str>,
    limit: u64,
    until: Instant,
}

/// Counters known to be over their limit until their window ends.
pub struct OverLimitCache {
    slots: Box<[ArcSwapOption<Entry>]>,
    /// Slots holding an entry (expired ones included): while none does, a lookup is one atomic load.
    held: AtomicUsize,
}

impl OverLimitCache {
    /// A cache of `slots` entries (rounded up to a power of two, at least one).
    pub fn new(slots: usize) -> Self {
        let n = slots.max(1).next_power_of_two();
        Self {
            slots: (0..n).map(|_| ArcSwapOption::empty()).collect(),
            held: AtomicUsize::new(0),
        }
    }

    /// Whether no counter is remembered at all (the common case: nothing to look up, no key to name).
    pub fn is_empty(&self) -> bool {
        self.held.load(Ordering::Acquire) == 0
    }

    fn slot(&self, key: &str) -> &ArcSwapOption<Entry> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        // The length is a power of two: the mask keeps the index in range.
        let i = (h.finish() as usize) & (self.slots.len() - 1);
        &self.slots[i]
    }

    /// How long the counter `key`, refused at `limit`, is still over at `now` (`None`: ask Redis).
    pub fn over(&self, key: &str, limit: u64, now: Instant) -> Option<Duration> {
        let guard = self.slot(key).load();
        let e = guard.as_ref()?;
        if &*e.key != key || e.limit != limit || e.until <= now {
            return None;
        }
        Some(e.until - now)
    }

    /// Remembers that the counter `key` has nothing left at `limit` until `until`.
    pub fn remember(&self, key: &str, limit: u64, until: Instant) {
        let old = self.slot(key).swap(Some(Arc::new(Entry {
            key: key.into(),
            limit,
            until,
        })));
        if old.is_none() {
            self.held.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Forgets the counter `key` (its count went down).
    pub fn forget(&self, key: &str) {
        let slot = self.slot(key);
        let guard = slot.load();
        if let Some(e) = guard.as_ref() {
            if &*e.key == key {
                // Only this entry: another counter that took the slot meanwhile stays.
                let current = guard.clone();
                let prev = slot.compare_and_swap(&current, None);
                if prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, e)) {
                    self.held.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }
}

/// One remembered standing.
#[derive(Debug)]
struct Known {
    subject: Box<str>,
    standing: Standing,
    until: Instant,
}

/// The last standing Redis reported for each subject, until its window ends.
pub struct StandingCache {
    slots: Box<[ArcSwapOption<Known>]>,
}

impl StandingCache {
    /// A cache of `slots` entries (rounded up to a power of two, at least one).
    pub fn new(slots: usize) -> Self {
        let n = slots.max(1).next_power_of_two();
        Self {
            slots: (0..n).map(|_| ArcSwapOption::empty()).collect(),
        }
    }

    fn slot(&self, subject: &str) -> &ArcSwapOption<Known> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        subject.hash(&mut h);
        // The length is a power of two: the mask keeps the index in range.
        let i = (h.finish() as usize) & (self.slots.len() - 1);
        &self.slots[i]
    }

    /// The standing last reported for `subject` if it was read in the window still running at `now`, with its
    /// resets counted from `now`.
    pub fn get(&self, subject: &str, now: Instant) -> Option<Standing> {
        let guard = self.slot(subject).load();
        let k = guard.as_ref()?;
        if &*k.subject != subject || k.until <= now {
            return None;
        }
        let reset = k.until - now;
        let mut standing = k.standing;
        for q in [&mut standing.requests, &mut standing.tokens]
            .into_iter()
            .flatten()
        {
            q.reset = reset;
        }
        Some(standing)
    }

    /// Remembers `standing` for `subject`, read in a window that ends at `until`.
    pub fn remember(&self, subject: &str, standing: Standing, until: Instant) {
        self.slot(subject).store(Some(Arc::new(Known {
            subject: subject.into(),
            standing,
            until,
        })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_is_over_until_its_deadline_only() {
        let c = OverLimitCache::new(64);
        let now = Instant::now();
        c.remember("{p:k:a}:req:k:a", 5, now + Duration::from_secs(2));
        assert_eq!(
            c.over("{p:k:a}:req:k:a", 5, now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            c.over("{p:k:a}:req:k:a", 5, now + Duration::from_secs(2)),
            None,
            "the window is over"
        );
        assert_eq!(
            c.over("{p:k:a}:req:k:a", 6, now),
            None,
            "a new limit asks Redis"
        );
        assert_eq!(c.over("{p:k:b}:req:k:b", 5, now), None);
        assert!(!c.is_empty());
        c.forget("{p:k:a}:req:k:a");
        assert_eq!(c.over("{p:k:a}:req:k:a", 5, now), None, "forgotten");
        assert!(c.is_empty(), "nothing remembered any more");
    }

    #[test]
    fn counters_sharing_a_slot_never_refuse_each_other() {
        // One slot: every counter collides. The latest entry evicts the other; neither is refused for the other.
        let c = OverLimitCache::new(1);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        c.remember("a", 1, later);
        c.remember("b", 1, later);
        assert_eq!(c.over("a", 1, now), None, "evicted: costs a Redis trip");
        assert!(c.over("b", 1, now).is_some());
        c.forget("a");
        assert!(c.over("b", 1, now).is_some(), "forgetting a keeps b");
        for i in 0..1000 {
            assert_eq!(c.over(&format!("other-{i}"), 1, now), None);
        }
    }

    #[test]
    fn a_standing_is_known_for_its_window_only_and_resets_from_now() {
        use super::super::Quota;
        let c = StandingCache::new(64);
        let now = Instant::now();
        let until = now + Duration::from_secs(10);
        let q = |remaining| Quota {
            limit: 100,
            remaining,
            reset: Duration::from_secs(10),
        };
        let standing = Standing {
            requests: Some(q(40)),
            tokens: None,
        };
        c.remember("k:a", standing, until);
        let later = now + Duration::from_secs(4);
        let got = c.get("k:a", later).expect("known in its window");
        assert_eq!(got.requests.map(|q| q.remaining), Some(40));
        assert_eq!(got.requests.map(|q| q.reset), Some(Duration::from_secs(6)));
        assert_eq!(got.tokens, None);
        assert_eq!(c.get("k:a", until), None, "the window is over");
        assert_eq!(c.get("k:b", later), None);
        // One slot: a subject sharing it evicts the other, never answers for it.
        let one = StandingCache::new(1);
        one.remember("k:a", standing, until);
        one.remember("k:b", standing, until);
        assert_eq!(one.get("k:a", later), None);
        assert!(one.get("k:b", later).is_some());
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = OverLimitCache::new(100);
        assert_eq!(c.slots.len(), 128);
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..10_000 {
            c.remember(&format!("k{i}"), 1, later);
        }
        let held = c.slots.iter().filter(|s| s.load().is_some()).count();
        assert!(held <= 128);
    }
}
