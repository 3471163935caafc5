//! Mapping precompiled native code from the node's module cache: the one
//! place trusted bytes become executable.

use std::os::fd::AsRawFd;

/// The path of an open file through `/proc/self/fd`, which names that very
/// file (not whatever is at its original path now).
fn fd_path(file: &std::fs::File) -> std::path::PathBuf {
    format!("/proc/self/fd/{}", file.as_raw_fd()).into()
}

/// Maps a precompiled module from the shim's cache.
pub fn map_cached_module(
    engine: &wasmtime::Engine,
    file: &std::fs::File,
) -> wasmtime::Result<wasmtime::Module> {
    // SAFETY: wasmtime trusts precompiled code, so only trusted bytes may be
    // loaded. This is called by `cache::lookup` only, on a file of the
    // shim's own cache directory (root-owned, never taken from an image),
    // opened once, whose sha256 was just checked, through that same open
    // file, against the digest the cache recorded when it wrote the file
    // from its own compilation. wasmtime also checks that the artifact was
    // made by this version with this engine configuration.
    unsafe { wasmtime::Module::deserialize_file(engine, fd_path(file)) }
}

/// Maps a precompiled component from the shim's cache.
pub fn map_cached_component(
    engine: &wasmtime::Engine,
    file: &std::fs::File,
) -> wasmtime::Result<wasmtime::component::Component> {
    // SAFETY: as for `map_cached_module`.
    unsafe { wasmtime::component::Component::deserialize_file(engine, fd_path(file)) }
}
