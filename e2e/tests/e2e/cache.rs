//! The precompiled-module cache through containerd: the first start compiles
//! and stores, later starts (new shims, new containers) load the stored
//! native code, and a corrupted entry is discarded, never loaded.

use anyhow::{ensure, Context, Result};
use wasmpod_e2e::{Containerd, ContainerdOptions};

use crate::common::{probe_image, run, P1, P2};

fn log_count(cd: &Containerd, needle: &str) -> Result<usize> {
    let log = std::fs::read_to_string(cd.log_path())?;
    Ok(log.lines().filter(|l| l.contains(needle)).count())
}

/// A scale-out: containers of one new module started at once compile it
/// once; the others wait for that compile and map what it stored.
#[test]
fn concurrent_first_starts_compile_once() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let image = probe_image(&cd, P1)?;
    let outs: Vec<Result<wasmpod_e2e::Output>> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..6)
            .map(|i| {
                let (cd, image) = (&cd, &image);
                s.spawn(move || {
                    run(
                        cd,
                        &[],
                        image,
                        &format!("herd-{i}"),
                        &["/probe.wasm", "args"],
                    )
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("run panicked")))
            })
            .collect()
    });
    for out in outs {
        let out = out?;
        ensure!(
            out.status == Some(0) && out.stdout.starts_with("/probe.wasm\n"),
            "{out:?}"
        );
    }
    ensure!(
        log_count(&cd, ": runner pid")? == 6,
        "not six load lines:\n{}",
        cd.log_tail(40)
    );
    ensure!(
        log_count(&cd, "module cache stored")? == 1,
        "the module was compiled more than once:\n{}",
        cd.log_tail(40)
    );
    ensure!(
        log_count(&cd, "module cache hit")? == 5,
        "{}",
        cd.log_tail(40)
    );
    Ok(())
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

    // A stale entry whose sidecar matches: native code wasmtime did not
    // produce for this module (the component's, here) is refused by
    // wasmtime's own checks, discarded and recompiled.
    let component = entries
        .iter()
        .find(|p| p.extension().is_some_and(|x| x == "ccwasm"))
        .expect("checked above");
    let foreign = std::fs::read(component)?;
    std::fs::write(entry, &foreign)?;
    let mut sidecar = entry.clone().into_os_string();
    sidecar.push(".sha256");
    std::fs::write(&sidecar, hex_sha256(&foreign))?;
    let out = run(&cd, &[], &image, "cache-stale", &["/probe.wasm", "args"])?;
    ensure!(
        out.status == Some(0) && out.stdout.starts_with("/probe.wasm\n"),
        "{out:?}"
    );
    ensure!(
        log_count(&cd, "rejected by wasmtime")? == 1,
        "stale entry not refused"
    );
    cd.assert_no_leftovers()
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A tmpfs mounted for the length of a test (unmounted and removed on drop).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(name: &str, options: &str) -> Result<Tmpfs> {
        use nix::mount::{mount, MsFlags};
        let dir = std::env::temp_dir().join(format!(
            "wasmpod-e2e-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir)?;
        let fs = Tmpfs(dir);
        mount(
            Some("tmpfs"),
            &fs.0,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options),
        )
        .with_context(|| format!("mount tmpfs on {}", fs.0.display()))?;
        Ok(fs)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The cache on a full disk and on a read-only one: every start compiles,
/// says why nothing was stored, and runs; no temp file is left behind.
#[test]
fn full_or_read_only_cache_disk_still_runs() -> Result<()> {
    use nix::mount::{mount, MsFlags};
    let full = Tmpfs::mount("cache-full", "size=256k")?;
    // Fill it: the first write that fails is where the disk is full.
    let mut filler = std::fs::File::create(full.0.join("filler"))?;
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    drop(filler);
    let ro = Tmpfs::mount("cache-ro", "size=1m")?;
    mount(
        None::<&str>,
        &ro.0,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .context("remount read-only")?;

    for (fs, what) in [(&full, "full"), (&ro, "ro")] {
        let cd = Containerd::start(ContainerdOptions {
            env: vec![(
                "WASMPOD_CACHE_DIR".into(),
                fs.0.to_string_lossy().into_owned(),
            )],
            ..Default::default()
        })?;
        for target in [P1, P2] {
            let t = &target[10..];
            let image = probe_image(&cd, target)?;
            for n in 0..2 {
                let id = format!("cache-{what}-{t}-{n}");
                let out = run(&cd, &[], &image, &id, &["/probe.wasm", "args"])?;
                ensure!(out.status == Some(0), "{id}: {out:?}");
            }
        }
        ensure!(
            log_count(&cd, "not stored")? == 4,
            "{what}: every start should say the cache could not store"
        );
        ensure!(log_count(&cd, "module cache hit")? == 0, "{what}: a hit?");
        cd.assert_no_leftovers()?;
        drop(cd);
        let mut left: Vec<String> = std::fs::read_dir(&fs.0)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        left.retain(|n| n != "filler");
        ensure!(left.is_empty(), "{what}: files left in the cache: {left:?}");
    }
    Ok(())
}
