//! Per-partition offset tracking for at-least-once consumption with concurrent processing.
//!
//! # Guarantee
//!
//! An offset is released for commit only when **it and every earlier offset handed out
//! ([`begin`](PartitionTracker::begin)) on that partition are completed**. The value released is
//! Kafka's convention for a committed position: `last contiguous completed offset + 1`, i.e. the
//! offset of the next record the group should read after a restart or a rebalance. Storing that
//! value can therefore never skip a record whose processing has not finished; at worst (a crash
//! between completion and commit) records are processed again, which is what at-least-once means.
//!
//! rust-rdkafka's `examples/at_least_once.rs` stores each message's offset as soon as that message
//! is processed; that is only correct when messages are processed one at a time, in order. With
//! many messages in flight at once, completing offset 7 before offset 5 and storing 7 would commit
//! past 5, and a crash would lose it. The trackers here hold back everything behind the oldest
//! unfinished offset and release the contiguous completed prefix in one step.
//!
//! # Gaps
//!
//! Offsets on a partition are not always contiguous (compaction removes records, transaction
//! markers occupy offsets that are never delivered). A gap is *not* waited for: only offsets that
//! were actually begun count. Begin 10 and 15, complete 10, and 11 is committable at once.
//!
//! # Storing the released value with rdkafka
//!
//! The released value is already `+ 1`. Either store it **as is** through
//! `Consumer::store_offsets(&tpl)` with `Offset::Offset(value)` (librdkafka's
//! `rd_kafka_offsets_store`, which stores the `.offset` field unchanged) or commit it through
//! `Consumer::commit(&tpl, ..)`; or pass **`value - 1`** to `Consumer::store_offset(topic,
//! partition, offset)`, the legacy `rd_kafka_offset_store`, which adds 1 itself. The processor does
//! the latter ([`super::consumer::store`]); passing `value` there would skip a record.
//!
//! # Rebalances
//!
//! [`OffsetTracker::revoke`] drops a partition's bookkeeping. Every [`Token`] carries the
//! generation of the partition's bookkeeping it was issued by, and a completion whose generation is
//! not the current one is ignored, even if the partition has been assigned again and the very same
//! offset begun anew: the new owner re-reads from the committed position, and the old task's
//! completion says nothing about the new attempt.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The commit bookkeeping of one partition.
///
/// Offsets are begun in strictly increasing order (the order the consumer delivers them) and
/// completed in any order. Both operations are O(log n) in the number of offsets begun and not yet
/// released (a binary search over a ring buffer; releasing the completed prefix is O(1) amortised).
/// Memory is bounded by that window, not by the partition's history.
#[derive(Debug, Clone, Default)]
pub struct PartitionTracker {
    /// Begun offsets not yet released, in increasing order, with their completion flag. The front,
    /// when there is one, is always not completed: a completed front is released at once.
    window: VecDeque<(i64, bool)>,
    /// Number of `false` flags in `window`.
    pending: usize,
    /// The highest offset ever begun, to enforce increasing order.
    last_begun: Option<i64>,
    /// `last contiguous completed offset + 1`, once anything has been released.
    committable: Option<i64>,
}

impl PartitionTracker {
    /// An empty tracker: nothing in flight, nothing committable.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` was handed out for processing.
    ///
    /// Offsets must be begun in strictly increasing order; gaps are allowed and never waited for.
    /// A valid offset is in `0..i64::MAX`. A non-increasing or invalid offset is a caller bug:
    /// it fails a `debug_assert!`, and in release builds it is ignored and `false` is returned
    /// (the offset is not tracked, so its completion is a no-op; nothing is ever released because
    /// of it, which keeps the at-least-once guarantee). Returns `true` when the offset is tracked.
    pub fn begin(&mut self, offset: i64) -> bool {
        let valid = (0..i64::MAX).contains(&offset);
        let increasing = self.last_begun.is_none_or(|last| offset > last);
        debug_assert!(valid, "offset {offset} is not a valid Kafka offset");
        debug_assert!(
            increasing,
            "offset {offset} begun after offset {:?}: offsets must be begun in increasing order",
            self.last_begun
        );
        if !(valid && increasing) {
            return false;
        }
        self.last_begun = Some(offset);
        self.window.push_back((offset, false));
        self.pending += 1;
        true
    }

