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
//!
//! B3 throughput: create → start → wait → delete cycles (`ctr run --rm`)
//! per second at parallelism 4, wasmpod hello beside runc busybox echo.
//!
//! B4 compute: the same CPU-bound program (`e2e/compute`) built for
//! wasm32-wasip1 and natively, timed inside the program, under wasmpod and
//! under runc, and the same module run by the wasmtime library with its
//! default configuration in one plain process (`wasmpod-bare-run`, built
//! beside the shim): the baseline that shows what wasmpod itself adds.
//!
//! B5 HTTP: a `wasi:http` hello handler served by wasmpod (`ctr run
//! --net-host`) under `wrk -t2 -c16 -d10s` on loopback: requests per second
//! and p50/p99 latency, beside `wasmtime serve -Scli` of the same component
//! when a `wasmtime` CLI is on `PATH`.
//!
//! S1 stress: 500 (`WASMPOD_BENCH_STRESS`) `ctr run --rm` cycles of the
//! Wasm hello world at parallelism 2 and 16: every cycle must succeed with
//! the right output, and afterwards no process, cgroup, mount, FIFO, task
//! state directory or containerd file descriptor may be left; p50/p99/max
//! latency per parallelism. With B2's 200 running Wasm containers (all of
//! which must run), this is the load run of the reliability work.
//!
//! `WASMPOD_BENCH_ONLY` picks parts (a comma list of `b1`..`b5`, `s1`; `hold`
//! only starts the containerd with the images and waits for Enter);
//! `WASMPOD_BENCH_SMAPS=1` saves `/proc/PID/smaps` of the second process of each
//! role in B2 under `target/bench/` for a closer look.
//!
//! B2 density: N long-running containers (N = 50 and 200; `WASMPOD_BENCH_DENSITY`
//! overrides) of each runtime: the sum of the PSS of every process they add
//! (shims included, `/proc/PID/smaps_rollup`) and the drop in MemAvailable,
//! per container.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wasmpod_e2e::guests::{compute_binaries, guest, http_guest};
use wasmpod_e2e::images::{base_spec, busybox_image, image_tar, wasm_image};
use wasmpod_e2e::{workspace_root, Containerd, ContainerdOptions, RUNTIME};
use wasmpod_oci::image::Entry;

const WASM_IMAGE: &str = "docker.io/wasmpod/bench-hello:latest";
const BUSYBOX_IMAGE: &str = "docker.io/wasmpod/bench-busybox:latest";
const PROBE_IMAGE: &str = "docker.io/wasmpod/bench-probe:latest";
const HTTP_IMAGE: &str = "docker.io/wasmpod/bench-http:latest";
const COMPUTE_WASM_IMAGE: &str = "docker.io/wasmpod/bench-compute:wasm";
const COMPUTE_NATIVE_IMAGE: &str = "docker.io/wasmpod/bench-compute:native";
/// Work units of the compute program (about a second natively here).
const COMPUTE_ROUNDS: &str = "2000";

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
        // 40 rounds: the medians of a noisy 2 vCPU VM settle
        .unwrap_or(40);
    let cd = Containerd::start(ContainerdOptions::default())?;
    let hello = guest("wasm32-wasip1", "hello")?;
    let probe = guest("wasm32-wasip1", "probe")?;
    let (compute_wasm, compute_native) = compute_binaries()?;
    let mut native = base_spec(
        COMPUTE_NATIVE_IMAGE,
        vec![Entry::File {
            path: "compute".into(),
            data: std::fs::read(&compute_native)?,
            mode: 0o755,
        }],
    );
    native.entrypoint = vec!["/compute".into()];
    for tar in [
        wasm_image(WASM_IMAGE, &hello, "/hello.wasm")?,
        busybox_image(BUSYBOX_IMAGE)?,
        wasm_image(PROBE_IMAGE, &probe, "/probe.wasm")?,
        wasm_image(COMPUTE_WASM_IMAGE, &compute_wasm, "/compute.wasm")?,
        wasm_image(HTTP_IMAGE, &http_guest()?, "/http.wasm")?,
        image_tar(&native)?,
    ] {
        cd.ctr(&[
            "images",
            "import",
            "--all-platforms",
            &tar.to_string_lossy(),
        ])?;
    }

    let only = std::env::var("WASMPOD_BENCH_ONLY").unwrap_or_default();
    let wanted = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    let mut results = serde_json::Map::new();
    if only == "hold" {
        // For profiling by hand: the bench's containerd, images imported,
        // until a line (or end of input) arrives on stdin.
        println!(
            "containerd {} (namespace {}, pid {:?}); press Enter to stop",
            cd.socket().display(),
            cd.namespace(),
            cd.pid()
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        return Ok(());
    }
    if wanted("b1") {
        results.insert("b1".into(), start_up(&cd, rounds)?);
    }
    if wanted("b3") {
        results.insert("b3".into(), throughput(&cd)?);
    }
    if wanted("b4") {
        results.insert("b4".into(), compute(&cd, &compute_wasm)?);
    }
    if wanted("b5") {
        results.insert("b5".into(), http(&cd)?);
    }
    if wanted("b2") {
        results.insert("b2".into(), density(&cd)?);
        cd.assert_no_leftovers()?;
    }
    if wanted("s1") {
        results.insert("s1".into(), stress(&cd)?);
    }

    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)?;
    println!("\nresults: {}", path.display());
    Ok(())
}

