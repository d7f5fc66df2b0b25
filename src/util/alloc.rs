//! The process allocator, with a per-thread cap on single allocations while untrusted code runs.
//!
//! Why: a model's chat template is a program from the model file. minijinja bounds its
//! instructions (fuel) and `'x' * n`, but not a string doubled by `+` or `~` in a loop: forty
//! doublings cost a few hundred instructions and a terabyte. An allocator cannot return an error
//! minijinja would see (null aborts the process, unwinding out of it is undefined), so an
//! allocation over the cap ends the process with the caller's one-line error and exit status 1,
//! before the allocation is made. Renders happen before scoring and outputs are written
//! atomically, so nothing written is lost. Without `#[global_allocator]` pointing here (library
//! users) the cap is a no-op.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// `System`, checking the calling thread's cap first.
pub struct Guarded;

thread_local! {
    // (cap in bytes, 0 = none; the error text's pointer and length, borrowed from the guard).
    static CAP: Cell<(usize, *const u8, usize)> = const { Cell::new((0, std::ptr::null(), 0)) };
}

fn check(size: usize) {
    let (cap, ptr, len) = CAP.try_with(|c| c.get()).unwrap_or((0, std::ptr::null(), 0));
    if cap == 0 || size <= cap {
        return;
    }
    // Lift the cap so the message itself may allocate.
    let _ = CAP.try_with(|c| c.set((0, std::ptr::null(), 0)));
    // SAFETY: ptr/len come from the `&str` the live `CapGuard` borrows.
    let what = unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(ptr, len)) };
    eprintln!("error: {what}");
    std::process::exit(1);
}

// SAFETY: every call forwards to `System` with the same arguments; `check` only reads a
// thread-local and may end the process before the forward.
unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

/// While alive, an allocation larger than `bytes` on this thread ends the process with
/// `error: {what} (...)`. Guards nest; dropping restores the outer cap.
pub struct CapGuard<'a> {
    prev: (usize, *const u8, usize),
    _what: std::marker::PhantomData<&'a str>,
}

pub fn cap_allocations(bytes: usize, what: &str) -> CapGuard<'_> {
    let prev = CAP.with(|c| c.replace((bytes.max(1), what.as_ptr(), what.len())));
    CapGuard { prev, _what: std::marker::PhantomData }
}

impl Drop for CapGuard<'_> {
    fn drop(&mut self) {
        let _ = CAP.try_with(|c| c.set(self.prev));
    }
}

/// Let glibc's malloc keep freed memory for reuse instead of returning it to the kernel and
/// faulting fresh zeroed pages in again. Every op of a forward pass allocates its output
/// (activations of a few hundred KB to tens of MB); glibc serves blocks above its mmap threshold
/// (128 KB at first) with fresh mappings and trims the heap top above 128 KB free, so a probe
/// batch paid its buffers in page faults and kernel zeroing over and over (about 120,000 faults
/// in 40 Gemma prompts, 3% of the CPU time in the kernel). A higher threshold, trim threshold and
/// top pad keep those pages: the probe's peak memory is the same (its buffers are alive at the
/// peak anyway).
/// Other C libraries: nothing to do.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets malloc's parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