    /// Records that the processing of `offset` has finished.
    ///
    /// Returns `Some(next_commit_offset)` when the committable position advanced (that is, when
    /// `offset` was the oldest unfinished offset), `None` otherwise. Completing an offset that was
    /// never begun (including one inside a gap or one already released) or completing an offset a
    /// second time changes nothing and returns `None`.
    pub fn complete(&mut self, offset: i64) -> Option<i64> {
        let index = self
            .window
            .binary_search_by_key(&offset, |&(o, _)| o)
            .ok()?;
        let done = &mut self.window[index].1;
        if *done {
            return None;
        }
        *done = true;
        self.pending -= 1;
        if index != 0 {
            return None;
        }
        let mut released = offset;
        while let Some(&(front, true)) = self.window.front() {
            released = front;
            self.window.pop_front();
        }
        let next = released + 1;
        self.committable = Some(next);
        Some(next)
    }

    /// The position to commit (`last contiguous completed offset + 1`), or `None` when no offset has
    /// been released yet.
    pub fn committable(&self) -> Option<i64> {
        self.committable
    }

    /// The number of offsets begun and not completed.
    pub fn in_flight(&self) -> usize {
        self.pending
    }
}

/// A released commit position of one partition: store `offset` as is (it is already
/// `last contiguous completed offset + 1`; see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Commit {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The position to commit.
    pub offset: i64,
}

/// The receipt for one begun offset, handed back to [`OffsetTracker::complete`] when its
/// processing has finished (successfully, dead-lettered or otherwise settled).
///
/// A dropped token is never completed: its partition's commits stall behind it until the
/// partition is revoked. That is the safe failure (records are re-read), but it is still a bug.
#[derive(Debug)]
#[must_use = "a token must be completed, or its partition never commits past it"]
pub struct Token {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    generation: u64,
    tracked: bool,
}

impl Token {
    /// The topic of the offset.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic of the offset, shared (no copy of the name).
    pub fn topic_name(&self) -> Arc<str> {
        self.topic.clone()
    }

    /// The partition of the offset.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The offset.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Whether the offset is tracked; `false` only when [`OffsetTracker::begin`] was called with a
    /// non-increasing or invalid offset in a release build (see [`PartitionTracker::begin`]).
    pub fn is_tracked(&self) -> bool {
        self.tracked
    }
}

#[derive(Debug)]
struct Slot {
    topic: Arc<str>,
    generation: u64,
    tracker: PartitionTracker,
}

#[derive(Debug, Default)]
struct Inner {
    topics: HashMap<Arc<str>, HashMap<i32, Slot>>,
    /// The generation of the next slot created. Global, so a generation is never reused, even by
    /// a partition revoked and assigned again.
    next_generation: u64,
}

