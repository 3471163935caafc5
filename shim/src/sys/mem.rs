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
