//! wasmtime inside a runner process: load the entry point, link it against
//! WASI, build the guest's view of the world from the plan, and run it.
//!
//! Exit status contract (documented in the README):
//! - `proc_exit(n)` / `std::process::exit(n)` in the guest → `n`;
//! - a component's `wasi:cli/run` returning `err` → 1;
//! - a trap (`unreachable`, out-of-bounds access, stack overflow, ...) →
//!   [`TRAP_EXIT_CODE`] (134, as the `wasmtime` CLI), with the trap message and
//!   the Wasm backtrace on the container's stderr;
//! - any other runtime error → 1, with the error on stderr.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use wasmpod_oci::plan::RunPlan;
use wasmpod_oci::wasm::{classify, WasmKind};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{
    Config, Engine, InstancePre, Linker, Module, Store, StoreLimits, StoreLimitsBuilder, Trap,
    WasmBacktraceDetails,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::control::WasmFile;
use crate::runner::cache::{self, CacheConfig};
use crate::runner::sandbox::GuestFs;
use crate::sys;

/// Exit code of a guest that trapped (128 + SIGABRT, like the wasmtime CLI).
pub const TRAP_EXIT_CODE: i32 = 134;

/// Why a workload cannot be prepared. Each message names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The root filesystem directory cannot be opened.
    #[error("rootfs {path}: {source}")]
    Rootfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No candidate path for `args[0]` exists inside the rootfs.
    #[error("entrypoint {arg0:?} not found in the container's rootfs (looked for {})", tried.join(", "))]
    EntrypointNotFound { arg0: String, tried: Vec<String> },
    /// The entry point exists but is not a regular file.
    #[error("entrypoint {path}: not a regular file")]
    NotAFile { path: String },
    /// The entry point could not be opened or read.
    #[error("entrypoint {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The entry point is not a WebAssembly binary.
    #[error("entrypoint {path} is not WebAssembly ({what}); the wasmpod runtime runs .wasm modules and components only")]
    NotWasm { path: String, what: &'static str },
    /// wasmtime rejected the binary (corrupt, truncated, unsupported feature).
    #[error("entrypoint {path}: invalid WebAssembly: {reason}")]
    Compile { path: String, reason: String },
    /// The binary imports something WASI does not provide, or lacks an export.
    #[error("entrypoint {path}: cannot link: {reason}")]
    Link { path: String, reason: String },
    /// A preopen (root or bind mount) could not be opened.
    #[error("mount {guest} (host {host}): {reason}")]
    Preopen {
        host: PathBuf,
        guest: String,
        reason: String,
    },
    /// wasmtime could not be configured.
    #[error("wasmtime engine: {0}")]
    Engine(String),
}

impl LoadError {
    /// Whose fault it is: the workload's, the spec's, or the node's.
    pub fn kind(&self) -> crate::control::FailureKind {
        use crate::control::FailureKind;
        match self {
            LoadError::Rootfs { .. } | LoadError::Engine(_) => FailureKind::Node,
            LoadError::Preopen { .. } => FailureKind::Spec,
            LoadError::EntrypointNotFound { .. }
            | LoadError::NotAFile { .. }
            | LoadError::Read { .. }
            | LoadError::NotWasm { .. }
            | LoadError::Compile { .. }
            | LoadError::Link { .. } => FailureKind::Workload,
        }
    }
}

/// State of a module instance: its WASI context and memory limits.
pub struct ModuleHost {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// State of a component instance: the WASI context, its resource table and
/// memory limits.
pub struct ComponentHost {
    ctx: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for ComponentHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// A compiled and linked workload, before its WASI context exists.
enum Linked {
    Module(InstancePre<ModuleHost>),
    Component(CommandPre<ComponentHost>),
    /// A `wasi:http/incoming-handler` component, served (see
    /// [`crate::runner::http`]).
    Http(wasmtime_wasi_http::p2::bindings::ProxyPre<crate::runner::http::HttpHost>),
}

/// The workload and the world it runs in, ready to run.
enum Ready {
    Module {
        pre: InstancePre<ModuleHost>,
        ctx: WasiP1Ctx,
    },
    Component {
        pre: CommandPre<ComponentHost>,
        ctx: WasiCtx,
    },
    Http {
        pre: wasmtime_wasi_http::p2::bindings::ProxyPre<crate::runner::http::HttpHost>,
        plan: Box<RunPlan>,
        guest: std::sync::Arc<GuestFs>,
    },
}

/// What loading found and did, for the `ready` reply and the log.
#[derive(Debug)]
pub struct LoadInfo {
    /// Guest path the entry point resolved to.
    pub entrypoint: String,
    /// Whether it is a module or a component.
    pub kind: WasmKind,
    /// Whether it is served as `wasi:http` (and with which instance allocator).
    pub http: Option<&'static str>,
    /// What the module cache did: `hit`, `stored` or `compiled`.
    pub cache_outcome: &'static str,
    /// Cache problems that did not stop the load.
    pub warnings: Vec<String>,
    /// How long each step of the load took.
    pub spans: crate::spans::Spans,
}

/// A workload that is compiled and linked (as root, before the runner
/// gives up its privileges); its WASI context comes later, once the
/// runner is the spec's user.
pub struct Loaded {
    engine: Engine,
    linked: Linked,
    pub info: LoadInfo,
    /// Most bytes each linear memory of the guest may
    /// grow to; `memory.grow` beyond it fails and returns -1 to the guest.
    memory_budget: Option<usize>,
}

/// A workload that is compiled, linked and has its WASI context built:
/// all that is left is to run it.
pub struct Prepared {
    engine: Engine,
    ready: Ready,
    memory_budget: Option<usize>,
}

/// The engine configuration every runner uses.
pub fn engine() -> Result<Engine, LoadError> {
    let mut config = Config::new();
    config.wasm_backtrace_details(WasmBacktraceDetails::Enable);
    config.wasm_component_model(true);
    Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))
}

/// Reads a Wasm artifact's layer the shim wrote out: its guest name and
/// bytes.
pub fn read_layer(w: &WasmFile) -> Result<(String, Vec<u8>), LoadError> {
    let bytes = std::fs::read(&w.path).map_err(|source| LoadError::Read {
        path: w.name.clone(),
        source,
    })?;
    Ok((w.name.clone(), bytes))
}

/// Opens the directory `args[0]` is resolved in (the rootfs, or `/` in
/// the container's mount namespace): by the runner, since the path to it
/// is the node's, not the container's.
pub fn open_root(root: &Path) -> Result<File, LoadError> {
    File::open(root).map_err(|source| LoadError::Rootfs {
        path: root.to_owned(),
        source,
    })
}

/// Compiles (or maps from the module cache) and links the workload.
/// Nothing of the guest runs yet.
pub fn load(
    plan: &RunPlan,
    cache: Option<&CacheConfig>,
    entrypoint: String,
    bytes: Vec<u8>,
) -> Result<Loaded, LoadError> {
    let mut spans = crate::spans::Spans::new();
    let kind = match classify(&bytes) {
        Some(kind) => kind,
        None => {
            let what = if bytes.starts_with(b"\x7fELF") {
                "an ELF executable: run Linux containers with runc"
            } else if bytes.starts_with(b"#!") {
                "a script"
            } else if bytes.starts_with(&wasmpod_oci::wasm::MAGIC) {
                "an unknown WebAssembly version"
            } else {
                "no \\0asm header"
            };
            return Err(LoadError::NotWasm {
                path: entrypoint,
                what,
            });
        }
    };
    let http_mode =
        kind == WasmKind::Component && crate::runner::http::exports_incoming_handler(&bytes);
    let (engine, http) = if http_mode {
        let limit = plan.memory_limit.and_then(|l| usize::try_from(l).ok());
        let (e, alloc) =
            crate::runner::http::engine(limit).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        (e, Some(alloc))
    } else {
        (engine()?, None)
    };
    spans.mark("engine");
    let compile_err = |e: wasmtime::Error| LoadError::Compile {
        path: entrypoint.clone(),
        reason: format!("{e:#}"),
    };
    let link_err = |e: wasmtime::Error| LoadError::Link {
        path: entrypoint.clone(),
        reason: format!("{e:#}"),
    };
    let mut warnings = Vec::new();
    let outcome;
    let linked = match kind {
        WasmKind::Module => {
            let (module, o) =
                cache::load::<Module>(cache, &engine, &bytes, &mut |w| warnings.push(w))
                    .map_err(compile_err)?;
            outcome = o;
            spans.mark("cache");
            if module.get_export("_start").is_none() {
                return Err(LoadError::Link {
                    path: entrypoint,
                    reason: "module exports no `_start` function (not a WASI command)".into(),
                });
            }
            let mut linker: Linker<ModuleHost> = Linker::new(&engine);
            wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut ModuleHost| &mut h.wasi)
                .map_err(link_err)?;
            Linked::Module(linker.instantiate_pre(&module).map_err(link_err)?)
        }
        WasmKind::Component if http_mode => {
            let (component, o) =
                cache::load::<Component>(cache, &engine, &bytes, &mut |w| warnings.push(w))
                    .map_err(compile_err)?;
            outcome = o;
            spans.mark("cache");
            Linked::Http(
                crate::runner::http::pre_instantiate(&engine, &component).map_err(link_err)?,
            )
        }
        WasmKind::Component => {
            let (component, o) =
                cache::load::<Component>(cache, &engine, &bytes, &mut |w| warnings.push(w))
                    .map_err(compile_err)?;
            outcome = o;
            spans.mark("cache");
            let mut linker = wasmtime::component::Linker::<ComponentHost>::new(&engine);
            // `exit-with-code` (WASI 0.2.12) is linked too, so components
            // that use it keep their code; plain `exit` is only ok or err.
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link_err)?;
            let pre = linker.instantiate_pre(&component).map_err(link_err)?;
            Linked::Component(CommandPre::new(pre).map_err(link_err)?)
        }
    };
    spans.mark("link");
    drop(bytes);
    // Measured last: what the runner already holds (engine, compiled code)
    // is not the guest's to use.
    let memory_budget = plan.memory_limit.map(memory_budget);
    if memory_budget.is_some() {
        spans.mark("budget");
    }
    Ok(Loaded {
        engine,
        linked,
        info: LoadInfo {
            entrypoint,
            kind,
            http,
            cache_outcome: match outcome {
                cache::Outcome::Hit => "hit",
                cache::Outcome::HitAfterWait => "hit after waiting for another start's compile",
                cache::Outcome::Stored => "stored",
                cache::Outcome::Compiled => "compiled",
            },
            warnings,
            spans,
        },
        memory_budget,
    })
}

