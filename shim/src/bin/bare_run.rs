//! `wasmpod-bare-run MODULE [ARG...]`: runs a WASI preview 1 command module
//! with the wasmtime library's default configuration (`Config::new()`, what
//! the `wasmtime` CLI starts from) in this one process, with this process's
//! stdio and no filesystem access. No containerd, shim, runner, cgroup or
//! module cache: `make bench` B4 runs its compute guest this way beside
//! wasmpod to show what wasmpod adds to wasmtime's own code. Not installed
//! on nodes.

use anyhow::{anyhow, bail, Result};

/// `r`, its wasmtime error described with `what`.
fn ctx<T>(r: wasmtime::Result<T>, what: &str) -> Result<T> {
    r.map_err(|e| anyhow!("{what}: {e:#}"))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        bail!("usage: wasmpod-bare-run MODULE [ARG...]");
    };
    let engine = ctx(wasmtime::Engine::new(&wasmtime::Config::new()), "engine")?;
    let module = ctx(
        wasmtime::Module::from_file(&engine, path),
        &format!("compile {path}"),
    )?;
    let wasi = wasmtime_wasi::WasiCtxBuilder::new()
        .args(&args)
        .inherit_stdout()
        .inherit_stderr()
        .build_p1();
    let mut store = wasmtime::Store::new(&engine, wasi);
    let mut linker = wasmtime::Linker::new(&engine);
    ctx(
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |wasi| wasi),
        "link WASI",
    )?;
    let instance = ctx(
        linker.instantiate(&mut store, &module),
        &format!("instantiate {path}"),
    )?;
    let start = ctx(
        instance.get_typed_func::<(), ()>(&mut store, "_start"),
        &format!("{path}: no _start"),
    )?;
    if let Err(e) = start.call(&mut store, ()) {
        match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => std::process::exit(exit.0),
            None => bail!("run {path}: {e:#}"),
        }
    }
    Ok(())
}
