//! Serving a `wasi:http/incoming-handler` component from a runner: an HTTP
//! server on the container's port (inside the pod's network namespace), a
//! fresh instance per request from one pre-instantiated component, and
//! `wasi:http/outgoing-handler` for calls to other services.
//!
//! - Port: `WASMPOD_HTTP_PORT` from the container's environment, else 8080,
//!   on all IPv4 addresses of the namespace.
//! - A handler that traps (or exceeds its limits) gets that request a 500;
//!   the error is logged to the container's stderr at most once a second
//!   (with a count of the ones left out); the server goes on.
//! - Limits per request: linear memory within the container's memory budget
//!   (a store limiter), and `WASMPOD_HTTP_TIMEOUT_MS` (default 30000) of
//!   execution, enforced by epoch interruption, so a spinning handler ends.
//! - SIGTERM: stop accepting, finish the requests in flight, exit 0. SIGKILL
//!   ends the process at once, as for any container.
//! - No per-request logging.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use wasmpod_oci::plan::RunPlan;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Default port of an HTTP component.
pub const DEFAULT_PORT: u16 = 8080;
/// Default per-request execution limit.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// How often the epoch advances (the timeout's granularity).
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Whether a component exports `wasi:http/incoming-handler` (read from its
/// export section; nothing is compiled).
pub fn exports_incoming_handler(bytes: &[u8]) -> bool {
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(
                wasmparser::Payload::ComponentSection { .. }
                | wasmparser::Payload::ModuleSection { .. },
            ) => {
                depth += 1;
            }
            Ok(wasmparser::Payload::End(_)) => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            Ok(wasmparser::Payload::ComponentExportSection(reader)) if depth == 0 => {
                for export in reader.into_iter().flatten() {
                    if export.name.name.starts_with("wasi:http/incoming-handler@") {
                        return true;
                    }
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// The engine for HTTP components: async, epoch interruption, and the
/// pooling allocator when the address space allows it (else on-demand).
/// Pooled memories are sized to the container's memory limit (at most 1 GiB).
pub fn engine(memory_limit: Option<usize>) -> wasmtime::Result<(Engine, &'static str)> {
    let base = || {
        let mut c = Config::new();
        c.epoch_interruption(true);
        c.wasm_component_model(true);
        c
    };
    let mut pooled = base();
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(128)
        .total_core_instances(256)
        .total_memories(256)
        .total_tables(256)
        .total_stacks(128)
        .max_memory_size(memory_limit.unwrap_or(1 << 30).min(1 << 30));
    pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&pooled) {
        Ok(e) => Ok((e, "pooling")),
        Err(_) => Ok((Engine::new(&base())?, "on-demand")),
    }
}

/// Links a compiled HTTP component against WASI and `wasi:http`.
pub fn pre_instantiate(
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<ProxyPre<HttpHost>> {
    let mut linker = Linker::<HttpHost>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    ProxyPre::new(linker.instantiate_pre(component)?)
}

/// Per-request store state.
pub struct HttpHost {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for HttpHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpHost {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

/// Everything a request needs to build its store.
struct Server {
    pre: ProxyPre<HttpHost>,
    make_ctx: Box<dyn Fn() -> WasiCtx + Send + Sync>,
    memory_budget: Option<usize>,
    timeout_ticks: u64,
    errors: ErrorLog,
    id: String,
}

/// Error reports, at most one a second.
struct ErrorLog {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl ErrorLog {
    fn report(&self, id: &str, what: &str) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let more = self.suppressed.swap(0, Ordering::Relaxed);
        if more > 0 {
            eprintln!("wasmpod: container {id}: request failed: {what} (and {more} more since the last report)");
        } else {
            eprintln!("wasmpod: container {id}: request failed: {what}");
        }
    }
}

fn error_response(status: u16, text: &'static str) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

impl Server {
    async fn handle(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, std::convert::Infallible> {
        match self.clone().try_handle(req).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                self.errors.report(&self.id, &format!("{e:#}"));
                Ok(error_response(500, "internal server error\n"))
            }
        }
    }

    async fn try_handle(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
        let mut limits = wasmtime::StoreLimitsBuilder::new();
        if let Some(b) = self.memory_budget {
            limits = limits.memory_size(b);
        }
        let mut store = Store::new(
            self.pre.engine(),
            HttpHost {
                wasi: (self.make_ctx)(),
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                limits: limits.build(),
            },
        );
        store.limiter(|h| &mut h.limits);
        store.set_epoch_deadline(self.timeout_ticks);
        store.epoch_deadline_trap();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let pre = self.pre.clone();
        let task = tokio::task::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(store, req, out)
                .await
        });
        match receiver.await {
            Ok(Ok(resp)) => {
                // The body may still be streaming from the task; a trap after
                // the headers only cuts the body short. Report it when it ends.
                let server = self.clone();
                tokio::spawn(async move {
                    if let Ok(Err(e)) = task.await {
                        server.errors.report(&server.id, &format!("{e:#}"));
                    }
                });
                Ok(resp)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => match task.await {
                Ok(Ok(())) => wasmtime::bail!("the handler returned without setting a response"),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            },
        }
    }
}

/// Serves `pre` until SIGTERM (then drains) and returns the exit code.
pub fn serve(
    id: &str,
    plan: &RunPlan,
    pre: ProxyPre<HttpHost>,
    make_ctx: Box<dyn Fn() -> WasiCtx + Send + Sync>,
    memory_budget: Option<usize>,
) -> i32 {
    let port: u16 = plan
        .env_var("WASMPOD_HTTP_PORT")
        .and_then(|p| p.parse().ok())
        .unwrap_or(DEFAULT_PORT);
    let timeout_ms: u64 = plan
        .env_var("WASMPOD_HTTP_TIMEOUT_MS")
        .and_then(|p| p.parse().ok())
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    let engine = pre.engine().clone();
    let server = Arc::new(Server {
        pre,
        make_ctx,
        memory_budget,
        timeout_ticks: (timeout_ms / EPOCH_TICK.as_millis() as u64).max(1),
        errors: ErrorLog {
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        },
        id: id.to_owned(),
    });
    // The epoch clock: one thread, ticking for the runner's life.
    std::thread::spawn(move || loop {
        std::thread::sleep(EPOCH_TICK);
        engine.increment_epoch();
    });
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wasmpod: container {id}: async runtime: {e}");
            return 1;
        }
    };
    rt.block_on(accept_loop(id, port, server))
}

async fn accept_loop(id: &str, port: u16, server: Arc<Server>) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("wasmpod: container {id}: listen on {addr}: {e}");
            return 1;
        }
    };
    // SIGTERM drains: not the runner's exit-at-once handler (which tokio's
    // would chain to) when it is pid 1 of its namespace
    if let Err(e) = crate::sys::sandbox::default_action(libc::SIGTERM) {
        eprintln!("wasmpod: container {id}: SIGTERM: {e}");
        return 1;
    }
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wasmpod: container {id}: SIGTERM handler: {e}");
            return 1;
        }
    };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let server = server.clone();
                let conn = http1::Builder::new().keep_alive(true).serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(move |req| server.clone().handle(req)),
                );
                let watched = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = watched.await;
                });
            }
            _ = term.recv() => break,
        }
    }
    // Draining: no new connections; requests in flight finish, idle
    // keep-alive connections close.
    drop(listener);
    graceful.shutdown().await;
    0
}
