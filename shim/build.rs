//! Links the shim binary as a fixed-position (non-PIE) executable.
//!
//! The binary links wasmtime and Cranelift, whose tables of pointers
//! (`.data.rel.ro`, about 1.1 MiB) a position-independent executable must
//! relocate at every start: each shim and each runner process would write,
//! and so privately own, those pages, and spend part of its start-up doing
//! it. Linked at a fixed address, they are clean file pages shared by every
//! process on the node. Debian builds runc, containerd and its runc shim the
//! same way. The cost, written up in docs/security.md: the binary's own
//! image is not address-randomised (its heap, stacks, libraries, wasmtime's
//! code and the guest's memory still are).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bin=containerd-shim-wasmpod-v1=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
