//! A bounded lock-free multi-producer single-consumer ring.
//!
//! The ring is Dmitry Vyukov's bounded queue with a stamp per slot,
//! specialised to one consumer, plus an all-or-nothing push of `k` items and
//! a *deferred free*: the consumer may take a value out now and give its slot
//! back later, so the ring's capacity can bound work the consumer still holds.
//! Capacity is a power of two so a position maps to its slot with a mask.
//!
//! # The slot protocol
//!
//! Positions are unbounded counters (wrapping `usize`); position `p` lives in
//! slot `p & mask`. Three counters and one stamp per slot carry the protocol:
//!
//! * `tail`: the next position a producer may claim, moved with a CAS;
//! * `taken` and `freed`, the consumer's own, `freed ≤ taken ≤ tail`:
//!   positions below `taken` were read, positions below `freed` were given
//!   back, so position `p` may be claimed once `p < freed + capacity`;
//! * a slot's `stamp` is `2p + 1` once the value for position `p` is written
//!   (an odd number; slots start at 0, which no position writes).
//!
//! A producer claims positions by moving `tail`, writes the value, then
//! publishes it with a `Release` store of the stamp. The consumer:
//!
//! * [`Consumer::take`] reads the value at `taken` after an `Acquire` load
//!   of its stamp shows `2·taken + 1`, and moves `taken` on. The slot stays
//!   occupied, so producers cannot reuse it yet;
//! * [`Consumer::free`] gives the `n` oldest taken positions back with one
//!   `Release` store of `freed`. Which taken value a slot held does not
//!   matter: freeing is by count;
//! * [`Consumer::pop`] is a take followed by a free of one.
//!
//! The consumer never writes a slot. A slot's line travels from the producer
//! that wrote it to the consumer and back on the next lap, and nothing else:
//! freeing 64 slots is one store, not 64 stores to 16 lines that producers
//! are writing beside.
//!
//! Producers do not read `freed` on every claim either. They keep `limit`,
//! a bound `freed + capacity` some producer read, beside `tail` on their own
//! line. A claim within `limit` needs no other line; a claim past it reads
//! `freed` (an `Acquire` load), and stores the fresh bound (`Release`) so
//! the next producers inherit the consumer's free through it. Any `limit`
//! ever stored was a true bound when stored and `freed` only grows, so a
//! stale one is merely conservative.
//!
//! All-or-nothing [`Producer::push_all`] claims `k` positions in one CAS
//! once the bound covers the last of them.
//!
//! # Owned rings
//!
//! The CAS on `tail` is a locked instruction, and a locked instruction
//! waits until this core's earlier stores are done: the previous push's
//! slot store, whose line the consumer may be reading right then. A ring
//! with one producer needs no CAS. [`Producer::own`] makes an [`Owner`]:
//! one CAS sets `tail`'s top bit (`OWNED`), after which every shared claim
//! fails (its CAS expects the bit clear, and a claim that sees the bit
//! treats the ring as full), so the owner is the only thread that moves
//! `tail` and claims with a plain store. Dropping the owner stores `tail`
//! with the bit clear, and shared claims work again. Positions live in the
//! other bits: a ring pushed 10⁹ times a second reaches the top bit after
//! 292 years.
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

use crate::sync::{Arc, AtomicUsize, Backoff, Ordering, UnsafeCell};

/// Why a ring could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// A ring must hold at least one item.
    #[error("ring capacity must be at least 1")]
    ZeroCapacity,
    /// Slots are found with a mask, so the capacity must be a power of two.
    #[error("ring capacity {0} is not a power of two")]
    NotPowerOfTwo(usize),
    /// The slots could not be allocated (a capacity far beyond memory,
    /// usually a typo in a config): refused rather than aborting the
    /// process, which an infallible allocation would do.
    #[error("ring capacity {capacity} needs {bytes} bytes of slots, which could not be allocated")]
    TooLarge {
        /// The capacity asked for.
        capacity: usize,
        /// What its slots would take (saturated at `usize::MAX`).
        bytes: usize,
    },
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
    /// `2p + 1` once the value for position `p` is written (see the module
    /// docs); 0 before the first lap.
    stamp: AtomicUsize,
    /// Initialised from the write of the position it serves (which sets
    /// `stamp` to `2·position + 1`) until the consumer takes that position.
    /// The stamp stays as it is after the take: `taken` tells the two apart.
    value: UnsafeCell<MaybeUninit<T>>,
}

