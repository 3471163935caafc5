//! `make bench`: start-up and throughput measured side by side with runc on
//! the same private containerd, interleaving the compared runtimes in every
//! round (floor, wasm, runc, floor, wasm, runc, ...) so drift on the machine
//! hits all of them alike. Prints a Markdown table and writes
//! `target/bench/results.json`.
//!
//! B1 cold start: wall time of `ctr run --rm` of the Wasm hello world (with
//! the precompiled-module cache emptied first, and warm) beside
//! `ctr run --rm` of static busybox `echo` under runc, and the floor: `ctr`
//! creating and deleting a container with no task.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use wasmpod_e2e::guests::guest;
use wasmpod_e2e::images::{busybox_image, wasm_image};
use wasmpod_e2e::{workspace_root, Containerd, ContainerdOptions, RUNTIME};

const WASM_IMAGE: &str = "docker.io/wasmpod/bench-hello:latest";
const BUSYBOX_IMAGE: &str = "docker.io/wasmpod/bench-busybox:latest";

struct Series {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn percentile(&self, p: f64) -> f64 {
        let mut v: Vec<f64> = self.samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
        v[rank.min(v.len() - 1)]
    }
}

fn timed(cd: &Containerd, args: &[&str]) -> Result<Duration> {
    let start = Instant::now();
    let out = cd.ctr_output(args)?;
    let took = start.elapsed();
    if out.status != Some(0) {
        bail!("ctr {} failed: {out:?}", args.join(" "));
    }
    Ok(took)
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("WASMPOD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let cd = Containerd::start(ContainerdOptions::default())?;
    let hello = guest("wasm32-wasip1", "hello")?;
    for tar in [
        wasm_image(WASM_IMAGE, &hello, "/hello.wasm")?,
        busybox_image(BUSYBOX_IMAGE)?,
    ] {
        cd.ctr(&[
            "images",
            "import",
            "--all-platforms",
            &tar.to_string_lossy(),
        ])?;
    }

    let mut floor = Series {
        name: "ctr create+delete, no task (floor)",
        samples: vec![],
    };
    let mut miss = Series {
        name: "wasmpod: ctr run --rm hello.wasm, cache miss",
        samples: vec![],
    };
    let mut wasm = Series {
        name: "wasmpod: ctr run --rm hello.wasm, cache hit",
        samples: vec![],
    };
    let mut runc = Series {
        name: "runc: ctr run --rm busybox echo",
        samples: vec![],
    };
    // two warm-up rounds, not recorded
    for round in 0..rounds + 2 {
        let id = |what: &str| format!("b1-{what}-{round}");
        let f = {
            let c = id("floor");
            let start = Instant::now();
            cd.ctr(&["containers", "create", BUSYBOX_IMAGE, &c])?;
            cd.ctr(&["containers", "rm", &c])?;
            start.elapsed()
        };
        let cache = cd.tempdir().join("wasmpod-cache");
        let _ = std::fs::remove_dir_all(&cache);
        let m = timed(
            &cd,
            &["run", "--rm", "--runtime", RUNTIME, WASM_IMAGE, &id("miss")],
        )?;
        let w = timed(
            &cd,
            &["run", "--rm", "--runtime", RUNTIME, WASM_IMAGE, &id("wasm")],
        )?;
        let r = timed(
            &cd,
            &[
                "run",
                "--rm",
                BUSYBOX_IMAGE,
                &id("runc"),
                "/bin/busybox",
                "echo",
                "hi",
            ],
        )?;
        if round >= 2 {
            floor.samples.push(f);
            miss.samples.push(m);
            wasm.samples.push(w);
            runc.samples.push(r);
        }
    }
    cd.assert_no_leftovers()?;

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "## B1 cold start ({rounds} interleaved rounds; {} CPUs, {cpu}; containerd 1.6)\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("| what | median ms | p95 ms | min ms |");
    println!("|---|---:|---:|---:|");
    let mut json = Vec::new();
    for s in [&floor, &miss, &wasm, &runc] {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            s.name,
            s.percentile(50.0),
            s.percentile(95.0),
            s.percentile(0.0)
        );
        json.push(serde_json::json!({
            "name": s.name,
            "median_ms": s.percentile(50.0),
            "p95_ms": s.percentile(95.0),
            "min_ms": s.percentile(0.0),
            "samples_ms": s.samples.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
        }));
    }
    println!(
        "\nwasmpod (cache hit) / runc median: {:.2}×; wasmpod (cache hit) − floor: {:.1} ms",
        wasm.percentile(50.0) / runc.percentile(50.0),
        wasm.percentile(50.0) - floor.percentile(50.0)
    );
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("results.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&serde_json::json!({ "b1": json }))?,
    )?;
    println!("\nresults: {}", path.display());
    Ok(())
}
