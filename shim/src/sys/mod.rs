//! The OS boundary: every raw syscall and `unsafe` block of the shim lives
//! here, each with the reason it is sound, split by what it manages. The rest
//! of the crate is `#![deny(unsafe_code)]`.
//!
//! The calls that need root and change the process or the node (namespaces,
//! mounts, signals) go through the [`Sys`] trait: [`Linux`] makes them, and
//! the recording double of the unit tests ([`recording`]) writes them down,
//! so namespace and mount logic is tested, step by step and in order, as any
//! user.
#![allow(
    unsafe_code,
    reason = "the one module where raw syscalls live; each block says why it is sound"
)]

use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;

pub mod code;
pub mod fork;
pub mod fs;
pub mod mem;
pub mod net;
#[cfg(test)]
pub mod recording;
pub mod spawn;
pub mod term;

/// The privileged calls the shim and its runners make.
pub trait Sys: Send + Sync {
    /// `unshare(2)`: new namespaces of the kinds in `flags`.
    fn unshare(&self, flags: CloneFlags) -> io::Result<()>;
    /// `setns(2)`: joins the namespace `fd` refers to, of kind `kind`.
    fn setns(&self, fd: BorrowedFd<'_>, kind: CloneFlags) -> io::Result<()>;
    /// Brings the loopback interface of the current network namespace up.
    fn loopback_up(&self) -> io::Result<()>;
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// `umount2(2)`.
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    /// `kill(2)`.
    fn kill(&self, pid: i32, signal: Signal) -> io::Result<()>;
}

/// The real calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Linux;

impl Sys for Linux {
    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        Ok(nix::sched::unshare(flags)?)
    }

    fn setns(&self, fd: BorrowedFd<'_>, kind: CloneFlags) -> io::Result<()> {
        Ok(nix::sched::setns(fd, kind)?)
    }

    fn loopback_up(&self) -> io::Result<()> {
        net::loopback_up()
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        Ok(nix::mount::mount(source, target, fstype, flags, data)?)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        Ok(nix::mount::umount2(target, flags)?)
    }

    fn kill(&self, pid: i32, signal: Signal) -> io::Result<()> {
        Ok(nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            signal,
        )?)
    }
}