/// The stamp of a slot written for position `pos`.
#[inline]
fn written(pos: usize) -> usize {
    pos.wrapping_mul(2) | 1
}

/// Whether position `end` lies beyond `bound` (wrapping comparison).
#[inline]
fn beyond(end: usize, bound: usize) -> bool {
    (end.wrapping_sub(bound) as isize) > 0
}

/// The bit of `tail` that marks a ring owned by an [`Owner`] (module docs).
const OWNED: usize = 1 << (usize::BITS - 1);

/// The consumer's two positions, written only by the consumer. Atomics
/// rather than plain cells because producers read `freed` (when their
/// `limit` runs out, and for [`Producer::len`]) and because `Drop` may run on
/// a producer's thread.
struct Positions {
    /// Next position [`Ring::take`] reads.
    taken: AtomicUsize,
    /// Next position [`Ring::free`] gives back; `freed ≤ taken`. Its
    /// `Release` store is what hands freed slots to producers.
    freed: AtomicUsize,
}

/// The producers' line: what every claim reads and most claims only read.
struct Claims {
    /// Next position a producer may claim, with `OWNED` set while an
    /// [`Owner`] holds the ring.
    tail: AtomicUsize,
    /// A bound `freed + capacity` read by some producer: positions below it
    /// are free to claim. Only ever behind the truth, never ahead.
    limit: AtomicUsize,
}

struct Ring<T> {
    /// The consumer's positions, on a line of their own so producers' CAS
    /// traffic on `tail` does not evict them.
    consumer: CachePadded<Positions>,
    /// `tail` and `limit`, on the producers' line.
    claims: CachePadded<Claims>,
    slots: Box<[Slot<T>]>,
    mask: usize,
    spread: Spread,
}

/// How [`Ring::slot`] rotates a position's index; see [`Layout`].
#[derive(Clone, Copy)]
struct Spread {
    low_mask: usize,
    low_bits: u32,
    high_bits: u32,
}

impl Spread {
    /// The rotation for `layout` at `capacity` (a power of two).
    fn new(layout: Layout, capacity: usize) -> Self {
        let bits = capacity.trailing_zeros();
        // Four ways, and only where each way still holds four slots: below
        // that a ring is a line or two and the layout cannot matter.
        let low_bits = match layout {
            Layout::Spread if bits >= 4 => 2,
            _ => 0,
        };
        Spread {
            low_mask: (1 << low_bits) - 1,
            low_bits,
            high_bits: bits - low_bits,
        }
    }
}