/// B1: cold start, interleaved rounds of floor, cache miss, cache hit, runc.
fn start_up(cd: &Containerd, rounds: usize) -> Result<serde_json::Value> {
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
fn run_args<'a>(wasm: bool, image: &'a str, id: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", "--rm"];
    if wasm {
        v.extend(["--runtime", RUNTIME]);
    }
    v.extend([image, id]);
    v.extend_from_slice(args);
    v
}

/// B3: cycles per second at parallelism 4, wasmpod and runc alternating.
fn throughput(cd: &Containerd) -> Result<serde_json::Value> {
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

/// The `compute_ms=` figure a compute run printed, and its checksum line.
fn compute_ms(out: &str) -> Result<(f64, String)> {
    let line = out
        .lines()
        .find(|l| l.contains("compute_ms="))
        .with_context(|| format!("no compute_ms in {out:?}"))?;
    let ms = line
        .rsplit("compute_ms=")
        .next()
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("bad compute_ms in {line:?}"))?;
    // everything the program computed (checksum and prime count)
    let sum = line
        .split("compute_ms=")
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    Ok((ms, sum))
}

/// The compute module run by `wasmpod-bare-run` (the wasmtime library,
/// `Config::new()`, one process: no containerd, shim or runner). Returns its
/// `compute_ms` figure and checksum.
fn compute_bare(wasm: &std::path::Path) -> Result<(f64, String)> {
    let exe = std::env::current_exe()?.with_file_name("wasmpod-bare-run");
    let out = std::process::Command::new(&exe)
        .arg(wasm)
        .arg(COMPUTE_ROUNDS)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("run {} (make build builds it)", exe.display()))?;
    ensure!(
        out.status.success(),
        "{}: {:?} {}",
        exe.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    compute_ms(&String::from_utf8_lossy(&out.stdout))
}

/// B4: the same CPU-bound program under wasmpod, natively under runc, and
/// as the same module run by the wasmtime library in a plain process.
fn compute(cd: &Containerd, wasm: &std::path::Path) -> Result<serde_json::Value> {
    // the three vary by ±8 % from run to run on a small VM
    const ROUNDS: usize = 9;
    let (mut wasmpod, mut native, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    let mut sums = std::collections::BTreeSet::new();
    for round in 0..ROUNDS + 1 {
        let id = format!("b4-wasm-{round}");
        let out = cd.ctr(&run_args(
            true,
            COMPUTE_WASM_IMAGE,
            &id,
            &["/compute.wasm", COMPUTE_ROUNDS],
        ))?;
        let (w, s1) = compute_ms(&out)?;
        let id = format!("b4-native-{round}");
        let out = cd.ctr(&run_args(
            false,
            COMPUTE_NATIVE_IMAGE,
            &id,
            &["/compute", COMPUTE_ROUNDS],
        ))?;
        let (n, s2) = compute_ms(&out)?;
        let (b, s3) = compute_bare(wasm)?;
        sums.extend([s1, s2, s3]);
        // the first round compiles the module: not recorded
        if round > 0 {
            wasmpod.push(w);
            native.push(n);
            bare.push(b);
        }
    }
    ensure!(
        sums.len() == 1,
        "wasm and native computed different results: {sums:?}"
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w, n, b) = (median(&mut wasmpod), median(&mut native), median(&mut bare));
    println!("\n## B4 compute: the same program, timed inside it (median of {ROUNDS})\n");
    println!("| runtime | compute ms | / native |");
    println!("|---|---:|---:|");
    println!(
        "| wasmpod (wasm32-wasip1, Cranelift) | {w:.1} | {:.2}× |",
        w / n
    );
    println!(
        "| wasmtime library, default config, plain process (`wasmpod-bare-run`) | {b:.1} | {:.2}× |",
        b / n
    );
    println!("| runc (native x86-64, static) | {n:.1} | 1.00× |");
    println!(
        "\nwasmpod / native: {:.2}×; wasmpod / bare wasmtime: {:.2}×",
        w / n,
        w / b
    );
    Ok(serde_json::json!({
        "wasmpod_ms": w,
        "native_ms": n,
        "bare_wasmtime_ms": b,
        "ratio": w / n,
        "ratio_to_bare_wasmtime": w / b,
    }))
}

fn mem_available_kib() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemAvailable in /proc/meminfo")
}

