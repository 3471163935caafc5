//! B5 HTTP: a `wasi:http` handler under `wrk`, beside `wasmtime serve`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use wasmpod_e2e::Containerd;

use crate::*;

/// A free loopback port.
pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `port` on loopback accepts connections.
pub(crate) fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `wrk -t2 -c16 -d10s --latency` against `url`: (req/s, p50 ms, p99 ms).
pub(crate) fn wrk(url: &str) -> Result<(f64, f64, f64)> {
    let mut cmd = std::process::Command::new("wrk");
    cmd.args(["-t2", "-c16", "-d10s", "--latency", url]);
    let out = wasmpod_e2e::process::run_with_timeout(&mut cmd, None, Duration::from_secs(60))
        .context("run wrk (apt install wrk)")?;
    ensure!(out.success(), "wrk: {out:?}");
    let ms = |v: &str| -> Option<f64> {
        let v = v.trim();
        if let Some(x) = v.strip_suffix("us") {
            x.parse::<f64>().ok().map(|x| x / 1e3)
        } else if let Some(x) = v.strip_suffix("ms") {
            x.parse().ok()
        } else if let Some(x) = v.strip_suffix('s') {
            x.parse::<f64>().ok().map(|x| x * 1e3)
        } else {
            None
        }
    };
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0u64;
    for line in out.stdout.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("50%") {
            p50 = ms(v);
        } else if let Some(v) = l.strip_prefix("99%") {
            p99 = ms(v);
        } else if l.starts_with("Non-2xx") || l.starts_with("Socket errors") {
            errors += 1;
        }
    }
    ensure!(errors == 0, "wrk saw errors:\n{}", out.stdout);
    Ok((
        rps.context("no Requests/sec from wrk")?,
        p50.context("no p50 from wrk")?,
        p99.context("no p99 from wrk")?,
    ))
}

/// B5: HTTP throughput and latency of the hello handler.
pub(crate) fn http(cd: &Containerd) -> Result<serde_json::Value> {
    let port = free_port()?;
    let id = "b5-http";
    let env = format!("WASMPOD_HTTP_PORT={port}");
    cd.ctr(&[
        "run",
        "-d",
        "--net-host",
        "--runtime",
        RUNTIME,
        "--env",
        &env,
        HTTP_IMAGE,
        id,
    ])?;
    let result = (|| {
        wait_port(port)?;
        wrk(&format!("http://127.0.0.1:{port}/"))
    })();
    remove_detached(cd, &[id.to_owned()])?;
    let (rps, p50, p99) = result?;

    // The same component under `wasmtime serve`, when a wasmtime CLI is installed.
    let reference = match which("wasmtime") {
        Some(wasmtime) => {
            let port = free_port()?;
            let mut child = std::process::Command::new(wasmtime)
                .args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")])
                .arg(http_guest()?)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("start wasmtime serve")?;
            let r = wait_port(port).and_then(|()| wrk(&format!("http://127.0.0.1:{port}/")));
            let _ = child.kill();
            let _ = child.wait();
            Some(r?)
        }
        None => None,
    };
    println!("\n## B5 HTTP: hello handler, `wrk -t2 -c16 -d10s` on loopback\n");
    println!("| server | req/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    println!("| wasmpod (wasi:http component in a container) | {rps:.0} | {p50:.2} | {p99:.2} |");
    match reference {
        Some((r, a, b)) => {
            println!("| wasmtime serve -Scli | {r:.0} | {a:.2} | {b:.2} |");
            println!("\nwasmpod / wasmtime serve: {:.2}×", rps / r);
        }
        None => println!("\n(no `wasmtime` CLI on PATH: `cargo install --locked wasmtime-cli --version 48.0.8` to compare)"),
    }
    Ok(serde_json::json!({
        "wasmpod": {"rps": rps, "p50_ms": p50, "p99_ms": p99},
        "wasmtime_serve": reference.map(|(r, a, b)| serde_json::json!({"rps": r, "p50_ms": a, "p99_ms": b})),
    }))
}