// SAFETY: values move between threads (producer writes, consumer reads), so
// `T: Send` is required and sufficient; a slot is accessed by one thread at a
// time: the stamp (Release/Acquire) hands it from producer to consumer, and
// `freed` (Release/Acquire, directly or through `limit`) hands it back.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above; `&Ring` only lets a thread push (move a `T` in) or, via
// the unique `Consumer`, pop (move a `T` out). No `&T` is ever shared.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    fn capacity(&self) -> usize {
        self.mask + 1
    }

    fn slot(&self, pos: usize) -> &Slot<T> {
        let i = pos & self.mask;
        // A rotation of the index's bits (the identity when `Sequential`):
        // a bijection on `0..capacity`, so each position of a lap has a
        // slot of its own, and `p` and `p + capacity` share one.
        let i = (i >> self.spread.low_bits) | ((i & self.spread.low_mask) << self.spread.high_bits);
        &self.slots[i]
    }

    /// Claimed and not yet freed: written, being written, or taken and
    /// still held by the consumer.
    fn len(&self) -> usize {
        // Relaxed: a snapshot for statistics; tail is loaded first so a
        // concurrent free cannot make `freed` pass it and the difference wrap.
        let tail = self.claims.tail.load(Ordering::Relaxed) & !OWNED;
        let freed = self.consumer.freed.load(Ordering::Relaxed);
        tail.wrapping_sub(freed).min(self.capacity())
    }

    /// Claimed and not yet taken (consumer only: `taken` is exact there).
    fn pending(&self) -> usize {
        // Relaxed on both: see `len`.
        let tail = self.claims.tail.load(Ordering::Relaxed) & !OWNED;
        let taken = self.consumer.taken.load(Ordering::Relaxed);
        tail.wrapping_sub(taken).min(self.capacity())
    }

    /// Taken and not yet freed (consumer only).
    fn held(&self) -> usize {
        // Relaxed: both are this (the consumer's) thread's own writes.
        let taken = self.consumer.taken.load(Ordering::Relaxed);
        taken.wrapping_sub(self.consumer.freed.load(Ordering::Relaxed))
    }

    /// `freed + capacity` read now: positions below it are free to claim.
    fn fresh_limit(&self) -> usize {
        // Acquire: pairs with the consumer's Release store in `free`: its
        // reads of the freed slots happen before the claimer's writes.
        let freed = self.consumer.freed.load(Ordering::Acquire);
        freed.wrapping_add(self.capacity())
    }

    /// The `Debug` of each end: capacity and current length.
    fn describe(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }

    /// Claims `k` consecutive positions, or returns `None` when the ring has
    /// fewer than `k` free slots at a moment during the call, or an
    /// [`Owner`] holds it.
    fn claim(&self, k: usize) -> Option<usize> {
        debug_assert!(k >= 1 && k <= self.capacity());
        // Relaxed: `tail` only hands out positions; which slots are free is
        // learnt from `limit` or `freed` below, never from `tail`.
        let mut tail = self.claims.tail.load(Ordering::Relaxed);
        let mut backoff = Backoff::default();
        loop {
            if tail & OWNED != 0 {
                // Owned: closed to shared claims. Every path back here
                // reloads `tail`, and the CAS below expects the bit clear.
                return None;
            }
            let end = tail.wrapping_add(k);
            // Acquire: pairs with the Release store of `limit` below, by
            // whichever producer read `freed`; through it, the consumer's
            // reads of the slots below `limit - capacity` happen before our
            // writes.
            let limit = self.claims.limit.load(Ordering::Acquire);
            if beyond(end, limit) {
                let fresh = self.fresh_limit();
                if beyond(end, fresh) {
                    // Relaxed: see the first load of `tail`.
                    let current = self.claims.tail.load(Ordering::Relaxed);
                    if current == tail {
                        // Nobody claimed meanwhile: full, as of `freed`.
                        return None;
                    }
                    // Our `tail` was stale; the room may be there.
                    tail = current;
                    backoff.spin();
                    continue;
                }
                // Release: hands the Acquire above on to producers that
                // claim within `fresh` without reading `freed`. A racing
                // producer may store an older bound over it; that is still
                // a true bound, only a smaller one.
                self.claims.limit.store(fresh, Ordering::Release);
            }
            // Relaxed on both arms: see the first load of `tail`.
            match self.claims.tail.compare_exchange_weak(
                tail,
                end,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(tail),
                Err(current) => tail = current,
            }
            // Lost a race with another producer.
            backoff.spin();
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
        // `tail`), and `claim` saw `pos < freed + capacity` (directly or
        // through `limit`): the consumer is done with the slot's last value.
        slot.value
            .with_mut(|p| unsafe { p.write(MaybeUninit::new(value)) });
        // Release: makes the write above visible to the consumer's Acquire
        // load that sees `2·pos + 1`.
        slot.stamp.store(written(pos), Ordering::Release);
    }

    /// Whether the oldest untaken position is written and ready to take.
    fn head_ready(&self) -> bool {
        // Relaxed: only the consumer writes `taken`, and it is this thread.
        let taken = self.consumer.taken.load(Ordering::Relaxed);
        // Acquire: a `true` is followed by a take that reads the value.
        self.slot(taken).stamp.load(Ordering::Acquire) == written(taken)
    }

    /// Moves the oldest written value out, leaving its slot occupied until
    /// [`free`](Self::free). Consumer only.
    fn take(&self) -> Option<T> {
        // Relaxed: only the consumer writes `taken`, and it is this thread.
        let taken = self.consumer.taken.load(Ordering::Relaxed);
        let slot = self.slot(taken);
        // Acquire: pairs with the producer's Release in `publish`.
        if slot.stamp.load(Ordering::Acquire) != written(taken) {
            // Empty, or the producer of `taken` has claimed but not yet
            // written; either way nothing is ready in order.
            return None;
        }
        // SAFETY: the stamp says the slot holds the value for `taken`, which
        // no take has moved out yet (`taken` only grows), and the single
        // consumer (this thread, via `&mut Consumer`) is its only reader.
        // Producers do not touch the slot until `free` moves `freed` past it.
        let value = slot.value.with(|p| unsafe { p.read().assume_init() });
        // Relaxed: the consumer's own bookkeeping (see `Positions`).
        self.consumer
            .taken
            .store(taken.wrapping_add(1), Ordering::Relaxed);
        Some(value)
    }

    /// Frees up to `n` of the oldest taken slots for the next lap; returns
    /// how many (fewer when fewer are taken). Consumer only.
    fn free(&self, n: usize) -> usize {
        let n = n.min(self.held());
        if n > 0 {
            // Relaxed: the consumer's own value.
            let freed = self.consumer.freed.load(Ordering::Relaxed);
            // Release: the takes that read these slots happened before (in
            // program order); a producer whose Acquire load sees the new
            // `freed` (or a `limit` made from it) may overwrite them.
            self.consumer
                .freed
                .store(freed.wrapping_add(n), Ordering::Release);
        }
        n
    }

    fn pop(&self) -> Option<T> {
        let value = self.take()?;
        self.free(1);
        Some(value)
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Every producer and the consumer are gone (this is the last `Arc`),
        // so every claimed position was published; drop what was not taken.
        while self.take().is_some() {}
    }
}

