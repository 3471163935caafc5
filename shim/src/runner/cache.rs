//! The node-local cache of precompiled modules and components.
//!
//! Compiling is the slowest part of starting a Wasm container. Each distinct
//! binary is compiled once per node and engine configuration; later starts
//! map the native code from the cache file, so every container running it
//! shares those pages.
//!
//! - Key: sha256 of the Wasm bytes plus wasmtime's precompile compatibility
//!   hash (wasmtime version and engine settings), so a shim upgrade or a
//!   config change never loads a stale entry.
//! - Integrity: each entry has a sidecar holding the sha256 of the artifact.
//!   An entry whose digest does not match (corrupt, truncated, tampered) is a
//!   miss and is removed: only what this cache wrote and still verifies is
//!   ever loaded, and nothing precompiled ever comes from an image. The
//!   file is hashed and mapped through one open descriptor.
//! - Atomic: entries are written to a temporary file in the cache directory
//!   and renamed into place, digest first, so concurrent first starts of the
//!   same module race harmlessly and readers never see half an entry.
//! - Bounded: after each write the oldest entries (by last use, which a hit
//!   refreshes at most once a minute) are evicted until the cache fits.
//! - Best effort: a cache that cannot be created or written (read-only or
//!   full disk) only costs a compile.

use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use crate::sys;

/// Where the shim keeps the cache unless `WASMPOD_CACHE_DIR` says otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/wasmpod/cache";
/// Default bound on the cache's total size.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// Where the cache lives and how large it may grow; the shim reads it from
/// its environment (`WASMPOD_CACHE_DIR`, `WASMPOD_CACHE_MAX_MB`, and
/// `WASMPOD_CACHE_DIR=off` to disable) and hands it to each runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl CacheConfig {
    /// The configuration from the shim's environment; `None` when disabled.
    pub fn from_env() -> Option<Self> {
        let dir = std::env::var_os("WASMPOD_CACHE_DIR").unwrap_or_else(|| DEFAULT_DIR.into());
        if dir == "off" || dir.is_empty() {
            return None;
        }
        let max_bytes = std::env::var("WASMPOD_CACHE_MAX_MB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(DEFAULT_MAX_BYTES, |mb| mb << 20);
        Some(CacheConfig {
            dir: dir.into(),
            max_bytes,
        })
    }
}

/// What a lookup did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Loaded from a verified cache entry.
    Hit,
    /// Loaded from the entry another start compiled while this one waited.
    HitAfterWait,
    /// Compiled, and stored for next time.
    Stored,
    /// Compiled; the cache could not be used (logged to the caller).
    Compiled,
}

/// A compiled artifact kind.
pub trait Artifact: Sized {
    /// File name suffix of its entries.
    const SUFFIX: &'static str;
    /// Compiles from Wasm bytes.
    fn compile(engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Self>;
    /// Serializes to the precompiled form.
    fn serialize(&self) -> wasmtime::Result<Vec<u8>>;
    /// Maps a verified cache entry, from the open file that was verified.
    fn load(engine: &Engine, file: &std::fs::File) -> wasmtime::Result<Self>;
}

/// Runs `compile` on a thread pool of its own, ended (and its threads
/// gone) before this returns: the runner changes its credentials after the
/// load, and credentials are per thread, so no compiler thread may outlive
/// it. A pool that cannot start compiles on this thread.
fn compile_in_own_pool<T: Send>(compile: impl FnOnce() -> T + Send) -> T {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(16));
    let (done, exited) = std::sync::mpsc::channel();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .exit_handler(move |_| {
            let _ = done.send(());
        })
        .build();
    let Ok(pool) = pool else {
        return compile();
    };
    let out = pool.install(compile);
    drop(pool);
    for _ in 0..threads {
        if exited.recv_timeout(Duration::from_secs(10)).is_err() {
            break;
        }
    }
    out
}

impl Artifact for Module {
    const SUFFIX: &'static str = "cwasm";
    fn compile(engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Self> {
        compile_in_own_pool(|| Module::new(engine, wasm))
    }
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Module::serialize(self)
    }
    fn load(engine: &Engine, file: &std::fs::File) -> wasmtime::Result<Self> {
        sys::code::map_cached_module(engine, file)
    }
}

