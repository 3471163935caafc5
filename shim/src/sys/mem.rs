//! The allocator and memory accounting.

/// Returns memory the allocator holds but no longer uses to the kernel (the
/// compiler's scratch space), so that it is neither charged to the
/// container's cgroup nor counted against the guest's memory budget.
pub fn release_free_heap() {
    // SAFETY: malloc_trim has no preconditions; it only walks glibc's own
    // arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes every thread allocate from the main arena. glibc gives each new
/// thread (tokio's blocking pool, a compile pool) an arena of its own,
/// whose touched pages stay after the thread is gone: private memory that a
/// node running a thousand shims pays a thousand times.
pub fn use_one_arena() {
    // SAFETY: mallopt only sets a parameter of glibc's allocator; it takes
    // no pointers, and M_ARENA_MAX may be set at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