/// How positions are laid out over the slots. Only speed depends on it:
/// order, capacity and every guarantee are the same.
///
/// A cache line holds several small slots. Which positions share a line
/// decides how often the line crosses between a producer's core and the
/// consumer's while the consumer keeps pace, reading each item as soon as
/// it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Position `p` in slot `p mod capacity`: a line holds consecutive
    /// positions. Best when pushes come in runs: a producer fills a line
    /// in a burst, and the line crosses once.
    #[default]
    Sequential,
    /// Four consecutive positions land a quarter of the ring apart, so a
    /// line holds positions four apart. Best when a producer spreads its
    /// pushes over several rings, as the intake's producers do over the
    /// five priority lanes: with `Sequential`, such a producer comes back to
    /// a lane's line every few pushes, and a consumer keeping pace reads
    /// the line between two of them every time. Rings under 16 slots stay
    /// sequential.
    Spread,
}

/// Creates a ring of `capacity` slots with the [`Layout::Sequential`]
/// layout and returns its two ends.
///
/// ```
/// let (tx, rx) = convoy::ring::channel::<String>(8).unwrap();
/// assert_eq!(tx.capacity(), 8);
/// assert!(convoy::ring::channel::<u8>(6).is_err()); // not a power of two
/// assert!(convoy::ring::channel::<u64>(1 << 60).is_err()); // beyond memory
/// # drop(rx);
/// ```
pub fn channel<T>(capacity: usize) -> Result<(Producer<T>, Consumer<T>), RingError> {
    channel_with(capacity, Layout::Sequential)
}

