//! B1 cold start and B3 throughput: `ctr run --rm` wall times and cycles per
//! second, wasmpod beside runc, interleaved.

use std::time::{Duration, Instant};

use anyhow::Result;
use wasmpod_e2e::Containerd;

use crate::*;

/// B1: cold start, interleaved rounds of floor, cache miss, cache hit, runc.
pub(crate) fn start_up(cd: &Containerd, rounds: usize) -> Result<serde_json::Value> {
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
            cd,
            &["run", "--rm", "--runtime", RUNTIME, WASM_IMAGE, &id("miss")],
        )?;
        let w = timed(
            cd,
            &["run", "--rm", "--runtime", RUNTIME, WASM_IMAGE, &id("wasm")],
        )?;
        let r = timed(
            cd,
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
    Ok(serde_json::Value::Array(json))
}

/// `ctr run --rm` of a Wasm image (with the wasmpod runtime) or a Linux one.
pub(crate) fn run_args<'a>(
    wasm: bool,
    image: &'a str,
    id: &'a str,
    args: &[&'a str],
) -> Vec<&'a str> {
    let mut v = vec!["run", "--rm"];
    if wasm {
        v.extend(["--runtime", RUNTIME]);
    }
    v.extend([image, id]);
    v.extend_from_slice(args);
    v
}

/// B3: cycles per second at parallelism 4, wasmpod and runc alternating.
pub(crate) fn throughput(cd: &Containerd) -> Result<serde_json::Value> {
    const PARALLEL: usize = 4;
    const PER_THREAD: usize = 10;
    let mut totals = [(Duration::ZERO, 0usize); 2];
    for rep in 0..2 {
        for (slot, wasm) in [(0, true), (1, false)] {
            let start = Instant::now();
            std::thread::scope(|s| -> Result<()> {
                let handles: Vec<_> = (0..PARALLEL)
                    .map(|t| {
                        s.spawn(move || -> Result<()> {
                            for i in 0..PER_THREAD {
                                let id = format!("b3-{slot}-{rep}-{t}-{i}");
                                let args = if wasm {
                                    run_args(true, WASM_IMAGE, &id, &[])
                                } else {
                                    run_args(
                                        false,
                                        BUSYBOX_IMAGE,
                                        &id,
                                        &["/bin/busybox", "echo", "hi"],
                                    )
                                };
                                timed(cd, &args)?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                for h in handles {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("B3 thread panicked"))??;
                }
                Ok(())
            })?;
            totals[slot].0 += start.elapsed();
            totals[slot].1 += PARALLEL * PER_THREAD;
        }
    }
    let rate = |(d, n): (Duration, usize)| n as f64 / d.as_secs_f64();
    let (w, r) = (rate(totals[0]), rate(totals[1]));
    println!("\n## B3 throughput: `ctr run --rm` cycles per second at parallelism {PARALLEL}\n");
    println!("| runtime | cycles | cycles/s |");
    println!("|---|---:|---:|");
    println!("| wasmpod (hello.wasm) | {} | {w:.1} |", totals[0].1);
    println!("| runc (busybox echo) | {} | {r:.1} |", totals[1].1);
    println!("\nwasmpod / runc: {:.2}×", w / r);
    Ok(serde_json::json!({"parallelism": PARALLEL, "wasmpod_per_s": w, "runc_per_s": r}))
}
