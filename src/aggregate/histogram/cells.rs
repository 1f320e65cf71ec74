//! Exact non-negative integers stored as narrow as they allow: every cell of a
//! `Cells` has the same width (1, 2, 4 or 8 bytes), and the whole array widens
//! when a value would not fit. Bucket counts and slot positions use it, so a
//! window of a hundred samples pays a byte per bucket, not eight.

use std::iter::repeat_n;

/// A dense array of exact `u64` values, stored in the narrowest width that
/// holds them all. Widening is the only growth beyond `Vec`'s and happens at
/// most three times per array, so `add` stays O(1) amortized; nothing ever
/// saturates or wraps below `u64`.
#[derive(Clone, Debug)]
pub(super) enum Cells {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
}

impl Default for Cells {
    fn default() -> Self {
        Cells::U8(Vec::new())
    }
}

/// Runs `$body` with `$v` bound to the variant's `Vec`, whatever its width.
macro_rules! each {
    ($cells:expr, $v:ident => $body:expr) => {
        match $cells {
            Cells::U8($v) => $body,
            Cells::U16($v) => $body,
            Cells::U32($v) => $body,
            Cells::U64($v) => $body,
        }
    };
}

/// Grows `v` to at least `len` cells, by at least a quarter of its length:
/// geometric (so amortized O(1)) with less slack than `Vec`'s doubling.
fn reserve_len<T>(v: &mut Vec<T>, len: usize) {
    if len > v.capacity() {
        let want = len.max(v.len() + v.len() / 4).max(4);
        v.reserve_exact(want - v.len());
    }
}

/// `v` converted to a wider type, keeping its capacity.
fn widened<T: Copy + Into<U>, U>(v: &[T], capacity: usize) -> Vec<U> {
    let mut out = Vec::with_capacity(capacity.max(v.len()));
    out.extend(v.iter().map(|&x| x.into()));
    out
}

impl Cells {
    /// No cells, as a constant.
    pub(super) const EMPTY: Cells = Cells::U8(Vec::new());