/// Creates a ring of `capacity` slots laid out as `layout`.
///
/// ```
/// use convoy::ring::{channel_with, Layout};
/// let (tx, mut rx) = channel_with::<u32>(64, Layout::Spread).unwrap();
/// tx.push_all((0..64).collect()).unwrap();
/// let mut out = vec![];
/// rx.drain_into(&mut out, 64);
/// assert_eq!(out, (0..64).collect::<Vec<_>>()); // the same FIFO
/// ```
pub fn channel_with<T>(
    capacity: usize,
    layout: Layout,
) -> Result<(Producer<T>, Consumer<T>), RingError> {
    if capacity == 0 {
        return Err(RingError::ZeroCapacity);
    }
    if !capacity.is_power_of_two() {
        return Err(RingError::NotPowerOfTwo(capacity));
    }
    let mut slots = Vec::new();
    slots
        .try_reserve_exact(capacity)
        .map_err(|_| RingError::TooLarge {
            capacity,
            bytes: capacity.saturating_mul(std::mem::size_of::<Slot<T>>()),
        })?;
    slots.extend((0..capacity).map(|_| Slot {
        stamp: AtomicUsize::new(0),
        value: UnsafeCell::new(MaybeUninit::uninit()),
    }));
    let slots = slots.into_boxed_slice();
    let ring = Arc::new(Ring {
        consumer: CachePadded::new(Positions {
            taken: AtomicUsize::new(0),
            freed: AtomicUsize::new(0),
        }),
        claims: CachePadded::new(Claims {
            tail: AtomicUsize::new(0),
            limit: AtomicUsize::new(capacity),
        }),
        slots,
        mask: capacity - 1,
        spread: Spread::new(layout, capacity),
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
        self.ring.describe("Producer", f)
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

    /// Claims `k` consecutive positions to be written later, or `None` when
    /// `k` is 0, above the capacity, or more than the free slots now. What
    /// is not written through [`Reservation::fill`] is written as
    /// `T::default()` when the reservation drops, so a claimed position is
    /// always published and the consumer never waits on it forever. The
    /// intake uses this to roll back an all-or-nothing push that spans
    /// several rings: it cannot unclaim, so it writes placeholders.
    pub(crate) fn reserve(&self, k: usize) -> Option<Reservation<'_, T>>
    where
        T: Default,
    {
        if k == 0 || k > self.capacity() {
            return None;
        }
        let first = self.ring.claim(k)?;
        Some(Reservation {
            ring: &self.ring,
            first,
            k,
            written: 0,
        })
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Slots in use (claimed and not yet freed by the consumer); a snapshot
    /// that may be stale by the time it is read.
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
        self.ring.claims.tail.load(Ordering::Relaxed) & !OWNED
    }

    /// Makes this thread the ring's only producer until the [`Owner`]
    /// drops, or returns `None` while another owner holds it. Meanwhile
    /// shared pushes are refused as if the ring were full (module docs).
    ///
    /// ```
    /// let (tx, mut rx) = convoy::ring::channel(4).unwrap();
    /// tx.push(1).unwrap();
    /// let mut owner = tx.own().expect("nobody owns it yet");
    /// assert!(tx.own().is_none());
    /// owner.push(2).unwrap();
    /// assert_eq!(tx.push(3), Err(convoy::ring::Full(3))); // owned
    /// drop(owner);
    /// tx.push(3).unwrap();
    /// assert_eq!((rx.pop(), rx.pop(), rx.pop()), (Some(1), Some(2), Some(3)));
    /// ```
    pub fn own(&self) -> Option<Owner<T>> {
        // Relaxed: as for a claim, `tail` hands out positions only; which
        // slots are free the owner learns from `freed` (see `Owner::push`).
        let mut tail = self.ring.claims.tail.load(Ordering::Relaxed);
        let mut backoff = Backoff::default();
        loop {
            if tail & OWNED != 0 {
                return None;
            }
            // Relaxed on both arms: see the load above. A shared claim that
            // moved `tail` meanwhile fails this CAS; one that comes after
            // it fails its own.
            match self.ring.claims.tail.compare_exchange_weak(
                tail,
                tail | OWNED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(current) => tail = current,
            }
            backoff.spin();
        }
        Some(Owner {
            ring: self.ring.clone(),
            tail,
            // Behind the truth: the first push reads `freed`.
            limit: tail,
        })
    }
}

/// A ring's only producer while it lives (see [`Producer::own`]): it claims
/// by plain store, with no locked instruction. Dropping it opens the ring
/// to shared pushes again.
pub struct Owner<T> {
    ring: Arc<Ring<T>>,
    /// The next position to claim: `tail` without the bit. Only this owner
    /// moves `tail`, so its own copy is exact.
    tail: usize,
    /// `freed + capacity` as last read: positions below it are free.
    limit: usize,
}

impl<T> fmt::Debug for Owner<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ring.describe("Owner", f)
    }
}

impl<T> Owner<T> {
    /// Pushes one value, or hands it back when the ring is full.
    ///
    /// ```
    /// let (tx, _rx) = convoy::ring::channel(1).unwrap();
    /// let mut owner = tx.own().unwrap();
    /// assert_eq!(owner.push('a'), Ok(()));
    /// assert_eq!(owner.push('b'), Err(convoy::ring::Full('b')));
    /// ```
    pub fn push(&mut self, value: T) -> Result<(), Full<T>> {
        let pos = self.tail;
        let end = pos.wrapping_add(1);
        if beyond(end, self.limit) {
            self.limit = self.ring.fresh_limit();
            if beyond(end, self.limit) {
                return Err(Full(value));
            }
        }
        // Relaxed: no other thread moves `tail` while the bit is set; its
        // readers take positions or statistics from it, never slot data.
        // A plain store: the point of owning the ring.
        self.ring.claims.tail.store(end | OWNED, Ordering::Relaxed);
        self.tail = end;
        // SAFETY: `pos` is claimed by this owner alone (the bit shuts every
        // other claim out) and lies below `freed + capacity`: the consumer
        // is done with the slot's last value.
        unsafe { self.ring.publish(pos, value) };
        Ok(())
    }
}

