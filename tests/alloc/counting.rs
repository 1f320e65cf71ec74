//! A counting global allocator for tests that prove a path allocates
//! nothing. Counts the current thread only, so the test harness's own threads
//! cannot disturb the count. A test binary includes it with
//! `#[path = "alloc/counting.rs"] mod counting;` (it installs itself as the
//! binary's global allocator, which is why such tests are their own binaries).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct CountingAllocator;

thread_local! {
    // `const` and `Copy`: no destructor to register, so reading it never allocates.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    static BYTES: Cell<usize> = const { Cell::new(0) };
}

fn count_one(bytes: usize) {
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
    let _ = BYTES.try_with(|count| count.set(count.get() + bytes));
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Allocations (and reallocations) made by this thread so far.
pub fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

/// Bytes requested by this thread's allocations and reallocations so far
/// (a reallocation counts its whole new size).
#[allow(dead_code)] // not every binary that counts allocations weighs them
pub fn allocated_bytes() -> usize {
    BYTES.with(Cell::get)
}