impl Loaded {
    /// Builds the guest's WASI context, its preopens `guest` opened now (by
    /// the spec's user, once the runner is it).
    pub fn with_guest(
        self,
        plan: &RunPlan,
        guest: GuestFs,
    ) -> Result<(Prepared, LoadInfo), LoadError> {
        let mut builder = wasi_builder(plan, &guest)?;
        let ready = match self.linked {
            Linked::Module(pre) => Ready::Module {
                pre,
                ctx: builder.build_p1(),
            },
            Linked::Component(pre) => {
                builder.initial_cwd(&plan.cwd);
                Ready::Component {
                    pre,
                    ctx: builder.build(),
                }
            }
            // built per request; checked once here so bad mounts fail Create
            Linked::Http(pre) => Ready::Http {
                pre,
                plan: Box::new(plan.clone()),
                guest: std::sync::Arc::new(guest),
            },
        };
        let prepared = Prepared {
            engine: self.engine,
            ready,
            memory_budget: self.memory_budget,
        };
        Ok((prepared, self.info))
    }
}

/// Headroom left to the runner's own allocations after the guest starts
/// (instance state, WASI buffers) inside the container's memory limit.
const RUNNER_HEADROOM: u64 = 4 << 20;

/// The guest's share of a cgroup memory limit: the limit minus what the
/// runner already uses and some headroom, so that `memory.grow` fails inside
/// wasmtime before the kernel's OOM killer has to act. At least 1 MiB.
fn memory_budget(limit: u64) -> usize {
    sys::mem::release_free_heap();
    let used = resident_bytes().unwrap_or(0);
    let budget = limit.saturating_sub(used + RUNNER_HEADROOM).max(1 << 20);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// This process's resident set size, from /proc/self/statm (in pages of
/// the kernel's page size: 4 KiB on x86-64, 16 or 64 KiB on some arm64).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(pages * u64::try_from(page).ok()?)
}