impl Artifact for Component {
    const SUFFIX: &'static str = "ccwasm";
    fn compile(engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Self> {
        compile_in_own_pool(|| Component::new(engine, wasm))
    }
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Component::serialize(self)
    }
    fn load(engine: &Engine, file: &std::fs::File) -> wasmtime::Result<Self> {
        sys::code::map_cached_component(engine, file)
    }
}

/// The entry name for `wasm` under `engine`: the sha256 of the Wasm, and a
/// digest of wasmtime's compatibility hash (its version and the engine's
/// settings) that stays the same across Rust releases (std's
/// `DefaultHasher` does not promise to).
pub fn key(engine: &Engine, wasm: &[u8]) -> String {
    let mut h = StableHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{}-{:016x}", hex::encode(Sha256::digest(wasm)), h.finish())
}

/// A `Hasher` over sha256: what `Hash` feeds it decides the result, not a
/// hash function std may change.
struct StableHasher(Sha256);

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }
}

/// Compiles `wasm`, or loads it from the cache. Compile errors are returned;
/// cache trouble is reported through `warn` and never fails the load.
///
/// Concurrent first starts of the same Wasm (a Deployment scaled out on a
/// node) compile it once: the first takes the entry's lock file, the others
/// wait for it and then map what it stored. What was compiled here is
/// replaced by the stored entry's mapping, so even the first container's
/// code pages are the page cache's, shared with every later one, and the
/// compiler's scratch memory goes back to the kernel.
pub fn load<A: Artifact>(
    config: Option<&CacheConfig>,
    engine: &Engine,
    wasm: &[u8],
    warn: &mut dyn FnMut(String),
) -> wasmtime::Result<(A, Outcome)> {
    let Some(config) = config else {
        return Ok((compile::<A>(engine, wasm)?, Outcome::Compiled));
    };
    let name = format!("{}.{}", key(engine, wasm), A::SUFFIX);
    let path = config.dir.join(&name);
    let digest_path = config.dir.join(format!("{name}.sha256"));
    if let Some(artifact) = lookup::<A>(engine, &path, &digest_path, warn) {
        return Ok((artifact, Outcome::Hit));
    }
    // Held until the entry is stored (or this start gives up on it).
    let lock = compile_lock(&config.dir, &name, warn);
    // Stored meanwhile, by the holder this start waited for or by one that
    // finished between the miss above and the lock.
    if lock.is_some() {
        if let Some(artifact) = lookup::<A>(engine, &path, &digest_path, warn) {
            let waited = lock.as_ref().is_some_and(|l| l.waited);
            return Ok((
                artifact,
                if waited {
                    Outcome::HitAfterWait
                } else {
                    Outcome::Hit
                },
            ));
        }
    }
    let artifact = compile::<A>(engine, wasm)?;
    match store(config, &artifact, &path, &digest_path) {
        Ok(()) => {
            drop(lock);
            // the stored entry's mapping instead of the private copy
            match lookup::<A>(engine, &path, &digest_path, warn) {
                Some(mapped) => {
                    drop(artifact);
                    sys::mem::release_free_heap();
                    Ok((mapped, Outcome::Stored))
                }
                None => Ok((artifact, Outcome::Stored)),
            }
        }
        Err(e) => {
            warn(format!(
                "module cache {}: not stored: {e}",
                config.dir.display()
            ));
            Ok((artifact, Outcome::Compiled))
        }
    }
}

/// Compiles, then hands the compiler's freed scratch memory back.
fn compile<A: Artifact>(engine: &Engine, wasm: &[u8]) -> wasmtime::Result<A> {
    let out = A::compile(engine, wasm);
    sys::mem::release_free_heap();
    out
}

/// How long a start waits for another process compiling the same entry
/// before it compiles the entry itself (a holder stopped or frozen must
/// not hold every other start back for ever).
const COMPILE_WAIT: Duration = Duration::from_secs(120);

