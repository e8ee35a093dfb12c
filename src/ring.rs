//! A bounded lock-free multi-producer single-consumer ring.
//!
//! The ring is Dmitry Vyukov's bounded queue with a stamp per slot,
//! specialised to one consumer, plus an all-or-nothing push of `k` items.
//! Capacity is a power of two so a position maps to its slot with a mask.
//!
//! # The slot protocol
//!
//! Positions are unbounded counters (wrapping `usize`); position `p` lives in
//! slot `p & mask`. Each slot carries a `stamp`:
//!
//! * `stamp == 2p`: the slot is free for the producer that claims position `p`;
//! * `stamp == 2p + 1`: the slot holds the value written for position `p`;
//! * after the consumer takes position `p` it stores `stamp = 2(p + capacity)`,
//!   which frees the slot for position `p + capacity`, one lap later.
//!
//! The low bit tells *written* from *free*. Without it a ring of capacity 1
//! could not tell "holds `p`" (`p + 1`) from "free for `p + 1`" (crossbeam
//! pads its lap to a larger power of two for the same reason).
//!
//! Producers claim positions by moving `tail` with a CAS, write the value,
//! then publish it with a `Release` store of the stamp. The consumer owns
//! `head`; it reads a slot only after an `Acquire` load of its stamp shows
//! `2·head + 1`.
//!
//! Because the single consumer frees slots strictly in position order, a slot
//! that is free for position `q` proves that every position below `q -
//! capacity` was consumed too. That is what makes [`Producer::push_all`]
//! cheap: it checks only the stamp of the last of its `k` slots.
//!
//! # Example
//!
//! ```
//! use convoy::ring;
//!
//! let (tx, mut rx) = ring::channel::<u32>(4)?;
//! tx.push(1).unwrap();
//! tx.push_all(vec![2, 3, 4]).unwrap();
//! assert_eq!(tx.push(5), Err(ring::Full(5))); // full: the value comes back
//!
//! let mut out = Vec::new();
//! assert_eq!(rx.drain_into(&mut out, 10), 4);
//! assert_eq!(out, [1, 2, 3, 4]);
//! # Ok::<(), ring::RingError>(())
//! ```

use std::fmt;
use std::mem::MaybeUninit;

use crossbeam::utils::CachePadded;

use crate::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};

/// Why a ring could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A ring must hold at least one item.
    #[error("ring capacity must be at least 1")]
    ZeroCapacity,
    /// Slots are found with a mask, so the capacity must be a power of two.
    #[error("ring capacity {0} is not a power of two")]
    NotPowerOfTwo(usize),
}

/// A single push found the ring full; the value is handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ring is full")]
pub struct Full<T>(pub T);

/// An all-or-nothing push that put nothing in; every item is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushAllError<T> {
    /// An empty push is almost always a caller's bug, so it is refused.
    #[error("empty batch")]
    Empty,
    /// Not enough free slots right now; retrying later may succeed.
    #[error("ring has no room for {} items", .0.len())]
    Full(Vec<T>),
    /// More items than the ring can ever hold; retrying cannot succeed.
    #[error("{} items exceed the ring capacity {capacity}", items.len())]
    Oversized {
        /// The items, in the order given.
        items: Vec<T>,
        /// The ring's capacity.
        capacity: usize,
    },
}

impl<T> PushAllError<T> {
    /// The items handed back (none for [`PushAllError::Empty`]).
    pub fn into_items(self) -> Vec<T> {
        match self {
            PushAllError::Empty => Vec::new(),
            PushAllError::Full(items) | PushAllError::Oversized { items, .. } => items,
        }
    }
}

struct Slot<T> {
    /// Which position this slot serves and whether it is written; see the
    /// module docs for the three states.
    stamp: AtomicUsize,
    /// Initialised exactly when `stamp == 2·position + 1`.
    value: UnsafeCell<MaybeUninit<T>>,
}

/// The stamp of a slot free for position `pos`.
#[inline]
fn free_stamp(pos: usize) -> usize {
    pos.wrapping_mul(2)
}

struct Ring<T> {
    /// Next position the consumer reads. Written only by the consumer; read
    /// by anyone for [`Producer::len`]. Padded so producers' CAS traffic on
    /// `tail` does not evict it.
    head: CachePadded<AtomicUsize>,
    /// Next position a producer may claim.
    tail: CachePadded<AtomicUsize>,
    slots: Box<[Slot<T>]>,
    mask: usize,
}