fn limits(budget: Option<usize>) -> StoreLimits {
    let mut b = StoreLimitsBuilder::new();
    if let Some(bytes) = budget {
        b = b.memory_size(bytes);
    }
    b.build()
}

/// What the plan's entry point is inside the rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    /// A WebAssembly binary (or something the runner will report on, such
    /// as an unreadable rootfs).
    Wasm,
    /// A regular file that is not WebAssembly (an ELF, a script).
    Other,
    /// No candidate path exists: the Wasm may be a layer of an artifact.
    Missing,
}

/// Finds the plan's entry point inside the rootfs and tells what it is.
pub fn locate(plan: &RunPlan) -> Located {
    let Ok(root) = File::open(&plan.root.path) else {
        return Located::Wasm;
    };
    for path in plan.entrypoint_candidates() {
        if let Ok(mut file) = sys::fs::open_in_root(&root, &path) {
            if !file.metadata().is_ok_and(|m| m.is_file()) {
                continue;
            }
            let mut header = [0u8; 8];
            return match file.read_exact(&mut header) {
                Ok(()) if classify(&header).is_some() => Located::Wasm,
                _ => Located::Other,
            };
        }
    }
    Located::Missing
}

pub fn read_entrypoint(root: &File, plan: &RunPlan) -> Result<(String, Vec<u8>), LoadError> {
    let candidates = plan.entrypoint_candidates();
    for path in &candidates {
        let mut file = match sys::fs::open_in_root(root, path) {
            Ok(f) => f,
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => continue,
            Err(e) => {
                return Err(LoadError::Read {
                    path: path.clone(),
                    source: e.into(),
                })
            }
        };
        let read_err = |source| LoadError::Read {
            path: path.clone(),
            source,
        };
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            if candidates.len() > 1 {
                continue;
            }
            return Err(LoadError::NotAFile { path: path.clone() });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut bytes).map_err(read_err)?;
        return Ok((path.clone(), bytes));
    }
    Err(LoadError::EntrypointNotFound {
        arg0: plan.args.first().cloned().unwrap_or_default(),
        tried: candidates,
    })
}