/// An entry's lock file, held (`flock`, so the kernel releases it when its
/// holder dies) while one process compiles and stores the entry, and
/// removed by its holder when done, stored or not (a full or read-only
/// cache keeps no lock files). A waiter still holding the removed file
/// then finds the entry stored, or compiles it itself; one that arrives
/// after makes a new lock file, takes it at once and finds the entry.
struct CompileLock {
    _file: std::fs::File,
    path: PathBuf,
    /// Whether another process held it first (and so may have stored the
    /// entry meanwhile).
    waited: bool,
}

impl Drop for CompileLock {
    fn drop(&mut self) {
        // unlinked while still held; the descriptor closes after this
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes `<dir>/<name>.lock`, waiting up to [`COMPILE_WAIT`]; `None` when
/// the lock cannot be had (an unwritable cache, a holder that never ends),
/// and the caller compiles without it.
fn compile_lock(dir: &Path, name: &str, warn: &mut dyn FnMut(String)) -> Option<CompileLock> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).ok()?;
    let path = dir.join(format!("{name}.lock"));
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .ok()?;
    let deadline = std::time::Instant::now() + COMPILE_WAIT;
    let mut waited = false;
    let mut pause = Duration::from_millis(2);
    loop {
        match file.try_lock() {
            Ok(()) => {
                return Some(CompileLock {
                    _file: file,
                    path,
                    waited,
                })
            }
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                waited = true;
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                warn(format!(
                    "module cache: {} still locked by another compile after {COMPILE_WAIT:?}: compiling here too",
                    path.display()
                ));
                return None;
            }
            Err(std::fs::TryLockError::Error(_)) => return None,
        }
    }
}

/// A hit refreshes an entry's last use (its mtime, which eviction sorts by)
/// only when it is older than this, so busy nodes do not write the cache's
/// metadata on every start.
const REFRESH_LAST_USE: Duration = Duration::from_secs(60);

/// The sha256 of what `file` holds, read in chunks (no copy of the whole
/// artifact on the heap).
fn digest_of(file: &mut std::fs::File) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What a `.verified` stamp records: that this boot, the entry's file (by
/// device, inode, size and ctime, which any write changes and nobody can set)
/// was hashed and matched this digest.
fn stamp(file: &std::fs::File, digest: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let m = file.metadata().ok()?;
    Some(format!(
        "{} {} {} {} {}.{:09} {}\n",
        boot.trim(),
        m.dev(),
        m.ino(),
        m.size(),
        m.ctime(),
        m.ctime_nsec(),
        digest
    ))
}

/// The paths that belong to entry `path`: its `.sha256` sidecar and its
/// `.verified` stamp.
fn companions(path: &Path) -> [PathBuf; 2] {
    ["sha256", "verified"].map(|ext| {
        let mut p = path.to_path_buf().into_os_string();
        p.push(".");
        p.push(ext);
        PathBuf::from(p)
    })
}

fn discard(path: &Path) {
    let _ = std::fs::remove_file(path);
    for p in companions(path) {
        let _ = std::fs::remove_file(p);
    }
    // An unlinked lock file a waiter still holds costs at most one more
    // compile of the entry.
    let mut lock = path.to_path_buf().into_os_string();
    lock.push(".lock");
    let _ = std::fs::remove_file(lock);
}