// SAFETY: values move between threads (producer writes, consumer reads), so
// `T: Send` is required and sufficient; a slot is accessed by one thread at a
// time, as the stamp protocol hands it over with Release/Acquire.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above; `&Ring` only lets a thread push (move a `T` in) or, via
// the unique `Consumer`, pop (move a `T` out). No `&T` is ever shared.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    fn capacity(&self) -> usize {
        self.mask + 1
    }

    fn slot(&self, pos: usize) -> &Slot<T> {
        &self.slots[pos & self.mask]
    }

    fn len(&self) -> usize {
        // Relaxed: a snapshot for statistics; tail is loaded first so a
        // concurrent pop cannot make head pass it and the difference wrap.
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Relaxed);
        tail.wrapping_sub(head).min(self.capacity())
    }

    /// Claims `k` consecutive positions, or returns `None` when the ring has
    /// fewer than `k` free slots at a moment during the call.
    fn claim(&self, k: usize) -> Option<usize> {
        debug_assert!(k >= 1 && k <= self.capacity());
        // Relaxed: `tail` only hands out positions; the data is synchronised
        // by the slot stamps below, never by `tail`.
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            let last = tail.wrapping_add(k - 1);
            // Acquire: pairs with the consumer's Release store that freed this
            // slot, so its read of the old value happens before our write.
            // The consumer frees in order, so this also covers the k-1 slots
            // before `last` (their frees precede this one in its program).
            let stamp = self.slot(last).stamp.load(Ordering::Acquire);
            let lag = stamp.wrapping_sub(free_stamp(last)) as isize;
            if lag == 0 {
                // Relaxed on both arms: see the load of `tail` above.
                match self.tail.compare_exchange_weak(
                    tail,
                    tail.wrapping_add(k),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(tail),
                    Err(current) => tail = current,
                }
            } else if lag < 0 {
                // The slot still holds a value from the previous lap. If no
                // producer moved `tail` meanwhile, the ring really is full.
                let current = self.tail.load(Ordering::Relaxed);
                if current == tail {
                    return None;
                }
                tail = current;
            } else {
                // Another producer claimed `tail` already; catch up.
                tail = self.tail.load(Ordering::Relaxed);
            }
            crate::sync::spin_loop();
        }
    }

    /// Writes `value` into claimed position `pos` and publishes it.
    ///
    /// # Safety
    /// `pos` must have been returned by (or lie within the run claimed by)
    /// `claim`, and not been written yet.
    unsafe fn publish(&self, pos: usize, value: T) {
        let slot = self.slot(pos);
        // SAFETY: the caller owns position `pos` (claimed through the CAS on
        // `tail`), and the stamp showed the consumer done with the slot.
        slot.value
            .with_mut(|p| unsafe { p.write(MaybeUninit::new(value)) });
        // Release: makes the write above visible to the consumer's Acquire
        // load that sees `2·pos + 1`.
        slot.stamp.store(free_stamp(pos) | 1, Ordering::Release);
    }

    /// Whether the oldest position is written and ready to pop.
    fn head_ready(&self) -> bool {
        // Relaxed: only the consumer writes `head`, and it is this thread.
        let head = self.head.load(Ordering::Relaxed);
        // Acquire: a `true` is followed by a pop that reads the value.
        self.slot(head).stamp.load(Ordering::Acquire) == free_stamp(head) | 1
    }

    fn pop(&self) -> Option<T> {
        // Relaxed: only the consumer writes `head`, and it is this thread.
        let head = self.head.load(Ordering::Relaxed);
        let slot = self.slot(head);
        // Acquire: pairs with the producer's Release in `publish`.
        if slot.stamp.load(Ordering::Acquire) != free_stamp(head) | 1 {
            // Empty, or the producer of `head` has claimed but not yet
            // written; either way nothing is ready in order.
            return None;
        }
        // SAFETY: the stamp says the slot holds the value for `head`, and the
        // single consumer (this thread, via `&mut Consumer`) is its only reader.
        let value = slot.value.with(|p| unsafe { p.read().assume_init() });
        // Release: the read above must happen before a producer that sees the
        // freed stamp overwrites the slot.
        slot.stamp.store(
            free_stamp(head.wrapping_add(self.capacity())),
            Ordering::Release,
        );
        // Relaxed: `head` is only a statistic for other threads.
        self.head.store(head.wrapping_add(1), Ordering::Relaxed);
        Some(value)
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Every producer and the consumer are gone (this is the last `Arc`),
        // so every claimed position was published; drop what was not popped.
        while self.pop().is_some() {}
    }
}