fn wasi_builder(plan: &RunPlan, guest: &GuestFs) -> Result<WasiCtxBuilder, LoadError> {
    let mut b = WasiCtxBuilder::new();
    // The runner already sits in the container's network namespace (or the
    // host's, when the spec asks for host networking, as with runc), so the
    // guest may use wasi:sockets within it; names resolve with the files
    // of the mount namespace it is in (the container's /etc/hosts and
    // /etc/resolv.conf once it has pivoted).
    b.args(&plan.args)
        .envs(&plan.env)
        .inherit_stdio()
        .inherit_network()
        .allow_tcp(true)
        .allow_udp(true)
        .allow_ip_name_lookup(true);
    for p in guest.preopens() {
        // WASI preopens are directories; a file mount (e.g. /etc/hosts) has
        // no preopen of its own.
        if !p.host.is_dir() {
            if !p.host.exists() {
                return Err(LoadError::Preopen {
                    host: p.host.clone(),
                    guest: p.guest.clone(),
                    reason: "source does not exist".into(),
                });
            }
            continue;
        }
        let perms = if p.readonly {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        preopen(&mut b, &p.host, &p.guest, perms)?;
    }
    Ok(b)
}

fn preopen(
    b: &mut WasiCtxBuilder,
    host: &Path,
    guest: &str,
    perms: FsPerms,
) -> Result<(), LoadError> {
    b.preopened_dir(host, guest, perms)
        .map(|_| ())
        .map_err(|e| LoadError::Preopen {
            host: host.to_owned(),
            guest: guest.to_owned(),
            reason: format!("{e:#}"),
        })
}

impl Prepared {
    /// Runs the guest to completion and returns the process exit code. Error
    /// reports go to the container's stderr, prefixed with `id`.
    pub fn run(self, id: &str) -> i32 {
        let code = match self.ready {
            Ready::Module { pre, ctx } => {
                let host = ModuleHost {
                    wasi: ctx,
                    limits: limits(self.memory_budget),
                };
                let mut store = Store::new(&self.engine, host);
                store.limiter(|h| &mut h.limits);
                let result = pre.instantiate(&mut store).and_then(|instance| {
                    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                    start.call(&mut store, ())
                });
                match result {
                    Ok(()) => 0,
                    Err(e) => error_exit_code(id, &e),
                }
            }
            Ready::Component { pre, ctx } => {
                let host = ComponentHost {
                    ctx,
                    table: ResourceTable::new(),
                    limits: limits(self.memory_budget),
                };
                let mut store = Store::new(&self.engine, host);
                store.limiter(|h| &mut h.limits);
                let result = pre
                    .instantiate(&mut store)
                    .and_then(|command| command.wasi_cli_run().call_run(&mut store));
                match result {
                    Ok(Ok(())) => 0,
                    Ok(Err(())) => 1,
                    Err(e) => error_exit_code(id, &e),
                }
            }
            Ready::Http { pre, plan, guest } => {
                let for_requests = plan.clone();
                let make_ctx = Box::new(move || match wasi_builder(&for_requests, &guest) {
                    Ok(mut b) => b.build(),
                    // Checked at load; a mount that vanished since gives
                    // the request a context without preopens.
                    Err(_) => WasiCtx::builder().inherit_stdio().build(),
                });
                crate::runner::http::serve(id, &plan, pre, make_ctx, self.memory_budget)
            }
        };
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        code
    }
}

/// Maps a guest's failure to an exit code, reporting traps and errors on
/// stderr. `I32Exit` is an orderly exit, not an error.
fn error_exit_code(id: &str, e: &wasmtime::Error) -> i32 {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return exit.0;
    }
    let mut stderr = std::io::stderr().lock();
    if let Some(trap) = e.downcast_ref::<Trap>() {
        let _ = writeln!(stderr, "wasmpod: container {id}: {trap}");
        if let Some(bt) = e.downcast_ref::<wasmtime::WasmBacktrace>() {
            let _ = writeln!(stderr, "{bt}");
        }
        return TRAP_EXIT_CODE;
    }
    let _ = writeln!(stderr, "wasmpod: container {id}: error: {e:?}");
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_bytes_agree_with_the_kernels_own_count() {
        // VmRSS in /proc/self/status is in kB, whatever the page size
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let ours = resident_bytes().unwrap();
        // read a moment apart: allow for what the process touched between
        let (lo, hi) = (kb * 1024 / 2, kb * 1024 * 2);
        assert!(
            (lo..=hi).contains(&ours),
            "statm {ours} bytes, VmRSS {kb} kB"
        );
    }
}
