//! Test-only: runs syscalls in a forked child under a seccomp program, to
//! judge a compiled program by what it does.

use std::os::fd::AsRawFd;

/// A syscall to make under the filter: its number and first arguments.
pub type Probe = (libc::c_long, [libc::c_long; 3]);

/// Forks a child that sets no_new_privs, loads `program` (native-endian
/// `sock_filter` instructions) with `flags`, makes each of `probes` and
/// reports; returns each syscall's result, or `-errno`. Panics when the
/// child cannot load the program.
pub fn under_filter(program: &[u8], flags: u32, probes: &[Probe]) -> Vec<i64> {
    let filters = super::sandbox::sock_filters(program).expect("a seccomp program");
    let prog = libc::sock_fprog {
        len: u16::try_from(filters.len()).expect("a program of at most 65535 instructions"),
        filter: filters.as_ptr().cast_mut(),
    };
    let flags = libc::c_ulong::from(flags);
    let mut results = vec![0i64; probes.len()];
    let (read, write) = nix::unistd::pipe().expect("pipe");
    // SAFETY: after the fork the child (one thread, a copy of a process
    // that may have had others) makes only raw syscalls on memory prepared
    // before the fork (`prog`, `filters`, `results`, `probes`) and leaves
    // with `_exit`: nothing that could need a lock another thread held.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: see above; every pointer passed is to live memory of the
        // right type and size.
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let loaded = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &prog as *const libc::sock_fprog,
            );
            if loaded != 0 {
                libc::_exit(99);
            }
            for (slot, (nr, a)) in results.iter_mut().zip(probes) {
                let r = libc::syscall(*nr, a[0], a[1], a[2]);
                *slot = if r < 0 {
                    -i64::from(*libc::__errno_location())
                } else {
                    r
                };
            }
            libc::write(
                write.as_raw_fd(),
                results.as_ptr().cast(),
                results.len() * 8,
            );
            libc::_exit(0);
        }
    }
    drop(write);
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(read), &mut buf).expect("read the results");
    let child = nix::unistd::Pid::from_raw(pid);
    let status = nix::sys::wait::waitpid(child, None).expect("wait for the child");
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Exited(child, 0),
        "the child could not load the program"
    );
    buf.chunks_exact(8)
        .map(|c| i64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .collect()
}