/// Creates a ring of `capacity` slots and returns its two ends.
///
/// ```
/// let (tx, rx) = convoy::ring::channel::<String>(8).unwrap();
/// assert_eq!(tx.capacity(), 8);
/// assert!(convoy::ring::channel::<u8>(6).is_err()); // not a power of two
/// # drop(rx);
/// ```
pub fn channel<T>(capacity: usize) -> Result<(Producer<T>, Consumer<T>), RingError> {
    if capacity == 0 {
        return Err(RingError::ZeroCapacity);
    }
    if !capacity.is_power_of_two() {
        return Err(RingError::NotPowerOfTwo(capacity));
    }
    let slots = (0..capacity)
        .map(|i| Slot {
            stamp: AtomicUsize::new(free_stamp(i)),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        })
        .collect();
    let ring = Arc::new(Ring {
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        slots,
        mask: capacity - 1,
    });
    Ok((Producer { ring: ring.clone() }, Consumer { ring }))
}

/// The pushing end; clone it for every producer thread.
pub struct Producer<T> {
    ring: Arc<Ring<T>>,
}

impl<T> Clone for Producer<T> {
    fn clone(&self) -> Self {
        Self {
            ring: self.ring.clone(),
        }
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

impl<T> Producer<T> {
    /// Pushes one value, or hands it back when the ring is full.
    ///
    /// ```
    /// let (tx, _rx) = convoy::ring::channel(1).unwrap();
    /// assert_eq!(tx.push('a'), Ok(()));
    /// assert_eq!(tx.push('b'), Err(convoy::ring::Full('b')));
    /// ```
    pub fn push(&self, value: T) -> Result<(), Full<T>> {
        match self.ring.claim(1) {
            // SAFETY: `pos` was just claimed by this call and is unwritten.
            Some(pos) => unsafe {
                self.ring.publish(pos, value);
                Ok(())
            },
            None => Err(Full(value)),
        }
    }

    /// Pushes every item, in order and contiguously, or none of them.
    ///
    /// The consumer may see the first items before the last are written;
    /// what is atomic is admission: no other producer's item lands between
    /// them and no partial batch is ever accepted.
    ///
    /// ```
    /// use convoy::ring::{channel, PushAllError};
    /// let (tx, _rx) = channel(4).unwrap();
    /// tx.push(0).unwrap();
    /// assert_eq!(tx.push_all(vec![1, 2, 3, 4]), Err(PushAllError::Full(vec![1, 2, 3, 4])));
    /// assert_eq!(tx.push_all(vec![1, 2, 3]), Ok(()));
    /// ```
    pub fn push_all(&self, items: Vec<T>) -> Result<(), PushAllError<T>> {
        let k = items.len();
        if k == 0 {
            return Err(PushAllError::Empty);
        }
        if k > self.capacity() {
            return Err(PushAllError::Oversized {
                items,
                capacity: self.capacity(),
            });
        }
        let Some(first) = self.ring.claim(k) else {
            return Err(PushAllError::Full(items));
        };
        for (i, value) in items.into_iter().enumerate() {
            // SAFETY: positions `first..first + k` were claimed together by
            // this call, and each is written exactly once here.
            unsafe { self.ring.publish(first.wrapping_add(i), value) };
        }
        Ok(())
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Items claimed and not yet popped; a snapshot that may be stale by the
    /// time it is read.
    ///
    /// ```
    /// let (tx, _rx) = convoy::ring::channel(2).unwrap();
    /// tx.push(7).unwrap();
    /// assert_eq!(tx.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many items were ever pushed (wrapping): the claim counter, so
    /// counting costs the push path nothing.
    ///
    /// ```
    /// let (tx, _rx) = convoy::ring::channel(4).unwrap();
    /// tx.push_all(vec![1, 2]).unwrap();
    /// let _ = tx.push(3);
    /// assert_eq!(tx.pushed(), 3);
    /// ```
    pub fn pushed(&self) -> usize {
        // Relaxed: a statistic.
        self.ring.tail.load(Ordering::Relaxed)
    }
}

/// The popping end. There is exactly one, and popping needs `&mut`, which is
/// how the single-consumer half of the protocol is enforced by the compiler.
pub struct Consumer<T> {
    ring: Arc<Ring<T>>,
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.ring.capacity())
            .field("len", &self.ring.len())
            .finish()
    }
}

impl<T> Consumer<T> {
    /// Pops the oldest value, if it is ready.
    ///
    /// `None` also when the oldest position is claimed but its producer has
    /// not finished writing: order is never broken to return a later item.
    ///
    /// ```
    /// let (tx, mut rx) = convoy::ring::channel(2).unwrap();
    /// assert_eq!(rx.pop(), None);
    /// tx.push(1).unwrap();
    /// assert_eq!(rx.pop(), Some(1));
    /// ```
    pub fn pop(&mut self) -> Option<T> {
        self.ring.pop()
    }