impl<T> Drop for Owner<T> {
    fn drop(&mut self) {
        // Relaxed: every position this owner claimed is published (a push
        // claims and publishes in one call), and a shared producer learns
        // which slots are free from `freed`, as always.
        self.ring.claims.tail.store(self.tail, Ordering::Relaxed);
    }
}

/// Positions claimed by [`Producer::reserve`] and not yet written.
pub(crate) struct Reservation<'a, T: Default> {
    ring: &'a Ring<T>,
    first: usize,
    k: usize,
    /// Positions `first..first + written` are published.
    written: usize,
}

impl<T: Default> Reservation<'_, T> {
    /// Writes `items` into the reserved positions in order; positions the
    /// items do not reach get `T::default()`, surplus items are dropped.
    pub(crate) fn fill(mut self, items: impl IntoIterator<Item = T>) {
        for value in items.into_iter().take(self.k) {
            // SAFETY: `first..first + k` was claimed by `reserve` for this
            // reservation alone, and `written < k` positions are published,
            // each exactly once.
            unsafe {
                self.ring
                    .publish(self.first.wrapping_add(self.written), value)
            };
            self.written += 1;
        }
    }
}

impl<T: Default> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        while self.written < self.k {
            // SAFETY: as in `fill`: an unwritten position of this claim.
            unsafe {
                self.ring
                    .publish(self.first.wrapping_add(self.written), T::default())
            };
            self.written += 1;
        }
    }
}

/// The popping end. There is exactly one, and popping needs `&mut`, which is
/// how the single-consumer half of the protocol is enforced by the compiler.
pub struct Consumer<T> {
    ring: Arc<Ring<T>>,
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ring.describe("Consumer", f)
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

    /// Moves the oldest ready value out but keeps its slot occupied, so
    /// producers cannot reuse it until [`free`](Self::free). This lets the
    /// ring's capacity bound what the consumer has taken and still works on.
    /// `None` under the same conditions as [`pop`](Self::pop).
    ///
    /// ```
    /// let (tx, mut rx) = convoy::ring::channel(1).unwrap();
    /// tx.push('a').unwrap();
    /// assert_eq!(rx.take(), Some('a'));
    /// assert!(tx.push('b').is_err()); // the slot is still held
    /// assert_eq!(rx.free(1), 1);
    /// assert!(tx.push('b').is_ok());
    /// ```
    pub fn take(&mut self) -> Option<T> {
        self.ring.take()
    }

    /// Gives the `n` oldest taken slots back to producers and returns how
    /// many it freed: at most [`held`](Self::held), so a surplus is ignored
    /// rather than freeing a slot that still holds a value.
    ///
    /// ```
    /// let (tx, mut rx) = convoy::ring::channel(4).unwrap();
    /// tx.push_all(vec![1, 2, 3]).unwrap();
    /// rx.take();
    /// rx.take();
    /// assert_eq!(rx.free(5), 2);
    /// assert_eq!(rx.len(), 1);
    /// ```
    pub fn free(&mut self, n: usize) -> usize {
        self.ring.free(n)
    }

    /// Values taken and not yet freed.
    ///
    /// ```
    /// let (tx, mut rx) = convoy::ring::channel(2).unwrap();
    /// tx.push(1).unwrap();
    /// rx.take();
    /// assert_eq!(rx.held(), 1);
    /// ```
    pub fn held(&self) -> usize {
        self.ring.held()
    }

