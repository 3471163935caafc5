//! The precompiled-module cache through containerd: the first start compiles
//! and stores, later starts (new shims, new containers) load the stored
//! native code, and a corrupted entry is discarded, never loaded.

use anyhow::{ensure, Result};
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::common::{probe_image, run, P1, P2};

fn log_count(cd: &Containerd, needle: &str) -> Result<usize> {
    let log = std::fs::read_to_string(cd.log_path())?;
    Ok(log.lines().filter(|l| l.contains(needle)).count())
}

#[test]
fn compiles_once_then_loads_from_the_cache() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let cache = cd.tempdir().join("wasmpod-cache");
    for target in [P1, P2] {
        let t = &target[10..];
        let image = probe_image(&cd, target)?;
        let args_run = |id: &str| run(&cd, &[], &image, id, &["/probe.wasm", "args"]);
        let out = args_run(&format!("cache-a-{t}"))?;
        ensure!(out.status == Some(0), "{out:?}");
        ensure!(
            log_count(&cd, &format!("cache-a-{t}: runner pid"))? == 1,
            "no load line"
        );
        ensure!(
            log_count(&cd, "module cache stored")? >= 1,
            "first start did not store"
        );
        let out = args_run(&format!("cache-b-{t}"))?;
        ensure!(out.status == Some(0), "{out:?}");
        let log = std::fs::read_to_string(cd.log_path())?;
        ensure!(
            log.lines()
                .any(|l| l.contains(&format!("cache-b-{t}: runner pid"))
                    && l.contains("module cache hit")),
            "second start was not a cache hit"
        );
    }
    let entries: Vec<_> = std::fs::read_dir(&cache)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    ensure!(
        entries
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .count()
            == 1,
        "{entries:?}"
    );
    ensure!(
        entries
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "ccwasm"))
            .count()
            == 1,
        "{entries:?}"
    );

    // Corrupt the module's entry: it is discarded and recompiled, and the
    // container still runs.
    let entry = entries
        .iter()
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .expect("checked above");
    let mut bytes = std::fs::read(entry)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(entry, &bytes)?;
    let image = probe_image(&cd, P1)?;
    let out = run(&cd, &[], &image, "cache-corrupt", &["/probe.wasm", "args"])?;
    ensure!(
        out.status == Some(0) && out.stdout.starts_with("/probe.wasm\n"),
        "{out:?}"
    );
    ensure!(
        log_count(&cd, "does not match its digest: discarded")? == 1,
        "corruption not detected"
    );
    cd.assert_no_leftovers()
}
