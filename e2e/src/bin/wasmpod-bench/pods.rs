//! B6 pod start through CRI, as kubelet starts a pod: RunPodSandbox, then
//! CreateContainer + StartContainer, until the container runs and until it
//! exited 0; a wasmpod pod (hello.wasm; its sandbox native, or runc's
//! pause with `wasmpod.io/pod-sandbox: runc`) beside a runc pod (busybox
//! `echo`), interleaved, on a containerd of its own with CRI.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use wasmpod_e2e::cri::{api, container_config, Cri, Pod, HANDLER};
use wasmpod_e2e::images::{busybox_image, wasm_image};
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::*;

const CRI_HELLO: &str = "docker.io/wasmpod/bench-hello:cri";
const CRI_BUSYBOX: &str = "docker.io/wasmpod/bench-busybox:cri";

struct Kind {
    name: &'static str,
    handler: &'static str,
    sandbox_annotation: Option<&'static str>,
    image: &'static str,
    command: &'static [&'static str],
    sandbox: Series,
    running: Series,
    exited: Series,
}

/// One pod: (sandbox ready, container running, container exited 0), the
/// last two from the end of RunPodSandbox.
fn round(cd: &Containerd, cri: &Cri, k: &Kind, n: usize) -> Result<[Duration; 3]> {
    let mut config = Pod::config(cd, &format!("b6-{n}"));
    if let Some(v) = k.sandbox_annotation {
        config
            .annotations
            .insert("wasmpod.io/pod-sandbox".into(), v.into());
    }
    let c = container_config("c", k.image, k.command, &[]);
    let t0 = Instant::now();
    let mut pod = Pod::run(cd, cri, config, k.handler)?;
    let sandbox = t0.elapsed();
    let id = pod.start(&c)?;
    let running = t0.elapsed() - sandbox;
    // CRI has no wait: poll its status (about 1 ms a call here)
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let s = cri.container_status(&id)?;
        if s.state == api::ContainerState::ContainerExited as i32 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let exited = t0.elapsed() - sandbox;
    ensure!(
        status.state == api::ContainerState::ContainerExited as i32 && status.exit_code == 0,
        "{}: not exited 0 after 30 s: {status:?}",
        k.name
    );
    pod.remove()?;
    Ok([sandbox, running, exited])
}

/// B6: `rounds` interleaved rounds of each kind of pod.
pub(crate) fn pod_start(rounds: usize) -> Result<serde_json::Value> {
    let cd = Containerd::start(ContainerdOptions {
        cri: true,
        ..Default::default()
    })?;
    let cri = cd.cri()?;
    let hello = wasmpod_e2e::guests::guest("wasm32-wasip1", "hello")?;
    cd.cri_import(&wasm_image(CRI_HELLO, &hello, "/hello.wasm")?, CRI_HELLO)?;
    cd.cri_import(&busybox_image(CRI_BUSYBOX)?, CRI_BUSYBOX)?;
    let series = |name: &'static str| Series {
        name,
        samples: vec![],
    };
    let mut kinds = [
        Kind {
            name: "wasmpod pod (native sandbox), hello.wasm",
            handler: HANDLER,
            sandbox_annotation: None,
            image: CRI_HELLO,
            command: &[],
            sandbox: series("sandbox"),
            running: series("running"),
            exited: series("exited"),
        },
        Kind {
            name: "wasmpod pod (runc pause sandbox), hello.wasm",
            handler: HANDLER,
            sandbox_annotation: Some("runc"),
            image: CRI_HELLO,
            command: &[],
            sandbox: series("sandbox"),
            running: series("running"),
            exited: series("exited"),
        },
        Kind {
            name: "runc pod, busybox echo",
            handler: "",
            sandbox_annotation: None,
            image: CRI_BUSYBOX,
            command: &["/bin/busybox", "echo", "hi"],
            sandbox: series("sandbox"),
            running: series("running"),
            exited: series("exited"),
        },
    ];
    let mut n = 0;
    // two warm-up rounds, not recorded
    for r in 0..rounds + 2 {
        for k in kinds.iter_mut() {
            n += 1;
            let [s, run, exit] = round(&cd, &cri, k, n)?;
            if r >= 2 {
                k.sandbox.samples.push(s);
                k.running.samples.push(run);
                k.exited.samples.push(exit);
            }
        }
    }
    println!("\n## B6 pod start through CRI ({rounds} interleaved rounds; containerd 1.6)\n");
    println!("| pod | sandbox median / p95 ms | + container running median / p95 ms | + exited 0 median / p95 ms | total (exited) median ms |");
    println!("|---|---:|---:|---:|---:|");
    let total = |k: &Kind| {
        let mut t: Vec<f64> = k
            .sandbox
            .samples
            .iter()
            .zip(&k.exited.samples)
            .map(|(a, b)| (*a + *b).as_secs_f64() * 1e3)
            .collect();
        t.sort_by(f64::total_cmp);
        (
            t[t.len() / 2],
            t[((t.len() as f64 - 1.0) * 0.95).round() as usize],
        )
    };
    let mut json = Vec::new();
    for k in &kinds {
        let (tm, tp) = total(k);
        println!(
            "| {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {tm:.1} (p95 {tp:.1}) |",
            k.name,
            k.sandbox.percentile(50.0),
            k.sandbox.percentile(95.0),
            k.running.percentile(50.0),
            k.running.percentile(95.0),
            k.exited.percentile(50.0),
            k.exited.percentile(95.0),
        );
        json.push(serde_json::json!({
            "name": k.name,
            "sandbox_median_ms": k.sandbox.percentile(50.0),
            "sandbox_p95_ms": k.sandbox.percentile(95.0),
            "running_median_ms": k.running.percentile(50.0),
            "exited_median_ms": k.exited.percentile(50.0),
            "total_median_ms": tm,
            "total_p95_ms": tp,
        }));
    }
    let (native, _) = total(&kinds[0]);
    let (pause, _) = total(&kinds[1]);
    let (runc, _) = total(&kinds[2]);
    println!(
        "\nwasmpod pod / runc pod, median total: {:.2}× (native sandbox), {:.2}× (runc pause sandbox)",
        native / runc,
        pause / runc
    );
    cd.assert_no_leftovers()?;
    Ok(serde_json::Value::Array(json))
}
