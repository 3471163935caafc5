//! B7 pods at scale: N pods (default 1000, `WASMPOD_BENCH_PODS`) running at
//! once through CRI, created at parallelism 8 as a busy kubelet would:
//! Wasm pods (the probe guest sleeping; native sandbox) and then runc pods
//! (busybox sleep; `WASMPOD_BENCH_RUNC_PODS`, default the same N), each on
//! a fresh containerd with a /22 pod network. For each: the time until all
//! N run, the PSS of every process the pods add (by role) and containerd's
//! own growth, the MemAvailable drop, and the time to stop and remove all
//! of them; then nothing may be left (process, cgroup, mount, netns, veth).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use wasmpod_e2e::cri::{container_config, Cri, Pod, HANDLER};
use wasmpod_e2e::images::{busybox_image, wasm_image};
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::density::{mem_available_kib, pss_kib, role};

const CRI_PROBE: &str = "docker.io/wasmpod/bench-probe:cri";
const CRI_BUSYBOX: &str = "docker.io/wasmpod/bench-busybox:cri";
/// Pods created at once, as kubelet's pod workers would under a scale-out.
const PARALLELISM: usize = 8;

struct Kind {
    name: &'static str,
    handler: &'static str,
    image: &'static str,
    command: &'static [&'static str],
    pods: usize,
}

/// What one B7 run measured.
struct Scale {
    running: usize,
    start_secs: f64,
    remove_secs: f64,
    pss_mib: f64,
    containerd_mib: f64,
    drop_mib: f64,
    roles: BTreeMap<&'static str, (usize, f64)>,
}

/// The data behind `m`, also when a worker panicked holding it.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The role of a process of a pod, knowing which pids are sandboxes.
fn pod_role(pid: i32, argv: &[String], sandboxes: &BTreeSet<i32>) -> &'static str {
    match (sandboxes.contains(&pid), role(argv)) {
        (true, "wasm runner") => "native sandbox",
        (true, _) => "pause",
        (false, r) => r,
    }
}

/// Runs `k.pods` pods at once on a fresh containerd, measures, removes them.
fn run_kind(k: &Kind) -> Result<Scale> {
    let cd = Containerd::start(ContainerdOptions {
        cri: true,
        wide_pod_network: true,
        // a thousand CRI calls in flight at parallelism 8 on 2 cores
        ctr_timeout: Duration::from_secs(120),
        ..Default::default()
    })?;
    let capacity = cd.cni().map(|n| n.capacity()).unwrap_or(0);
    ensure!(
        k.pods <= capacity,
        "B7: {} pods do not fit the pod network of {capacity}",
        k.pods
    );
    let probe = wasmpod_e2e::guests::guest("wasm32-wasip1", "probe")?;
    cd.cri_import(&wasm_image(CRI_PROBE, &probe, "/probe.wasm")?, CRI_PROBE)?;
    cd.cri_import(&busybox_image(CRI_BUSYBOX)?, CRI_BUSYBOX)?;
    let containerd_pid = cd
        .pid()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| anyhow!("B7: containerd has no pid"))?;
    let containerd_before = pss_kib(containerd_pid);
    let before = mem_available_kib()?;

    let next = AtomicUsize::new(0);
    let sandboxes = Mutex::new(BTreeSet::new());
    let errors = Mutex::new(Vec::<String>::new());
    // workers + this thread: all created, measured, all removed
    let barrier = Barrier::new(PARALLELISM + 1);
    let t0 = Instant::now();
    let measured = std::thread::scope(|s| -> Result<(Duration, Scale)> {
        let mut workers = Vec::new();
        for w in 0..PARALLELISM {
            let (cd, next, sandboxes, errors, barrier) =
                (&cd, &next, &sandboxes, &errors, &barrier);
            workers.push(s.spawn(move || {
                let mut pods = Vec::new();
                let cri = Cri::connect(&cd.socket());
                if let Ok(cri) = &cri {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= k.pods {
                            break;
                        }
                        let started = (|| -> Result<Pod<'_>> {
                            let config = Pod::config(cd, &format!("b7-{i}"));
                            let mut pod = Pod::run(cd, cri, config, k.handler)?;
                            pod.start(&container_config("c", k.image, k.command, &[]))?;
                            if let Ok(pid) = pod.sandbox_pid() {
                                locked(sandboxes).insert(pid);
                            }
                            Ok(pod)
                        })();
                        match started {
                            Ok(pod) => pods.push(pod),
                            Err(e) => {
                                locked(errors).push(format!("pod {i}: {e:#}"));
                                // stop creating: the run has failed
                                next.store(k.pods, Ordering::Relaxed);
                            }
                        }
                    }
                } else if let Err(e) = &cri {
                    locked(errors).push(format!("worker {w}: {e:#}"));
                }
                barrier.wait(); // all created
                barrier.wait(); // measured
                let t = Instant::now();
                for pod in pods {
                    if let Err(e) = pod.remove() {
                        locked(errors).push(format!("remove: {e:#}"));
                    }
                }
                t.elapsed()
            }));
        }
        barrier.wait();
        let start = t0.elapsed();
        // let start-up allocations settle before reading PSS
        std::thread::sleep(Duration::from_secs(3));
        let sandboxes = locked(&sandboxes).clone();
        let procs = cd.processes()?;
        let mut roles = BTreeMap::new();
        let mut pss = 0u64;
        let save_smaps = std::env::var("WASMPOD_BENCH_SMAPS").as_deref() == Ok("1");
        for p in &procs {
            let kib = pss_kib(p.pid);
            pss += kib;
            let r = pod_role(p.pid, &p.argv, &sandboxes);
            let e = roles.entry(r).or_insert((0usize, 0.0f64));
            if e.0 == 1 && save_smaps {
                crate::save_smaps(p.pid, &format!("b7-{}", r.replace(' ', "-")))?;
            }
            e.0 += 1;
            e.1 += kib as f64 / 1024.0;
        }
        let after = mem_available_kib()?;
        let containerd_after = pss_kib(containerd_pid);
        let running = cd
            .cri()?
            .list_running_containers()
            .context("B7: listing the running containers")?;
        if std::env::var("WASMPOD_BENCH_B7_HOLD").as_deref() == Ok("1") {
            // for a look by hand at the pods running: until Enter
            println!("B7: {running} running; press Enter to remove them");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
        }
        let t_remove = Instant::now();
        barrier.wait();
        for w in workers {
            w.join().map_err(|_| anyhow!("B7: a worker panicked"))?;
        }
        let remove = t_remove.elapsed();
        let per = |kib: f64| kib / k.pods as f64 / 1024.0;
        Ok((
            start,
            Scale {
                running,
                start_secs: start.as_secs_f64(),
                remove_secs: remove.as_secs_f64(),
                pss_mib: per(pss as f64),
                containerd_mib: per(containerd_after.saturating_sub(containerd_before) as f64),
                drop_mib: per(before.saturating_sub(after) as f64),
                roles,
            },
        ))
    });
    let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    if !errors.is_empty() {
        bail!(
            "B7 {}: {} of the pod operations failed; first: {}",
            k.name,
            errors.len(),
            errors[0]
        );
    }
    let (_, scale) = measured?;
    cd.assert_no_leftovers()?;
    Ok(scale)
}

