//! The pod sandbox process: it holds the pod's namespaces open and does
//! nothing else. As PID 1 of the pod it reaps orphans re-parented to it and
//! exits 0 on SIGINT or SIGTERM (the kernel drops signals that PID 1 has no
//! handler for, so without this a pod could only be SIGKILLed).
//!
//! The signals are blocked and taken synchronously with `sigwait`, so no
//! handler runs asynchronously and nothing here needs to be
//! async-signal-safe.

use std::mem::MaybeUninit;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("wasmpod-pause {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    // SAFETY: `set` is initialised by sigemptyset before any other use; the
    // libc calls only read and write that local set and the process' signal
    // mask, and waitpid with a null status pointer writes nothing.
    unsafe {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        let mut set = set.assume_init();
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            eprintln!("pause: sigprocmask failed");
            std::process::exit(1);
        }
        loop {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                continue;
            }
            match sig {
                libc::SIGCHLD => {
                    while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
                }
                _ => {
                    eprintln!("pause: shutting down on signal {sig}");
                    std::process::exit(0);
                }
            }
        }
    }
}