    /// Positions claimed and not yet taken: ready, or still being written.
    ///
    /// ```
    /// let (tx, mut rx) = convoy::ring::channel(2).unwrap();
    /// tx.push(1).unwrap();
    /// assert_eq!(rx.pending(), 1);
    /// rx.take();
    /// assert_eq!(rx.pending(), 0);
    /// ```
    pub fn pending(&self) -> usize {
        self.ring.pending()
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Whether [`take`](Self::take) or [`pop`](Self::pop) would return a
    /// value now. Unlike
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

    /// Slots in use: claimed and not yet freed (a snapshot).
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
        // Every refusal hands the items back whole, in the order given.
        let oversized = tx.push_all(vec![4, 5, 6]).unwrap_err();
        assert_eq!(oversized.into_items(), [4, 5, 6]);
        tx.push_all(vec![7, 8]).unwrap();
        let full = tx.push_all(vec![9]).unwrap_err();
        assert_eq!(full.into_items(), [9]);
        assert!(PushAllError::<u8>::Empty.into_items().is_empty());
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
    fn taken_values_are_not_dropped_again_with_the_ring() {
        let marker = std::sync::Arc::new(());
        let (tx, mut rx) = channel(4).unwrap();
        for _ in 0..3 {
            tx.push(marker.clone()).unwrap();
        }
        let kept = rx.take().expect("one was pushed");
        assert_eq!(rx.held(), 1);
        drop(tx);
        drop(rx);
        // The ring dropped the two untaken values once each and left the
        // taken one (still held, never freed) alone.
        assert_eq!(std::sync::Arc::strong_count(&marker), 2);
        drop(kept);
        assert_eq!(std::sync::Arc::strong_count(&marker), 1);
    }

    #[test]
    fn reservation_publishes_defaults_for_what_it_was_not_given() {
        let (tx, mut rx) = channel::<u8>(4).unwrap();
        assert!(tx.reserve(0).is_none());
        assert!(tx.reserve(5).is_none());
        tx.reserve(3).expect("room").fill([7]); // two short
        drop(tx.reserve(1).expect("room")); // never filled
        assert!(tx.reserve(1).is_none(), "all four positions are claimed");
        let mut out = Vec::new();
        assert_eq!(rx.drain_into(&mut out, 8), 4);
        assert_eq!(out, [7, 0, 0, 0]);
        tx.reserve(2).expect("room").fill([1, 2, 3]); // surplus dropped
        assert_eq!(rx.pop(), Some(1));
        assert_eq!(rx.pop(), Some(2));
        assert_eq!(rx.pop(), None);
    }

    #[test]
    fn spread_gives_each_position_of_a_lap_its_own_slot() {
        for cap in [16usize, 64, 1024] {
            let (tx, _rx) = channel_with::<u8>(cap, Layout::Spread).unwrap();
            let ring = &tx.ring;
            let base = ring.slots.as_ptr() as usize;
            let size = std::mem::size_of::<Slot<u8>>();
            let index =
                |pos: usize| ((ring.slot(pos) as *const Slot<u8> as usize - base) / size) as isize;
            let mut seen: Vec<isize> = (0..cap).map(index).collect();
            // Consecutive positions are a quarter of the ring apart...
            assert_eq!(seen[1] - seen[0], (cap / 4) as isize);
            // ...position p and p + capacity share a slot...
            assert!((0..cap).all(|p| index(p) == index(p + 3 * cap)));
            // ...and a lap covers every slot once.
            seen.sort_unstable();
            assert_eq!(seen, (0..cap as isize).collect::<Vec<_>>());
        }
        // Under 16 slots, sequential.
        let (tx, _rx) = channel_with::<u8>(8, Layout::Spread).unwrap();
        assert_eq!(tx.ring.spread.low_bits, 0);
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

    /// An owner wraps many laps, is refused when full, and counts in `len`
    /// and `pushed` like any producer; shared pushes are refused while it
    /// lives and go on in order after it drops.
    #[test]
    fn an_owner_wraps_is_refused_when_full_and_hands_the_ring_back() {
        for layout in [Layout::Sequential, Layout::Spread] {
            let (tx, mut rx) = channel_with(16, layout).unwrap();
            tx.push(0u32).unwrap();
            let mut owner = tx.own().unwrap();
            assert!(tx.own().is_none(), "one owner at a time");
            assert_eq!(tx.push(99), Err(Full(99)), "owned: shared pushes refused");
            assert_eq!(
                tx.push_all(vec![98, 97]),
                Err(PushAllError::Full(vec![98, 97]))
            );
            let mut next = 1u32;
            let mut expect = 0u32;
            for _ in 0..40 {
                while owner.push(next).is_ok() {
                    next += 1;
                }
                assert_eq!(tx.len(), 16, "refused only when full");
                assert_eq!(owner.push(next), Err(Full(next)));
                for _ in 0..5 {
                    assert_eq!(rx.pop(), Some(expect));
                    expect += 1;
                }
            }
            assert_eq!(tx.pushed(), next as usize);
            drop(owner);
            tx.push(next).unwrap();
            let again = tx.own().expect("free again once dropped");
            drop(again);
            tx.push(next + 1).unwrap();
            while let Some(v) = rx.pop() {
                assert_eq!(v, expect);
                expect += 1;
            }
            assert_eq!(
                expect,
                next + 2,
                "everything pushed came out once, in order"
            );
            assert_eq!((tx.len(), tx.pushed()), (0, next as usize + 2));
        }
    }
}