fn lookup<A: Artifact>(
    engine: &Engine,
    path: &Path,
    digest_path: &Path,
    warn: &mut dyn FnMut(String),
) -> Option<A> {
    let want = std::fs::read_to_string(digest_path).ok()?;
    let want = want.trim();
    let [_, stamp_path] = companions(path);
    // One open file is hashed and then mapped: an entry replaced between
    // the two is never the one loaded.
    let mut file = std::fs::File::open(path).ok()?;
    // Last use first, so that the stamp below sees the ctime it leaves.
    let stale = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age > REFRESH_LAST_USE);
    if stale {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
    // Hashing costs about a millisecond per 2 MB on every start. It is done
    // once per boot and entry: a stamp records that this very file, unwritten
    // since (its ctime), matched; a reboot or any write means hashing again.
    let before = stamp(&file, want);
    let stamped = before
        .as_ref()
        .is_some_and(|s| std::fs::read_to_string(&stamp_path).is_ok_and(|t| t == *s));
    if !stamped && digest_of(&mut file).ok()? != want {
        warn(format!(
            "module cache: {} does not match its digest: discarded",
            path.display()
        ));
        discard(path);
        return None;
    }
    match A::load(engine, &file) {
        Ok(a) => {
            // Stamp only what was hashed: the file must be as it was before
            // the hash began. Best effort; without a stamp the next start
            // hashes again.
            if let (false, Some(s), Some(dir)) = (stamped, before, path.parent()) {
                if stamp(&file, want).as_ref() == Some(&s) && path.exists() {
                    let _ = write_atomic(dir, &stamp_path, s.as_bytes(), false);
                }
            }
            Some(a)
        }
        Err(e) => {
            warn(format!(
                "module cache: {} rejected by wasmtime: {e}: discarded",
                path.display()
            ));
            discard(path);
            None
        }
    }
}

fn store<A: Artifact>(
    config: &CacheConfig,
    artifact: &A,
    path: &Path,
    digest_path: &Path,
) -> std::io::Result<()> {
    std::fs::create_dir_all(&config.dir)?;
    let bytes = artifact.serialize().map_err(std::io::Error::other)?;
    let digest = hex::encode(Sha256::digest(&bytes));
    write_atomic(&config.dir, digest_path, digest.as_bytes(), true)?;
    write_atomic(&config.dir, path, &bytes, true)?;
    evict(config);
    Ok(())
}

/// Prefix of the temp files entries are written to before the rename.
const TEMP_PREFIX: &str = ".wasmpod-tmp";

/// A temp file this old was left by a writer that died mid-write (a runner
/// killed while storing): [`evict`] removes it.
const STALE_TEMP: Duration = Duration::from_secs(600);

/// Writes `bytes` to `path` through a temp file and a rename, fsynced first
/// when it must survive a crash.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if durable {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Removes temp files left by writers that died, then the least recently
/// used entries until the cache fits.
fn evict(config: &CacheConfig) {
    sweep_stale_temps(&config.dir, STALE_TEMP);
    sweep_orphans(&config.dir, STALE_TEMP);
    let Ok(dir) = std::fs::read_dir(&config.dir) else {
        return;
    };
    let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = dir
        .filter_map(Result::ok)
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "cwasm" || x == "ccwasm")
        })
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    let mut total: u64 = entries.iter().map(|e| e.1).sum();
    entries.sort();
    for (_, len, path) in entries {
        if total <= config.max_bytes {
            break;
        }
        discard(&path);
        total = total.saturating_sub(len);
    }
}

/// Removes sidecars, stamps and lock files older than `age` whose entry is
/// gone (an eviction racing a lookup, a writer that died between its two
/// renames or before it stored anything).
fn sweep_orphans(dir: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        let is_companion = path
            .extension()
            .is_some_and(|x| x == "sha256" || x == "verified" || x == "lock");
        if is_companion && !path.with_extension("").exists() && older_than(&e, age) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Whether the directory entry was last modified at least `age` ago.
fn older_than(e: &std::fs::DirEntry, age: Duration) -> bool {
    e.metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|a| a >= age)
}