/// B7: Wasm pods, then runc pods, at scale.
pub(crate) fn pods_at_scale() -> Result<serde_json::Value> {
    let count = |var: &str, default: usize| -> Result<usize> {
        match std::env::var(var) {
            Ok(v) => v
                .parse()
                .with_context(|| format!("{var}={v} is not a number")),
            Err(_) => Ok(default),
        }
    };
    let pods = count("WASMPOD_BENCH_PODS", 1000)?;
    let runc_pods = count("WASMPOD_BENCH_RUNC_PODS", pods)?;
    let kinds = [
        Kind {
            name: "wasmpod (native sandbox), probe sleep",
            handler: HANDLER,
            image: CRI_PROBE,
            command: &["/probe.wasm", "sleep", "3600"],
            pods,
        },
        Kind {
            name: "runc, busybox sleep",
            handler: "",
            image: CRI_BUSYBOX,
            command: &["/bin/busybox", "sleep", "3600"],
            pods: runc_pods,
        },
    ];
    println!(
        "\n## B7 pods at scale through CRI (created at parallelism {PARALLELISM}; containerd 1.6)\n"
    );
    println!("| pods | running | all running s | PSS MiB per pod | + containerd MiB per pod | MemAvailable drop MiB per pod | stop + remove all s | PSS MiB per process, by role |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    let mut rows = Vec::new();
    for k in kinds.iter().filter(|k| k.pods > 0) {
        let s = run_kind(k)?;
        let split: Vec<String> = s
            .roles
            .iter()
            .map(|(r, (n, mib))| format!("{n} × {r} {:.2}", mib / *n as f64))
            .collect();
        println!(
            "| {} × {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | {} |",
            k.pods,
            k.name,
            s.running,
            s.start_secs,
            s.pss_mib,
            s.containerd_mib,
            s.drop_mib,
            s.remove_secs,
            split.join(", ")
        );
        ensure!(
            s.running == k.pods,
            "B7 {}: only {} of {} containers ran",
            k.name,
            s.running,
            k.pods
        );
        let roles: serde_json::Map<String, serde_json::Value> = s
            .roles
            .iter()
            .map(|(r, (n, mib))| {
                (
                    r.to_string(),
                    serde_json::json!({"processes": n, "pss_mib": mib}),
                )
            })
            .collect();
        rows.push(serde_json::json!({
            "name": k.name, "pods": k.pods, "running": s.running,
            "all_running_s": s.start_secs, "pss_mib_per_pod": s.pss_mib,
            "containerd_mib_per_pod": s.containerd_mib,
            "memavailable_drop_mib_per_pod": s.drop_mib,
            "remove_all_s": s.remove_secs, "roles": roles,
        }));
    }
    Ok(serde_json::Value::Array(rows))
}