    pub(super) fn len(&self) -> usize {
        each!(self, v => v.len())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per cell.
    pub(super) fn width(&self) -> usize {
        match self {
            Cells::U8(_) => 1,
            Cells::U16(_) => 2,
            Cells::U32(_) => 4,
            Cells::U64(_) => 8,
        }
    }

    /// Value at `j` (0 past the end).
    #[inline]
    pub(super) fn get(&self, j: usize) -> u64 {
        each!(self, v => v.get(j).map_or(0, wide))
    }

    /// Asks for the cache line of cell `j` (nothing when out of range).
    #[inline]
    pub(super) fn prefetch(&self, j: usize) {
        each!(self, v => if let Some(cell) = v.get(j) {
            crate::prefetch::prefetch(cell);
        })
    }

    /// Widens every cell so that `value` fits.
    fn widen_for(&mut self, value: u64) {
        let need = if value <= u64::from(u8::MAX) {
            1
        } else if value <= u64::from(u16::MAX) {
            2
        } else if value <= u64::from(u32::MAX) {
            4
        } else {
            8
        };
        if need <= self.width() {
            return;
        }
        let capacity = each!(self, v => v.capacity());
        *self = match (&*self, need) {
            (Cells::U8(v), 2) => Cells::U16(widened(v, capacity)),
            (Cells::U8(v), 4) => Cells::U32(widened(v, capacity)),
            (Cells::U8(v), _) => Cells::U64(widened(v, capacity)),
            (Cells::U16(v), 4) => Cells::U32(widened(v, capacity)),
            (Cells::U16(v), _) => Cells::U64(widened(v, capacity)),
            (Cells::U32(v), _) => Cells::U64(widened(v, capacity)),
            (Cells::U64(_), _) => unreachable!("already the widest"),
        };
    }

    /// Sets cell `j` (which must exist) to `value`, widening if needed.
    #[inline]
    pub(super) fn set(&mut self, j: usize, value: u64) {
        match self {
            Cells::U8(v) if value <= u64::from(u8::MAX) => v[j] = value as u8,
            Cells::U16(v) if value <= u64::from(u16::MAX) => v[j] = value as u16,
            Cells::U32(v) if value <= u64::from(u32::MAX) => v[j] = value as u32,
            Cells::U64(v) => v[j] = value,
            _ => {
                self.widen_for(value);
                self.set(j, value);
            }
        }
    }

    /// Adds `n` to cell `j` (which must exist). Exact: a sum past `u64::MAX`
    /// overflows as the `u64` arithmetic it replaces did.
    #[inline]
    pub(super) fn add(&mut self, j: usize, n: u64) {
        let fits = match self {
            Cells::U8(v) => try_add(&mut v[j], n),
            Cells::U16(v) => try_add(&mut v[j], n),
            Cells::U32(v) => try_add(&mut v[j], n),
            Cells::U64(v) => {
                v[j] += n;
                true
            }
        };
        if !fits {
            self.set(j, self.get(j) + n);
        }
    }

    /// Appends zero cells up to `len` (never shrinks).
    pub(super) fn extend_to(&mut self, len: usize) {
        each!(self, v => {
            if len > v.len() {
                reserve_len(v, len);
                v.resize(len, 0);
            }
        })
    }

    /// Inserts `extra` zero cells at the front.
    pub(super) fn prepend_zeros(&mut self, extra: usize) {
        each!(self, v => {
            reserve_len(v, v.len() + extra);
            v.splice(0..0, repeat_n(0, extra));
        })
    }

    pub(super) fn truncate(&mut self, len: usize) {
        each!(self, v => v.truncate(len))
    }

    /// Empties the array, keeping its width and capacity.
    pub(super) fn clear(&mut self) {
        each!(self, v => v.clear())
    }

    /// Sum of the cells in `from..to` (clamped to the length).
    pub(super) fn sum(&self, from: usize, to: usize) -> u64 {
        let to = to.min(self.len());
        if from >= to {
            return 0;
        }
        each!(self, v => v[from..to].iter().map(wide).sum())
    }

    /// Adds `other[k]` to cell `base + k` for every `k` (the cells must exist).
    pub(super) fn add_all(&mut self, base: usize, other: &Cells) {
        // Typed loops while every sum fits; a cell that overflows widens the
        // array and the rest goes cell by cell.
        let done = each!(self, dst => each!(other, src => add_slice(&mut dst[base..], src)));
        for k in done..other.len() {
            self.add(base + k, other.get(k));
        }
    }

    /// Position of the first cell (scanning from the back when `reverse`) at
    /// which the running sum reaches `rank`, or the sum of all cells.
    pub(super) fn find_rank(&self, rank: u64, reverse: bool) -> Result<usize, u64> {
        each!(self, v => if reverse {
            find_rank(v.iter().enumerate().rev(), rank)
        } else {
            find_rank(v.iter().enumerate(), rank)
        })
    }

    /// Values, ascending position.
    pub(super) fn iter(&self) -> Iter<'_> {
        match self {
            Cells::U8(v) => Iter::U8(v.iter()),
            Cells::U16(v) => Iter::U16(v.iter()),
            Cells::U32(v) => Iter::U32(v.iter()),
            Cells::U64(v) => Iter::U64(v.iter()),
        }
    }

    /// Heap bytes held (capacity-based).
    pub(super) fn heap_bytes(&self) -> usize {
        each!(self, v => v.capacity()) * self.width()
    }
}

/// A cell width.
trait Cell: Copy + Ord + Default + Into<u64> + TryFrom<u64> {
    const MAX: u64;
    /// `x` cut to the width (callers make sure it fits).
    fn narrow(x: u64) -> Self;
}

macro_rules! cell {
    ($($t:ty),*) => {$(
        impl Cell for $t {
            const MAX: u64 = <$t>::MAX as u64;
            #[inline]
            fn narrow(x: u64) -> Self {
                x as $t
            }
        }
    )*};
}
cell!(u8, u16, u32, u64);

/// A cell's value.
#[inline]
fn wide<T: Cell>(cell: &T) -> u64 {
    (*cell).into()
}

/// Adds `n` to `cell` if the sum fits its width.
#[inline]
fn try_add<T: Cell>(cell: &mut T, n: u64) -> bool {
    match T::try_from((*cell).into() + n) {
        Ok(sum) => {
            *cell = sum;
            true
        }
        Err(_) => false,
    }
}

/// Adds `src[k]` into `dst[k]` until a sum does not fit; returns how many were added.
fn add_slice<T: Cell, U: Cell>(dst: &mut [T], src: &[U]) -> usize {
    let len = src.len().min(dst.len());
    let dst = &mut dst[..len];
    let room = T::MAX - dst.iter().max().copied().unwrap_or_default().into();
    if src.iter().max().copied().unwrap_or_default().into() <= room {
        // No sum can overflow: a plain loop the compiler vectorizes.
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = T::narrow((*d).into() + s.into());
        }
        return src.len();
    }
    for (k, (d, &s)) in dst.iter_mut().zip(src).enumerate() {
        if !try_add(d, s.into()) {
            return k;
        }
    }
    src.len()
}