/// Removes this cache's temp files older than `age` (younger ones may
/// belong to a writer still at work).
fn sweep_stale_temps(dir: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) && older_than(&e, age) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &str = r#"(module (func (export "_start")))"#;

    fn setup(max_bytes: u64) -> (tempfile::TempDir, CacheConfig, Engine, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig {
            dir: dir.path().join("cache"),
            max_bytes,
        };
        (dir, config, Engine::default(), wat::parse_str(WAT).unwrap())
    }

    fn no_warn() -> impl FnMut(String) {
        |w| panic!("unexpected warning: {w}")
    }

    #[test]
    fn stale_temp_files_are_swept_fresh_ones_kept() {
        let (_d, config, engine, wasm) = setup(1 << 30);
        std::fs::create_dir_all(&config.dir).unwrap();
        let stale = config.dir.join(format!("{TEMP_PREFIX}dead"));
        let fresh = config.dir.join(format!("{TEMP_PREFIX}busy"));
        std::fs::write(&stale, b"half an entry").unwrap();
        std::fs::write(&fresh, b"being written").unwrap();
        let long_ago = std::time::SystemTime::now() - STALE_TEMP - Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let (_, o) = load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        assert_eq!(o, Outcome::Stored);
        assert!(!stale.exists(), "a dead writer's temp file was kept");
        assert!(fresh.exists(), "a live writer's temp file was removed");
    }

    #[test]
    fn orphaned_sidecars_and_stamps_are_swept() {
        let (_d, config, engine, wasm) = setup(1 << 30);
        std::fs::create_dir_all(&config.dir).unwrap();
        let long_ago = std::time::SystemTime::now() - STALE_TEMP - Duration::from_secs(1);
        let mut paths = Vec::new();
        for name in [
            "gone.cwasm.sha256",
            "gone.ccwasm.verified",
            "young.cwasm.sha256",
        ] {
            let p = config.dir.join(name);
            std::fs::write(&p, b"x").unwrap();
            if !name.starts_with("young") {
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(long_ago)
                    .unwrap();
            }
            paths.push(p);
        }
        let (_, o) = load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        assert_eq!(o, Outcome::Stored);
        assert!(!paths[0].exists() && !paths[1].exists(), "old orphans kept");
        assert!(paths[2].exists(), "a young sidecar may precede its entry");
        // the entry just stored keeps its sidecar
        let entry = config.dir.join(format!("{}.cwasm", key(&engine, &wasm)));
        assert!(companions(&entry)[0].exists());
    }

    /// The lock file of `wasm`'s entry, taken as another start would.
    fn hold_compile_lock(config: &CacheConfig, engine: &Engine, wasm: &[u8]) -> std::fs::File {
        std::fs::create_dir_all(&config.dir).unwrap();
        let name = format!("{}.{}", key(engine, wasm), Module::SUFFIX);
        let f = std::fs::File::create(config.dir.join(format!("{name}.lock"))).unwrap();
        f.lock().unwrap();
        f
    }

    #[test]
    fn a_start_waits_for_the_compile_in_progress_and_maps_its_entry() {
        let (_d, config, engine, wasm) = setup(1 << 30);
        let held = hold_compile_lock(&config, &engine, &wasm);
        let waiter = {
            let (config, engine, wasm) = (config.clone(), engine.clone(), wasm.clone());
            std::thread::spawn(move || {
                load::<Module>(Some(&config), &engine, &wasm, &mut no_warn())
                    .unwrap()
                    .1
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!waiter.is_finished(), "did not wait for the lock holder");
        // the holder stores the entry, then lets go
        let name = format!("{}.{}", key(&engine, &wasm), Module::SUFFIX);
        let path = config.dir.join(&name);
        let module = Module::new(&engine, &wasm).unwrap();
        store(
            &config,
            &module,
            &path,
            &config.dir.join(format!("{name}.sha256")),
        )
        .unwrap();
        drop(held);
        assert_eq!(waiter.join().unwrap(), Outcome::HitAfterWait);
    }

    #[test]
    fn a_lock_holder_that_stored_nothing_leaves_the_compile_to_the_waiter() {
        let (_d, config, engine, wasm) = setup(1 << 30);
        let held = hold_compile_lock(&config, &engine, &wasm);
        let waiter = {
            let (config, engine, wasm) = (config.clone(), engine.clone(), wasm.clone());
            std::thread::spawn(move || {
                load::<Module>(Some(&config), &engine, &wasm, &mut no_warn())
                    .unwrap()
                    .1
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        drop(held); // it died mid-compile (its lock file stays)
        assert_eq!(waiter.join().unwrap(), Outcome::Stored);
        let name = format!("{}.{}", key(&engine, &wasm), Module::SUFFIX);
        assert!(!config.dir.join(format!("{name}.lock")).exists());
        let (_, o) = load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        assert_eq!(o, Outcome::Hit);
    }

    #[test]
    fn miss_then_hit() {
        let (_d, config, engine, wasm) = setup(1 << 30);
        let (_, o) = load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        assert_eq!(o, Outcome::Stored);
        let locks: Vec<_> = std::fs::read_dir(&config.dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "lock"))
            .collect();
        assert!(locks.is_empty(), "lock file kept: {locks:?}");
        let (_, o) = load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        assert_eq!(o, Outcome::Hit);
    }

    #[test]
    fn hit_refreshes_last_use_at_most_once_a_minute() {
        let (_d, config, engine, wasm) = setup(1 << 30);
        load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        let entry = config.dir.join(format!("{}.cwasm", key(&engine, &wasm)));
        let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        let set = |p: &Path, t| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(t)
                .unwrap()
        };
        let now = std::time::SystemTime::now();
        // used 30 s ago: a hit leaves it alone
        let recent = now - Duration::from_secs(30);
        set(&entry, recent);
        let (_, o) = load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        assert_eq!(o, Outcome::Hit);
        assert_eq!(mtime(&entry), recent);
        // used an hour ago: a hit makes it the most recently used
        set(&entry, now - Duration::from_secs(3600));
        let (_, o) = load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        assert_eq!(o, Outcome::Hit);
        assert!(mtime(&entry) >= now, "last use not refreshed");
    }

    #[test]
    fn hashed_once_per_boot_until_the_file_changes() {
        let (_d, config, engine, wasm) = setup(1 << 30);
        load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        let entry = config.dir.join(format!("{}.cwasm", key(&engine, &wasm)));
        let [_, stamp_path] = companions(&entry);
        // the store maps what it wrote, hashing and stamping it
        assert!(stamp_path.exists(), "the stored entry is not stamped");
        let (_, o) = load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        assert_eq!(o, Outcome::Hit);
        let stamp_text = std::fs::read_to_string(&stamp_path).unwrap();
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        assert!(stamp_text.starts_with(boot.trim()), "{stamp_text}");
        // a forged stamp of another boot is not trusted: the entry is hashed
        // again, found corrupt, and replaced
        let mut bytes = std::fs::read(&entry).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&entry, &bytes).unwrap();
        std::fs::write(
            &stamp_path,
            stamp_text.replacen(boot.trim(), "other-boot", 1),
        )
        .unwrap();
        let mut warnings = Vec::new();
        let (_, o) =
            load::<Module>(Some(&config), &engine, &wasm, &mut |w| warnings.push(w)).unwrap();
        assert_eq!(o, Outcome::Stored, "{warnings:?}");
        assert!(warnings[0].contains("does not match"), "{warnings:?}");
        // a write after stamping changes ctime: hashed again, caught
        let (_, o) = load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        assert_eq!(o, Outcome::Hit);
        assert!(stamp_path.exists());
        std::thread::sleep(Duration::from_millis(20));
        let mut bytes = std::fs::read(&entry).unwrap();
        bytes[last] ^= 0xff;
        std::fs::write(&entry, &bytes).unwrap();
        let mut warnings = Vec::new();
        let (_, o) =
            load::<Module>(Some(&config), &engine, &wasm, &mut |w| warnings.push(w)).unwrap();
        assert_eq!(o, Outcome::Stored, "{warnings:?}");
        assert!(warnings[0].contains("does not match"), "{warnings:?}");
    }

    #[test]
    fn corrupt_entry_is_a_miss_and_replaced() {
        let (_d, config, engine, wasm) = setup(1 << 30);
        load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        let entry = config.dir.join(format!("{}.cwasm", key(&engine, &wasm)));
        let mut bytes = std::fs::read(&entry).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&entry, &bytes).unwrap();
        let mut warnings = Vec::new();
        let (_, o) =
            load::<Module>(Some(&config), &engine, &wasm, &mut |w| warnings.push(w)).unwrap();
        assert_eq!(o, Outcome::Stored, "{warnings:?}");
        assert!(
            warnings[0].contains("does not match its digest"),
            "{warnings:?}"
        );
        let (_, o) = load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        assert_eq!(o, Outcome::Hit);
    }

    #[test]
    fn entry_without_digest_is_never_loaded() {
        let (_d, config, engine, wasm) = setup(1 << 30);
        std::fs::create_dir_all(&config.dir).unwrap();
        // something that claims to be an entry, written by someone else
        let entry = config.dir.join(format!("{}.cwasm", key(&engine, &wasm)));
        std::fs::write(&entry, b"not native code").unwrap();
        let (_, o) = load::<Module>(Some(&config), &engine, &wasm, &mut no_warn()).unwrap();
        assert_eq!(o, Outcome::Stored);
    }

    #[test]
    fn unwritable_cache_still_compiles() {
        let (d, _, engine, wasm) = setup(1 << 30);
        let file = d.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let config = CacheConfig {
            dir: file.join("cache"),
            max_bytes: 1 << 30,
        };
        let mut warnings = Vec::new();
        let (_, o) =
            load::<Module>(Some(&config), &engine, &wasm, &mut |w| warnings.push(w)).unwrap();
        assert_eq!(o, Outcome::Compiled);
        assert!(warnings[0].contains("not stored"), "{warnings:?}");
    }

    #[test]
    fn the_key_does_not_depend_on_std_hashing() {
        // a fixed input gives a fixed key part, whatever the Rust release
        let mut h = StableHasher(Sha256::new());
        (1u32, "abc").hash(&mut h);
        assert_eq!(format!("{:016x}", h.finish()), STABLE_HASH_OF_1_ABC);
        let engine = Engine::default();
        let k = key(&engine, b"\0asm\x01\0\0\0");
        let (digest, compat) = k.split_once('-').unwrap();
        assert_eq!(digest, hex::encode(Sha256::digest(b"\0asm\x01\0\0\0")));
        assert_eq!(compat.len(), 16);
        assert_eq!(key(&engine, b"\0asm\x01\0\0\0"), k, "not deterministic");
    }

    /// sha256 of `1u32.to_ne_bytes()`, `b"abc"`, `0xff` (how std feeds a
    /// `(u32, &str)`), first 8 bytes, on a little-endian machine.
    const STABLE_HASH_OF_1_ABC: &str = "6bde40236aa3173d";

    #[test]
    fn evicts_least_recently_used_first() {
        let (_d, mut config, engine, _) = setup(1 << 30);
        let modules: Vec<Vec<u8>> = ["a", "b", "c"]
            .iter()
            .map(|n| wat::parse_str(format!(r#"(module (func (export "{n}")))"#)).unwrap())
            .collect();
        let entry = |wasm: &[u8]| config.dir.join(format!("{}.cwasm", key(&engine, wasm)));
        let used = |wasm: &[u8], secs_ago: u64| {
            std::fs::File::options()
                .write(true)
                .open(entry(wasm))
                .unwrap()
                .set_modified(std::time::SystemTime::now() - Duration::from_secs(secs_ago))
                .unwrap()
        };
        for m in &modules[..2] {
            load::<Module>(Some(&config), &engine, m, &mut no_warn()).unwrap();
        }
        // a used 2 h ago, b 3 h ago; then a is started again (a hit
        // refreshes its last use): b is now the least recently used
        used(&modules[0], 7200);
        used(&modules[1], 10800);
        let (_, o) = load::<Module>(Some(&config), &engine, &modules[0], &mut no_warn()).unwrap();
        assert_eq!(o, Outcome::Hit);
        // room for two entries: storing c evicts b, and only b
        let size = std::fs::metadata(entry(&modules[0])).unwrap().len();
        config.max_bytes = size * 2 + size / 2;
        let (_, o) = load::<Module>(Some(&config), &engine, &modules[2], &mut no_warn()).unwrap();
        assert_eq!(o, Outcome::Stored);
        assert!(
            entry(&modules[0]).exists(),
            "the most recently used was evicted"
        );
        assert!(
            !entry(&modules[1]).exists(),
            "the least recently used was kept"
        );
        assert!(entry(&modules[2]).exists(), "the new entry was evicted");
        assert!(
            !companions(&entry(&modules[1]))[0].exists(),
            "its sidecar was kept"
        );
    }
}
