//! B2 density: the PSS and MemAvailable cost of N long-running containers,
//! by process role.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use wasmpod_e2e::Containerd;

use crate::*;

pub(crate) fn mem_available_kib() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemAvailable in /proc/meminfo")
}

pub(crate) fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What a process added by a B2 run is, by its command line.
pub(crate) fn role(argv: &[String]) -> &'static str {
    let exe = argv.first().map(String::as_str).unwrap_or("");
    if argv.get(1).map(String::as_str) == Some("__wasmpod_runner") {
        "wasm runner"
    } else if exe.ends_with("containerd-shim-wasmpod-v1") {
        "wasmpod shim"
    } else if exe.contains("containerd-shim") {
        "runc shim"
    } else {
        "container"
    }
}

/// One B2 measurement: totals and the PSS of each process role.
pub(crate) struct Density {
    pss_mib: f64,
    drop_mib: f64,
    running: usize,
    roles: std::collections::BTreeMap<&'static str, (usize, f64)>,
}

/// Starts `n` long-running containers, measures, and removes them.
pub(crate) fn density_run(cd: &Containerd, n: usize, wasm: bool) -> Result<Density> {
    let before = mem_available_kib()?;
    let ids: Vec<String> = (0..n)
        .map(|i| format!("b2-{}-{n}-{i}", if wasm { "w" } else { "r" }))
        .collect();
    for id in &ids {
        let mut args = vec!["run", "-d"];
        if wasm {
            args.extend([
                "--runtime",
                RUNTIME,
                PROBE_IMAGE,
                id,
                "/probe.wasm",
                "sleep",
                "3600",
            ]);
        } else {
            args.extend([BUSYBOX_IMAGE, id, "/bin/busybox", "sleep", "3600"]);
        }
        cd.ctr(&args)?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let running = loop {
        let tasks = cd.ctr(&["tasks", "ls"])?;
        let running = tasks.lines().filter(|l| l.contains("RUNNING")).count();
        if running >= n || Instant::now() > deadline {
            break running;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(2));
    let procs = cd.processes()?;
    let mut roles = std::collections::BTreeMap::new();
    let mut pss = 0u64;
    let save_smaps = std::env::var("WASMPOD_BENCH_SMAPS").as_deref() == Ok("1");
    for p in &procs {
        let kib = pss_kib(p.pid);
        pss += kib;
        let r = role(&p.argv);
        let entry = roles.entry(r).or_insert((0usize, 0.0f64));
        if entry.0 == 1 && save_smaps {
            crate::save_smaps(p.pid, &r.replace(' ', "-"))?;
        }
        entry.0 += 1;
        entry.1 += kib as f64 / 1024.0;
    }
    let after = mem_available_kib()?;
    remove_detached(cd, &ids)?;
    let per = |kib: f64| kib / n as f64 / 1024.0;
    Ok(Density {
        pss_mib: per(pss as f64),
        drop_mib: per(before.saturating_sub(after) as f64),
        running,
        roles,
    })
}

/// B2: density at N = 50 and 200 (or `WASMPOD_BENCH_DENSITY`), alternating runtimes.
pub(crate) fn density(cd: &Containerd) -> Result<serde_json::Value> {
    let sizes: Vec<usize> = std::env::var("WASMPOD_BENCH_DENSITY")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![50, 200]);
    println!("\n## B2 density: N long-running containers (per container)\n");
    println!("| N | runtime | running | PSS MiB | MemAvailable drop MiB | PSS MiB per process, by role |");
    println!("|---:|---|---:|---:|---:|---|");
    let mut rows = Vec::new();
    for n in sizes {
        for (name, wasm) in [
            ("wasmpod (probe sleep)", true),
            ("runc (busybox sleep)", false),
        ] {
            let d = density_run(cd, n, wasm)?;
            let (pss, drop, running) = (d.pss_mib, d.drop_mib, d.running);
            let split: Vec<String> = d
                .roles
                .iter()
                .map(|(r, (count, mib))| format!("{count} × {r} {:.2}", mib / *count as f64))
                .collect();
            println!(
                "| {n} | {name} | {running} | {pss:.2} | {drop:.2} | {} |",
                split.join(", ")
            );
            ensure!(
                !wasm || running == n,
                "B2: only {running} of {n} Wasm containers ran"
            );
            let roles: serde_json::Map<String, serde_json::Value> = d
                .roles
                .iter()
                .map(|(r, (count, mib))| {
                    (
                        r.to_string(),
                        serde_json::json!({"processes": count, "pss_mib": mib}),
                    )
                })
                .collect();
            rows.push(serde_json::json!({"n": n, "runtime": name, "running": running, "pss_mib": pss, "memavailable_drop_mib": drop, "roles": roles}));
        }
    }
    Ok(serde_json::Value::Array(rows))
}