fn pss_kib(pid: i32) -> u64 {
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
fn role(argv: &[String]) -> &'static str {
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
struct Density {
    pss_mib: f64,
    drop_mib: f64,
    running: usize,
    roles: std::collections::BTreeMap<&'static str, (usize, f64)>,
}

/// Starts `n` long-running containers, measures, and removes them.
fn density_run(cd: &Containerd, n: usize, wasm: bool) -> Result<Density> {
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
            let dir = workspace_root().join("target/bench");
            std::fs::create_dir_all(&dir)?;
            let _ = std::fs::copy(
                format!("/proc/{}/smaps", p.pid),
                dir.join(format!("smaps-{}.txt", r.replace(' ', "-"))),
            );
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
fn density(cd: &Containerd) -> Result<serde_json::Value> {
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

/// Open file descriptors of the harness' containerd.
fn containerd_fds(cd: &Containerd) -> Result<usize> {
    let pid = cd.pid().context("containerd is not running")?;
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("list containerd {pid}'s fds"))?
        .count())
}

/// S1: `ctr run --rm` cycles of hello.wasm at parallelism 2 and 16, all
/// successful, nothing left behind.
fn stress(cd: &Containerd) -> Result<serde_json::Value> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let cycles: usize = std::env::var("WASMPOD_BENCH_STRESS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let fds_before = containerd_fds(cd)?;
    println!("\n## S1 stress: {cycles} `ctr run --rm` cycles of hello.wasm\n");
    println!("| parallelism | ok | cycles/s | p50 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for parallel in [2usize, 16] {
        let next = AtomicUsize::new(0);
        let samples = Mutex::new(Vec::with_capacity(cycles));
        let failed = Mutex::new(Vec::new());
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..parallel {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= cycles {
                        break;
                    }
                    let id = format!("s1-{parallel}-{i}");
                    cd.track_container_id(&id);
                    let t = Instant::now();
                    let out = cd.ctr_output(&run_args(true, WASM_IMAGE, &id, &[]));
                    let took = t.elapsed();
                    match out {
                        Ok(o) if o.status == Some(0) && o.stdout == "hello from wasmpod\n" => {
                            samples.lock().expect("samples").push(took)
                        }
                        Ok(o) => failed.lock().expect("failed").push(format!("{id}: {o:?}")),
                        Err(e) => failed.lock().expect("failed").push(format!("{id}: {e:#}")),
                    }
                });
            }
        });
        let wall = start.elapsed();
        let series = Series {
            name: "stress",
            samples: samples.into_inner().expect("samples"),
        };
        let ok = series.samples.len();
        let (p50, p99, max) = (
            series.percentile(50.0),
            series.percentile(99.0),
            series.percentile(100.0),
        );
        let rate = cycles as f64 / wall.as_secs_f64();
        println!("| {parallel} | {ok}/{cycles} | {rate:.1} | {p50:.1} | {p99:.1} | {max:.1} |");
        rows.push(
            serde_json::json!({"parallelism": parallel, "cycles": cycles, "ok": ok,
            "per_s": rate, "p50_ms": p50, "p99_ms": p99, "max_ms": max}),
        );
        failures.extend(failed.into_inner().expect("failed"));
    }
    cd.assert_no_leftovers()?;
    // containerd closes a client's descriptors shortly after it goes away.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fds_after = loop {
        let n = containerd_fds(cd)?;
        if n <= fds_before || Instant::now() >= deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "\nleftovers: none; containerd file descriptors {fds_before} before, {fds_after} after"
    );
    ensure!(
        failures.is_empty(),
        "S1: {} failed cycles, first: {}",
        failures.len(),
        failures[0]
    );
    ensure!(
        fds_after <= fds_before,
        "S1: containerd holds {} more descriptors than before",
        fds_after - fds_before
    );
    Ok(
        serde_json::json!({"runs": rows, "containerd_fds_before": fds_before, "containerd_fds_after": fds_after}),
    )
}

/// A free loopback port.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `port` on loopback accepts connections.
fn wait_port(port: u16) -> Result<()> {
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
fn wrk(url: &str) -> Result<(f64, f64, f64)> {
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
fn http(cd: &Containerd) -> Result<serde_json::Value> {
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

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// Kills detached (`ctr run -d`) containers and removes their tasks and
/// containers, waiting up to 20 s for each task to exit.
fn remove_detached(cd: &Containerd, ids: &[String]) -> Result<()> {
    for id in ids {
        let _ = cd.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    }
    for id in ids {
        let deadline = Instant::now() + Duration::from_secs(20);
        while cd.ctr(&["tasks", "rm", id]).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        cd.ctr(&["containers", "rm", id])?;
    }
    Ok(())
}
