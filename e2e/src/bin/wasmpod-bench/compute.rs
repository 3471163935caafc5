//! B4 compute: the same program built for wasm32-wasip1 and natively, under
//! wasmpod, runc and the bare wasmtime library.

use anyhow::{ensure, Context, Result};
use wasmpod_e2e::Containerd;

use crate::*;

/// The `compute_ms=` figure a compute run printed, and its checksum line.
pub(crate) fn compute_ms(out: &str) -> Result<(f64, String)> {
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
pub(crate) fn compute_bare(wasm: &std::path::Path) -> Result<(f64, String)> {
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
pub(crate) fn compute(cd: &Containerd, wasm: &std::path::Path) -> Result<serde_json::Value> {
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