fn find_rank<'a, T: Copy + Into<u64> + 'a>(
    cells: impl Iterator<Item = (usize, &'a T)>,
    rank: u64,
) -> Result<usize, u64> {
    let mut seen = 0u64;
    for (j, &c) in cells {
        seen += c.into();
        if seen >= rank {
            return Ok(j);
        }
    }
    Err(seen)
}

/// Iterator over the values of a `Cells`.
pub(super) enum Iter<'a> {
    U8(std::slice::Iter<'a, u8>),
    U16(std::slice::Iter<'a, u16>),
    U32(std::slice::Iter<'a, u32>),
    U64(std::slice::Iter<'a, u64>),
}

macro_rules! each_iter {
    ($iter:expr, $it:ident => $body:expr) => {
        match $iter {
            Iter::U8($it) => $body,
            Iter::U16($it) => $body,
            Iter::U32($it) => $body,
            Iter::U64($it) => $body,
        }
    };
}

impl Iterator for Iter<'_> {
    type Item = u64;

    #[inline]
    fn next(&mut self) -> Option<u64> {
        each_iter!(self, it => it.next().map(wide))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        each_iter!(self, it => it.size_hint())
    }
}

impl DoubleEndedIterator for Iter<'_> {
    #[inline]
    fn next_back(&mut self) -> Option<u64> {
        each_iter!(self, it => it.next_back().map(wide))
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_widen_step_by_step_and_stay_exact() {
        let mut cells = Cells::default();
        cells.extend_to(3);
        cells.add(1, 200);
        assert_eq!((cells.width(), cells.get(1)), (1, 200));
        cells.add(1, 100);
        assert_eq!((cells.width(), cells.get(1)), (2, 300));
        cells.add(0, u64::from(u32::MAX));
        assert_eq!(
            (cells.width(), cells.get(0), cells.get(1)),
            (4, u64::from(u32::MAX), 300)
        );
        // A window summing u32-weighted points past u32::MAX: promoted, not saturated.
        cells.add(0, u64::from(u32::MAX));
        assert_eq!((cells.width(), cells.get(0)), (8, 2 * u64::from(u32::MAX)));
        assert_eq!(cells.iter().collect::<Vec<_>>(), vec![2 * u64::from(u32::MAX), 300, 0]);
        assert_eq!(cells.sum(0, 3), 2 * u64::from(u32::MAX) + 300);
    }

    #[test]
    fn one_large_add_jumps_straight_to_the_width_it_needs() {
        let mut cells = Cells::default();
        cells.extend_to(2);
        cells.add(0, 1 << 40);
        assert_eq!((cells.width(), cells.get(0), cells.get(1)), (8, 1 << 40, 0));
        let mut narrow = Cells::default();
        narrow.extend_to(1);
        narrow.add(0, 70_000);
        assert_eq!((narrow.width(), narrow.get(0)), (4, 70_000));
    }

    #[test]
    fn widening_keeps_capacity_and_positions() {
        let mut cells = Cells::default();
        cells.extend_to(100);
        for j in 0..100 {
            cells.add(j, j as u64);
        }
        cells.prepend_zeros(5);
        cells.add(0, 1_000);
        assert_eq!(cells.width(), 2);
        assert!(cells.heap_bytes() >= 105 * 2);
        let values: Vec<u64> = cells.iter().collect();
        assert_eq!(values[0], 1_000);
        assert_eq!(&values[5..], &(0..100).collect::<Vec<_>>()[..]);
        assert_eq!(cells.iter().next_back(), Some(99));
        assert_eq!(cells.sum(6, 8), 1 + 2);
        assert_eq!(cells.sum(200, 300), 0);
        cells.clear();
        assert!(cells.is_empty() && cells.width() == 2);
    }

    #[test]
    fn adding_arrays_of_different_widths() {
        let mut a = Cells::default();
        a.extend_to(4);
        a.add(2, 255);
        let mut b = Cells::default();
        b.extend_to(2);
        b.add(0, 1);
        b.add(1, 65_536);
        a.add_all(2, &b);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![0, 0, 256, 65_536]);
        assert_eq!(a.width(), 4);
        // Sums that all fit take the plain loop; one that does not widens midway.
        a.add_all(1, &b);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![0, 1, 65_792, 65_536]);
        let mut c = Cells::default();
        c.extend_to(3);
        c.add(0, 250);
        c.add(2, 250);
        let mut d = Cells::default();
        d.extend_to(3);
        d.add(0, 5);
        d.add(1, 7);
        d.add(2, 6);
        c.add_all(0, &d);
        assert_eq!((c.width(), c.iter().collect::<Vec<_>>()), (2, vec![255, 7, 256]));
    }
}