    /// Pops up to `max` ready values in order into `out`; returns how many.
    ///
    /// ```
    /// let (tx, mut rx) = convoy::ring::channel(8).unwrap();
    /// tx.push_all(vec![1, 2, 3]).unwrap();
    /// let mut out = vec![];
    /// assert_eq!(rx.drain_into(&mut out, 2), 2);
    /// assert_eq!(out, [1, 2]);
    /// ```
    pub fn drain_into(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.ring.pop() {
                Some(v) => {
                    out.push(v);
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Whether [`pop`](Self::pop) would return a value now. Unlike
    /// `!is_empty()`, this is `false` while the oldest position is claimed
    /// but not yet written, so a consumer deciding whether to sleep does
    /// not spin on a producer that was preempted mid-push.
    ///
    /// ```
    /// let (tx, rx) = convoy::ring::channel(2).unwrap();
    /// assert!(!rx.has_ready());
    /// tx.push(1).unwrap();
    /// assert!(rx.has_ready());
    /// ```
    pub fn has_ready(&self) -> bool {
        self.ring.head_ready()
    }

    /// How many producers are alive; 0 means nothing more can arrive.
    ///
    /// ```
    /// let (tx, rx) = convoy::ring::channel::<u8>(2).unwrap();
    /// assert_eq!(rx.producers(), 1);
    /// drop(tx);
    /// assert_eq!(rx.producers(), 0);
    /// ```
    pub fn producers(&self) -> usize {
        Arc::strong_count(&self.ring) - 1
    }

    /// Items claimed and not yet popped (a snapshot).
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_capacity() {
        assert_eq!(channel::<u8>(0).unwrap_err(), RingError::ZeroCapacity);
        assert_eq!(channel::<u8>(3).unwrap_err(), RingError::NotPowerOfTwo(3));
        assert!(channel::<u8>(1).is_ok());
    }

    #[test]
    fn push_all_refuses_empty_and_oversized() {
        let (tx, _rx) = channel::<u8>(2).unwrap();
        assert_eq!(tx.push_all(vec![]), Err(PushAllError::Empty));
        match tx.push_all(vec![1, 2, 3]) {
            Err(PushAllError::Oversized { items, capacity }) => {
                assert_eq!(items, [1, 2, 3]);
                assert_eq!(capacity, 2);
            }
            other => panic!("expected Oversized, got {other:?}"),
        }
        assert!(tx.is_empty());
    }

    #[test]
    fn capacity_one_tells_full_from_free() {
        let (tx, mut rx) = channel(1).unwrap();
        for i in 0..10u8 {
            tx.push(i).unwrap();
            assert_eq!(tx.push(99), Err(Full(99)));
            assert_eq!(tx.push_all(vec![98]), Err(PushAllError::Full(vec![98])));
            assert_eq!(rx.pop(), Some(i));
            assert_eq!(rx.pop(), None);
        }
    }

    #[test]
    fn wraps_many_laps() {
        let (tx, mut rx) = channel(4).unwrap();
        for i in 0..1000u32 {
            tx.push(i).unwrap();
            if i % 3 == 0 {
                tx.push_all(vec![i, i]).unwrap();
                assert_eq!(rx.pop(), Some(i));
                assert_eq!(rx.pop(), Some(i));
            }
            assert_eq!(rx.pop(), Some(i));
            assert_eq!(rx.pop(), None);
        }
    }

    #[test]
    fn drop_releases_unpopped_values() {
        let marker = std::sync::Arc::new(());
        let (tx, mut rx) = channel(4).unwrap();
        for _ in 0..3 {
            tx.push(marker.clone()).unwrap();
        }
        drop(rx.pop());
        drop(tx);
        drop(rx);
        assert_eq!(std::sync::Arc::strong_count(&marker), 1);
    }
}