/// Offset bookkeeping for every partition assigned to a consumer, shared by the tasks processing
/// its records.
///
/// Every method takes `&self`: the state sits behind a [`std::sync::Mutex`] held only for the
/// short, non-blocking bookkeeping of one call (never across an `.await`), so the tracker can be
/// shared through an `Arc` by many tokio tasks. A partition's bookkeeping is created by the first
/// [`begin`](Self::begin) after it was assigned (or after the tracker was created) and dropped by
/// [`revoke`](Self::revoke) / [`revoke_all`](Self::revoke_all).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    inner: Mutex<Inner>,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is consistent between statements that can panic (only a `debug_assert!` in
        // `PartitionTracker::begin`, before any mutation), so a poisoned lock is safe to reuse.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `offset` of `topic`/`partition` was handed out for processing, and returns the
    /// token to [`complete`](Self::complete) it with. Per partition, offsets must be begun in
    /// increasing order (see [`PartitionTracker::begin`]); a partition's order restarts after a
    /// revoke.
    pub fn begin(&self, topic: &str, partition: i32, offset: i64) -> Token {
        let mut guard = self.lock();
        let Inner {
            topics,
            next_generation,
        } = &mut *guard;
        if !topics.contains_key(topic) {
            topics.insert(Arc::from(topic), HashMap::new());
        }
        let partitions = topics
            .get_mut(topic)
            .expect("the topic's map was just ensured");
        let slot = partitions.entry(partition).or_insert_with(|| {
            let generation = *next_generation;
            *next_generation += 1;
            Slot {
                topic: Arc::from(topic),
                generation,
                tracker: PartitionTracker::new(),
            }
        });
        let tracked = slot.tracker.begin(offset);
        Token {
            topic: Arc::clone(&slot.topic),
            partition,
            offset,
            generation: slot.generation,
            tracked,
        }
    }

    /// Records that the processing of the token's offset has finished. Returns the partition's new
    /// commit position when it advanced, `None` otherwise; also `None`, with nothing changed, when
    /// the token was issued before its partition was last revoked.
    pub fn complete(&self, token: Token) -> Option<Commit> {
        self.complete_with(token, |_| {})
    }

    /// [`complete`](Self::complete), calling `release` with the new commit position while the
    /// tracker is still locked: positions reach `release` in the order they were released, so
    /// a store made there never moves a partition's position backwards (two completions racing
    /// to store 15 and then 10).
    pub fn complete_with(&self, token: Token, release: impl FnOnce(&Commit)) -> Option<Commit> {
        if !token.tracked {
            return None;
        }
        let mut inner = self.lock();
        let slot = inner
            .topics
            .get_mut(&*token.topic)?
            .get_mut(&token.partition)?;
        if slot.generation != token.generation {
            return None;
        }
        let offset = slot.tracker.complete(token.offset)?;
        let commit = Commit {
            topic: token.topic,
            partition: token.partition,
            offset,
        };
        release(&commit);
        Some(commit)
    }

    /// The current commit position of `topic`/`partition`, `None` when nothing has been released
    /// since it was (re)assigned.
    pub fn committable(&self, topic: &str, partition: i32) -> Option<i64> {
        self.lock()
            .topics
            .get(topic)?
            .get(&partition)?
            .tracker
            .committable()
    }

    /// Drops the bookkeeping of `topic`/`partition` (its assignment was revoked or lost). Tokens
    /// issued before are ignored from now on, even after the partition is assigned again. Returns
    /// the partition's last commit position, for a final synchronous commit in the rebalance
    /// callback.
    pub fn revoke(&self, topic: &str, partition: i32) -> Option<i64> {
        let mut inner = self.lock();
        let partitions = inner.topics.get_mut(topic)?;
        let slot = partitions.remove(&partition)?;
        if partitions.is_empty() {
            inner.topics.remove(topic);
        }
        slot.tracker.committable()
    }

    /// Drops the bookkeeping of every partition, as [`revoke`](Self::revoke) does for one. Returns
    /// the last commit position of each partition that has one, ordered by topic and partition.
    pub fn revoke_all(&self) -> Vec<Commit> {
        let topics = std::mem::take(&mut self.lock().topics);
        let mut commits: Vec<Commit> = topics
            .into_values()
            .flat_map(HashMap::into_iter)
            .filter_map(|(partition, slot)| {
                Some(Commit {
                    offset: slot.tracker.committable()?,
                    topic: slot.topic,
                    partition,
                })
            })
            .collect();
        commits.sort();
        commits
    }

    /// The number of offsets begun and not completed, over every partition.
    pub fn in_flight_total(&self) -> usize {
        self.lock()
            .topics
            .values()
            .flat_map(HashMap::values)
            .map(|slot| slot.tracker.in_flight())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    // ---- OffsetTracker: what is stored never moves backwards ----

    #[test]
    fn positions_released_by_racing_completions_are_stored_in_order() {
        for round in 0..50 {
            let tracker = Arc::new(OffsetTracker::new());
            let tokens: Vec<Token> = (0..64).map(|o| tracker.begin("t", 0, o)).collect();
            let stored = Arc::new(Mutex::new(Vec::new()));
            // Complete in a scrambled order from several threads at once.
            let mut tokens: Vec<(usize, Token)> = tokens.into_iter().enumerate().collect();
            tokens.sort_by_key(|(i, _)| (i * 37 + round) % 64);
            let chunks: Vec<Vec<Token>> = {
                let mut chunks: Vec<Vec<Token>> = (0..4).map(|_| Vec::new()).collect();
                for (n, (_, t)) in tokens.into_iter().enumerate() {
                    chunks[n % 4].push(t);
                }
                chunks
            };
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let tracker = tracker.clone();
                    let stored = stored.clone();
                    std::thread::spawn(move || {
                        for t in chunk {
                            tracker.complete_with(t, |c| stored.lock().unwrap().push(c.offset));
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let stored = stored.lock().unwrap();
            assert!(
                stored.windows(2).all(|w| w[0] < w[1]),
                "stores went backwards: {stored:?}"
            );
            assert_eq!(stored.last(), Some(&64));
        }
    }

    // ---- PartitionTracker: unit tests ----

    #[test]
    fn empty_tracker_has_nothing_to_commit() {
        let t = PartitionTracker::new();
        assert_eq!(t.committable(), None);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn in_order_completion_advances_each_time() {
        let mut t = PartitionTracker::new();
        for o in 0..5 {
            assert!(t.begin(o));
        }
        assert_eq!(t.in_flight(), 5);
        for o in 0..5 {
            assert_eq!(t.complete(o), Some(o + 1));
            assert_eq!(t.committable(), Some(o + 1));
        }
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn out_of_order_completion_waits_for_the_oldest() {
        let mut t = PartitionTracker::new();
        for o in 100..104 {
            t.begin(o);
        }
        assert_eq!(t.complete(102), None);
        assert_eq!(t.complete(101), None);
        assert_eq!(t.committable(), None);
        assert_eq!(t.in_flight(), 2);
        assert_eq!(t.complete(100), Some(103));
        assert_eq!(t.committable(), Some(103));
        assert_eq!(t.complete(103), Some(104));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn gaps_are_not_waited_for() {
        let mut t = PartitionTracker::new();
        t.begin(10);
        t.begin(12);
        t.begin(20);
        assert_eq!(t.complete(12), None);
        // 11 was never begun (a compaction hole): completing 10 releases 10 and 12.
        assert_eq!(t.complete(10), Some(13));
        assert_eq!(t.complete(20), Some(21));
        assert_eq!(t.committable(), Some(21));

        let mut t = PartitionTracker::new();
        t.begin(5);
        t.begin(9);
        assert_eq!(t.complete(5), Some(6));
        assert_eq!(t.committable(), Some(6));
    }

    #[test]
    fn double_completion_changes_nothing() {
        let mut t = PartitionTracker::new();
        for o in 0..3 {
            t.begin(o);
        }
        // Completed but not released (behind 0).
        assert_eq!(t.complete(1), None);
        assert_eq!(t.complete(1), None);
        assert_eq!(t.in_flight(), 2);
        // Released.
        assert_eq!(t.complete(0), Some(2));
        assert_eq!(t.complete(0), None);
        assert_eq!(t.complete(1), None);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.committable(), Some(2));
        assert_eq!(t.complete(2), Some(3));
        assert_eq!(t.complete(2), None);
        assert_eq!(t.committable(), Some(3));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn completing_an_offset_never_begun_changes_nothing() {
        let mut t = PartitionTracker::new();
        assert_eq!(t.complete(42), None);
        t.begin(10);
        t.begin(15);
        for stray in [0, 9, 11, 14, 16, i64::MAX, -1] {
            assert_eq!(t.complete(stray), None, "stray {stray}");
        }
        assert_eq!(t.in_flight(), 2);
        assert_eq!(t.committable(), None);
        assert_eq!(t.complete(10), Some(11));
        assert_eq!(t.complete(15), Some(16));
    }

    #[test]
    fn a_drained_tracker_keeps_its_position_until_the_next_offset_completes() {
        let mut t = PartitionTracker::new();
        t.begin(0);
        assert_eq!(t.complete(0), Some(1));
        t.begin(7);
        assert_eq!(t.committable(), Some(1));
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.complete(7), Some(8));
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "increasing order")]
    fn a_non_increasing_begin_fails_the_debug_assertion() {
        let mut t = PartitionTracker::new();
        t.begin(5);
        t.begin(5);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "not a valid Kafka offset")]
    fn a_negative_begin_fails_the_debug_assertion() {
        PartitionTracker::new().begin(-2);
    }

    #[cfg(not(debug_assertions))]
    #[test]
    fn a_non_increasing_begin_is_ignored_in_release_builds() {
        let mut t = PartitionTracker::new();
        assert!(t.begin(5));
        assert!(!t.begin(5));
        assert!(!t.begin(3));
        assert!(!t.begin(-1));
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.complete(3), None);
        assert_eq!(t.complete(5), Some(6));
        assert_eq!(t.complete(5), None);
    }

    // ---- OffsetTracker: unit tests ----

    #[test]
    fn offset_tracker_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<OffsetTracker>();
        assert_send_sync::<Token>();
        assert_send_sync::<Commit>();
    }

    fn commit(topic: &str, partition: i32, offset: i64) -> Commit {
        Commit {
            topic: Arc::from(topic),
            partition,
            offset,
        }
    }

    #[test]
    fn partitions_are_independent() {
        let t = OffsetTracker::new();
        let a0 = t.begin("a", 0, 0);
        let a1 = t.begin("a", 1, 0);
        let b0 = t.begin("b", 0, 50);
        let a0_next = t.begin("a", 0, 1);
        assert_eq!(
            (a0.topic(), a0.partition(), a0.offset(), a0.is_tracked()),
            ("a", 0, 0, true)
        );
        assert_eq!(t.in_flight_total(), 4);
        assert_eq!(t.complete(a0_next), None);
        assert_eq!(t.complete(a1), Some(commit("a", 1, 1)));
        assert_eq!(t.committable("a", 0), None);
        assert_eq!(t.complete(b0), Some(commit("b", 0, 51)));
        assert_eq!(t.complete(a0), Some(commit("a", 0, 2)));
        assert_eq!(t.committable("a", 0), Some(2));
        assert_eq!(t.committable("a", 1), Some(1));
        assert_eq!(t.committable("b", 0), Some(51));
        assert_eq!(t.committable("c", 0), None);
        assert_eq!(t.in_flight_total(), 0);
    }

    #[test]
    fn stale_completions_after_revoke_and_reassign_are_ignored() {
        let t = OffsetTracker::new();
        let old5 = t.begin("a", 0, 5);
        let old6 = t.begin("a", 0, 6);
        let old7 = t.begin("a", 0, 7);
        assert_eq!(t.complete(old5), Some(commit("a", 0, 6)));
        assert_eq!(t.revoke("a", 0), Some(6));
        assert_eq!(t.in_flight_total(), 0);
        assert_eq!(t.committable("a", 0), None);

        // A stale completion while unassigned.
        assert_eq!(t.complete(old7), None);

        // Reassigned: the new owner re-reads from the committed position, 6.
        let new6 = t.begin("a", 0, 6);
        let new7 = t.begin("a", 0, 7);
        assert_eq!(t.in_flight_total(), 2);
        // The old task finishing offset 6 says nothing about the new attempt at 6.
        assert_eq!(t.complete(old6), None);
        assert_eq!(t.committable("a", 0), None);
        assert_eq!(t.in_flight_total(), 2);
        assert_eq!(t.complete(new6), Some(commit("a", 0, 7)));
        assert_eq!(t.complete(new7), Some(commit("a", 0, 8)));
        assert_eq!(t.in_flight_total(), 0);
    }

    #[test]
    fn revoking_an_unknown_partition_is_harmless() {
        let t = OffsetTracker::new();
        assert_eq!(t.revoke("a", 0), None);
        let tok = t.begin("a", 0, 1);
        assert_eq!(t.revoke("a", 1), None);
        assert_eq!(t.revoke("b", 0), None);
        assert_eq!(t.complete(tok), Some(commit("a", 0, 2)));
        // Revoked with nothing released yet.
        let _pending = t.begin("b", 3, 9);
        assert_eq!(t.revoke("b", 3), None);
    }

    #[test]
    fn revoke_all_reports_final_positions_and_drops_everything() {
        let t = OffsetTracker::new();
        let b1 = t.begin("b", 1, 10);
        let a2 = t.begin("a", 2, 0);
        let a0 = t.begin("a", 0, 3);
        let a0_pending = t.begin("a", 0, 4);
        let _c0_pending = t.begin("c", 0, 0);
        assert!(t.complete(b1).is_some());
        assert!(t.complete(a2).is_some());
        assert!(t.complete(a0).is_some());
        assert_eq!(
            t.revoke_all(),
            vec![commit("a", 0, 4), commit("a", 2, 1), commit("b", 1, 11)]
        );
        assert_eq!(t.in_flight_total(), 0);
        assert_eq!(t.committable("a", 0), None);
        let a0_new = t.begin("a", 0, 4);
        assert_eq!(t.complete(a0_pending), None);
        assert_eq!(t.complete(a0_new), Some(commit("a", 0, 5)));
        assert!(t.revoke_all().iter().all(|c| c.topic.as_ref() == "a"));
        assert!(t.revoke_all().is_empty());
    }

    #[test]
    fn concurrent_completions_from_many_threads() {
        const THREADS: i64 = 8;
        const PER_THREAD: i64 = 500;
        let t = OffsetTracker::new();
        let mut tokens: Vec<Vec<Token>> = (0..THREADS).map(|_| Vec::new()).collect();
        for o in 0..THREADS * PER_THREAD {
            for p in 0..2 {
                tokens[(o % THREADS) as usize].push(t.begin("t", p, o));
            }
        }
        let best: Vec<i64> = std::thread::scope(|s| {
            let handles: Vec<_> = tokens
                .into_iter()
                .map(|mine| {
                    let t = &t;
                    s.spawn(move || {
                        mine.into_iter()
                            .rev()
                            .filter_map(|tok| t.complete(tok))
                            .map(|c| c.offset)
                            .max()
                            .unwrap_or(0)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(best.into_iter().max(), Some(THREADS * PER_THREAD));
        assert_eq!(t.committable("t", 0), Some(THREADS * PER_THREAD));
        assert_eq!(t.committable("t", 1), Some(THREADS * PER_THREAD));
        assert_eq!(t.in_flight_total(), 0);
    }

    // ---- Property tests against a simple model ----

    /// The model's commit position: (max offset `o` such that every begun offset `<= o` is
    /// completed) + 1, or `None` when the oldest begun offset is not completed.
    fn model_committable(begun: &[(i64, bool)]) -> Option<i64> {
        let first_pending = begun.iter().position(|&(_, done)| !done);
        let prefix = first_pending.unwrap_or(begun.len());
        prefix.checked_sub(1).map(|i| begun[i].0 + 1)
    }

    fn model_in_flight(begun: &[(i64, bool)]) -> usize {
        begun.iter().filter(|&&(_, done)| !done).count()
    }

    /// Gaps between consecutive offsets: mostly contiguous, sometimes holes.
    fn gap() -> impl Strategy<Value = i64> {
        prop_oneof![4 => Just(1i64), 1 => 2i64..=6]
    }

    /// Increasing offsets with random gaps, not starting at 0.
    fn offsets() -> impl Strategy<Value = Vec<i64>> {
        (0i64..1_000_000, prop::collection::vec(gap(), 1..200)).prop_map(|(start, gaps)| {
            gaps.iter()
                .scan(start, |next, g| {
                    let o = *next;
                    *next += g;
                    Some(o)
                })
                .collect()
        })
    }

    /// Checks one completion's outcome against the model, and the invariants.
    fn check_step(
        tracker: &PartitionTracker,
        begun: &[(i64, bool)],
        before: Option<i64>,
        returned: Option<i64>,
    ) -> Result<(), TestCaseError> {
        let expected = model_committable(begun);
        prop_assert_eq!(tracker.committable(), expected);
        prop_assert!(
            expected >= before,
            "went back from {:?} to {:?}",
            before,
            expected
        );
        let want = if expected != before { expected } else { None };
        prop_assert_eq!(returned, want);
        if let (Some(c), Some(&(first, _))) = (expected, begun.iter().find(|&&(_, d)| !d)) {
            prop_assert!(c <= first, "committable {} beyond uncompleted {}", c, first);
        }
        prop_assert_eq!(tracker.in_flight(), model_in_flight(begun));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Begin every offset, then complete them in a random order, with duplicate and stray
        /// completions mixed in.
        #[test]
        fn random_completion_order_matches_the_model(
            (offs, order) in offsets().prop_flat_map(|offs| {
                let n = offs.len();
                (Just(offs), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
            }),
            noise in prop::collection::vec((any::<bool>(), any::<Index>()), 0..50),
        ) {
            let mut tracker = PartitionTracker::new();
            let mut begun: Vec<(i64, bool)> = Vec::new();
            for &o in &offs {
                prop_assert!(tracker.begin(o));
                begun.push((o, false));
            }
            prop_assert_eq!(tracker.in_flight(), offs.len());
            prop_assert_eq!(tracker.committable(), None);

            let mut noise = noise.into_iter();
            for (step, &i) in order.iter().enumerate() {
                let before = tracker.committable();
                let returned = tracker.complete(offs[i]);
                begun[i].1 = true;
                check_step(&tracker, &begun, before, returned)?;

                // Noise: complete again something already completed, or an offset never begun.
                if let Some((again, pick)) = noise.next() {
                    let before = tracker.committable();
                    let stray = if again {
                        offs[order[pick.index(step + 1)]]
                    } else {
                        let o = offs[pick.index(offs.len())] + 1;
                        if offs.binary_search(&o).is_ok() { offs[0] - 1 } else { o }
                    };
                    prop_assert_eq!(tracker.complete(stray), None);
                    check_step(&tracker, &begun, before, None)?;
                }
            }
            prop_assert_eq!(tracker.committable(), Some(offs[offs.len() - 1] + 1));
            prop_assert_eq!(tracker.in_flight(), 0);
        }

        /// Begins and completions interleaved, as in a consumer that keeps fetching while earlier
        /// records are processed.
        #[test]
        fn interleaved_begin_and_complete_matches_the_model(
            offs in offsets(),
            ops in prop::collection::vec((any::<bool>(), any::<Index>()), 0..400),
        ) {
            let mut tracker = PartitionTracker::new();
            let mut begun: Vec<(i64, bool)> = Vec::new();
            let mut pending: Vec<usize> = Vec::new();
            let mut next = 0;
            let complete_one =
                |tracker: &mut PartitionTracker, begun: &mut Vec<(i64, bool)>, i: usize| {
                    let before = tracker.committable();
                    let returned = tracker.complete(begun[i].0);
                    begun[i].1 = true;
                    check_step(tracker, begun, before, returned)
                };
            for (want_begin, pick) in ops {
                if (want_begin || pending.is_empty()) && next < offs.len() {
                    prop_assert!(tracker.begin(offs[next]));
                    begun.push((offs[next], false));
                    pending.push(next);
                    next += 1;
                    prop_assert_eq!(tracker.in_flight(), pending.len());
                    prop_assert_eq!(tracker.committable(), model_committable(&begun));
                } else if !pending.is_empty() {
                    let i = pending.swap_remove(pick.index(pending.len()));
                    complete_one(&mut tracker, &mut begun, i)?;
                }
            }
            // Drain: begin the rest, complete everything left (newest first, the worst order).
            while next < offs.len() {
                prop_assert!(tracker.begin(offs[next]));
                begun.push((offs[next], false));
                pending.push(next);
                next += 1;
            }
            pending.sort_unstable();
            while let Some(i) = pending.pop() {
                complete_one(&mut tracker, &mut begun, i)?;
            }
            prop_assert_eq!(tracker.committable(), Some(offs[offs.len() - 1] + 1));
            prop_assert_eq!(tracker.in_flight(), 0);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Begin(usize, i64),
        Complete(Index),
        Revoke(usize),
        RevokeAll,
    }

    const KEYS: [(&str, i32); 3] = [("a", 0), ("a", 1), ("b", 0)];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            10 => (0..KEYS.len(), gap()).prop_map(|(k, g)| Op::Begin(k, g)),
            8 => any::<Index>().prop_map(Op::Complete),
            1 => (0..KEYS.len()).prop_map(Op::Revoke),
            1 => Just(Op::RevokeAll),
        ]
    }

    /// The model of one partition's current generation.
    #[derive(Debug, Default)]
    struct ModelPartition {
        epoch: u64,
        begun: Vec<(i64, bool)>,
        next_offset: i64,
    }

    impl ModelPartition {
        /// Revoked, then assigned again: the new owner re-reads from the committed position.
        fn revoke(&mut self) -> Option<i64> {
            let last = model_committable(&self.begun);
            self.epoch += 1;
            self.next_offset = last.unwrap_or(self.begun.first().map_or(self.next_offset, |b| b.0));
            self.begun.clear();
            last
        }
    }

    fn check_all(t: &OffsetTracker, model: &[ModelPartition]) -> Result<(), TestCaseError> {
        for (k, &(topic, partition)) in KEYS.iter().enumerate() {
            prop_assert_eq!(
                t.committable(topic, partition),
                model_committable(&model[k].begun),
                "key {:?}",
                KEYS[k]
            );
        }
        let in_flight: usize = model.iter().map(|m| model_in_flight(&m.begun)).sum();
        prop_assert_eq!(t.in_flight_total(), in_flight);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Several partitions, random begins and completions, revokes and reassignment (re-reading
        /// from the committed position, so stale tokens collide with newly begun offsets): stale
        /// completions are ignored and every partition matches its model.
        #[test]
        fn offset_tracker_with_revokes_matches_the_model(
            starts in prop::collection::vec(0i64..1_000, KEYS.len()),
            ops in prop::collection::vec(op(), 0..300),
        ) {
            let t = OffsetTracker::new();
            let mut model: Vec<ModelPartition> = starts
                .iter()
                .map(|&s| ModelPartition { next_offset: s, ..ModelPartition::default() })
                .collect();
            // (key, model epoch, index in that epoch's `begun`, token)
            let mut tokens: Vec<(usize, u64, usize, Token)> = Vec::new();

            let complete = |t: &OffsetTracker,
                            model: &mut [ModelPartition],
                            (k, epoch, i, token): (usize, u64, usize, Token)|
             -> Result<(), TestCaseError> {
                let (topic, partition) = KEYS[k];
                prop_assert_eq!((token.topic(), token.partition()), (topic, partition));
                let m = &mut model[k];
                let before = model_committable(&m.begun);
                let returned = t.complete(token);
                if epoch == m.epoch {
                    m.begun[i].1 = true;
                }
                let expected = model_committable(&m.begun);
                prop_assert!(expected >= before);
                let want = if expected != before {
                    expected.map(|offset| Commit { topic: Arc::from(topic), partition, offset })
                } else {
                    None
                };
                prop_assert_eq!(returned, want);
                Ok(())
            };

            for op in ops {
                match op {
                    Op::Begin(k, g) => {
                        let (topic, partition) = KEYS[k];
                        let m = &mut model[k];
                        let offset = m.next_offset;
                        m.next_offset += g;
                        let token = t.begin(topic, partition, offset);
                        prop_assert!(token.is_tracked());
                        prop_assert_eq!(token.offset(), offset);
                        m.begun.push((offset, false));
                        tokens.push((k, m.epoch, m.begun.len() - 1, token));
                    }
                    Op::Complete(pick) => {
                        if !tokens.is_empty() {
                            let entry = tokens.swap_remove(pick.index(tokens.len()));
                            complete(&t, &mut model, entry)?;
                        }
                    }
                    Op::Revoke(k) => {
                        let (topic, partition) = KEYS[k];
                        let expected = model[k].revoke();
                        prop_assert_eq!(t.revoke(topic, partition), expected);
                    }
                    Op::RevokeAll => {
                        let mut expected: Vec<Commit> = KEYS
                            .iter()
                            .zip(model.iter_mut())
                            .filter_map(|(&(topic, partition), m)| {
                                m.revoke().map(|offset| Commit {
                                    topic: Arc::from(topic),
                                    partition,
                                    offset,
                                })
                            })
                            .collect();
                        expected.sort();
                        prop_assert_eq!(t.revoke_all(), expected);
                    }
                }
                check_all(&t, &model)?;
            }

            // Complete every outstanding token, stale ones included.
            while let Some(entry) = tokens.pop() {
                complete(&t, &mut model, entry)?;
                check_all(&t, &model)?;
            }
            prop_assert_eq!(t.in_flight_total(), 0);
            for (k, &(topic, partition)) in KEYS.iter().enumerate() {
                let last = model[k].begun.last().map(|&(o, _)| o + 1);
                prop_assert_eq!(t.committable(topic, partition), last);
            }
        }
    }
}
