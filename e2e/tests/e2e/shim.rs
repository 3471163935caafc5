//! The shim core through `ctr`, exactly as a user runs it:
//! `ctr run --runtime io.containerd.wasmpod.v1 IMAGE ID ARGS...`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wasmpod_e2e::guests::{guest, wat_fixture};
use wasmpod_e2e::{Containerd, ContainerdOptions};
use wasmpod_oci::image::{write_image_tar, Entry, ImageSpec};

use crate::common::{import, probe_image, run, running_pid, P1, P2, RUNTIME};

fn both_targets(test: impl Fn(&Containerd, &str, &str) -> Result<()>) -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    for target in [P1, P2] {
        let image = probe_image(&cd, target)?;
        test(&cd, &image, target).with_context(|| format!("target {target}"))?;
    }
    cd.assert_no_leftovers()?;
    Ok(())
}

#[test]
fn hello_module_and_component() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    for (target, tag) in [(P1, "p1"), (P2, "p2")] {
        let reference = format!("docker.io/wasmpod/hello:{tag}");
        import(
            &cd,
            &reference,
            vec![("hello.wasm", std::fs::read(guest(target, "hello")?)?)],
            &["/hello.wasm"],
        )?;
        let out = run(&cd, &[], &reference, &format!("hello-{tag}"), &[])?;
        ensure!(out.status == Some(0), "{tag}: {out:?}");
        ensure!(out.stdout == "hello from wasmpod\n", "{tag}: {out:?}");
    }
    cd.assert_no_leftovers()
}

#[test]
fn args_env_cwd_and_exit_code() -> Result<()> {
    both_targets(|cd, image, target| {
        let out = run(
            cd,
            &[],
            image,
            &format!("args-{}", &target[10..]),
            &["/probe.wasm", "args", "two words", "3"],
        )?;
        ensure!(out.status == Some(0), "{out:?}");
        ensure!(out.stdout == "/probe.wasm\nargs\ntwo words\n3\n", "{out:?}");

        let out = run(
            cd,
            &["--env", "GREETING=hi there"],
            image,
            &format!("env-{}", &target[10..]),
            &["/probe.wasm", "env"],
        )?;
        ensure!(out.status == Some(0), "{out:?}");
        ensure!(
            out.stdout.lines().any(|l| l == "GREETING=hi there"),
            "{out:?}"
        );
        ensure!(
            out.stdout.lines().any(|l| l == "PATH=/usr/bin:/bin"),
            "image env missing: {out:?}"
        );
        // nothing of the shim's own environment leaks in
        for leaked in [
            "TTRPC_ADDRESS",
            "GRPC_ADDRESS",
            "NAMESPACE",
            "HOME=",
            "MAX_SHIM_VERSION",
        ] {
            ensure!(!out.stdout.contains(leaked), "{leaked} leaked: {out:?}");
        }

        let out = run(
            cd,
            &[],
            image,
            &format!("exit-{}", &target[10..]),
            &["/probe.wasm", "exit", "42"],
        )?;
        // WASI 0.2's wasi:cli/exit carries only success or failure.
        let want = if target == P1 { 42 } else { 1 };
        ensure!(out.status == Some(want), "{out:?}");

        // A non-root process.cwd is accepted (components get it as
        // wasi:cli/environment's initial-cwd; see the README for wasi-libc).
        let out = run(
            cd,
            &["--cwd", "/data"],
            image,
            &format!("cwd-{}", &target[10..]),
            &["/probe.wasm", "cwd"],
        )?;
        ensure!(out.status == Some(0), "{out:?}");
        Ok(())
    })
}

#[test]
fn files_from_image_and_bind_mounts() -> Result<()> {
    both_targets(|cd, image, target| {
        let t = &target[10..];
        let out = run(
            cd,
            &[],
            image,
            &format!("cat-{t}"),
            &["/probe.wasm", "cat", "/data/greeting.txt"],
        )?;
        ensure!(
            out.status == Some(0) && out.stdout == "hello from the image\n",
            "{out:?}"
        );

        let host = cd.tempdir().join(format!("bind-{t}"));
        std::fs::create_dir_all(&host)?;
        let rw = format!("type=bind,src={},dst=/out,options=rbind:rw", host.display());
        let out = run(
            cd,
            &["--mount", &rw],
            image,
            &format!("write-{t}"),
            &["/probe.wasm", "write", "/out/note.txt", "written by wasm"],
        )?;
        ensure!(out.status == Some(0), "{out:?}");
        ensure!(
            std::fs::read_to_string(host.join("note.txt"))? == "written by wasm",
            "file not on host"
        );

        let ro = format!("type=bind,src={},dst=/out,options=rbind:ro", host.display());
        let out = run(
            cd,
            &["--mount", &ro],
            image,
            &format!("ro-{t}"),
            &["/probe.wasm", "write", "/out/denied.txt", "x"],
        )?;
        ensure!(
            out.status == Some(1),
            "write to ro mount must fail: {out:?}"
        );
        ensure!(
            out.stderr.contains("probe: write /out/denied.txt"),
            "{out:?}"
        );
        ensure!(!host.join("denied.txt").exists(), "ro mount was written");
        // reading through the read-only mount still works
        let out = run(
            cd,
            &["--mount", &ro],
            image,
            &format!("ro-read-{t}"),
            &["/probe.wasm", "cat", "/out/note.txt"],
        )?;
        ensure!(out.stdout == "written by wasm", "{out:?}");

        // root.readonly (`ctr run --read-only`): the image can be read, not written
        let out = run(
            cd,
            &["--read-only"],
            image,
            &format!("rootro-{t}"),
            &["/probe.wasm", "write", "/data/new.txt", "x"],
        )?;
        ensure!(
            out.status == Some(1),
            "write to a read-only root must fail: {out:?}"
        );
        ensure!(out.stderr.contains("probe: write /data/new.txt"), "{out:?}");
        let out = run(
            cd,
            &["--read-only"],
            image,
            &format!("rootro-read-{t}"),
            &["/probe.wasm", "cat", "/data/greeting.txt"],
        )?;
        ensure!(out.stdout == "hello from the image\n", "{out:?}");
        // and without --read-only the same write succeeds
        let out = run(
            cd,
            &[],
            image,
            &format!("rootrw-{t}"),
            &["/probe.wasm", "write", "/data/new.txt", "x"],
        )?;
        ensure!(out.status == Some(0), "{out:?}");
        Ok(())
    })
}

#[test]
fn stdin_echo() -> Result<()> {
    both_targets(|cd, image, target| {
        let argv = [
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            image,
            &format!("echo-{}", &target[10..]),
            "/probe.wasm",
            "echo",
        ];
        let out = cd.ctr_with_stdin(&argv, b"ping\npong\n")?;
        ensure!(out.status == Some(0), "{out:?}");
        ensure!(out.stdout == "ping\npong\n", "{out:?}");
        ensure!(out.stderr.contains("probe: eof"), "{out:?}");
        Ok(())
    })
}

#[test]
fn trap_exit_code_and_backtrace() -> Result<()> {
    both_targets(|cd, image, target| {
        let out = run(
            cd,
            &[],
            image,
            &format!("trap-{}", &target[10..]),
            &["/probe.wasm", "trap"],
        )?;
        ensure!(out.status == Some(134), "{out:?}");
        ensure!(out.stdout.contains("about to trap"), "{out:?}");
        ensure!(out.stderr.contains("wasm trap"), "{out:?}");
        ensure!(
            out.stderr.contains("deliberate_trap"),
            "no function name in backtrace: {out:?}"
        );
        ensure!(
            out.stderr.contains("probe.rs:"),
            "no file:line in backtrace: {out:?}"
        );
        Ok(())
    })
}

/// Starts `ctr run` of a spinning guest in the background and waits until the
/// task runs; returns the ctr child.
fn spawn_spinner(cd: &Containerd, image: &str, id: &str) -> Result<std::process::Child> {
    let child = cd.ctr_spawn(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        image,
        id,
        "/probe.wasm",
        "spin",
    ])?;
    running_pid(cd, id)?;
    Ok(child)
}

fn wait_child(child: std::process::Child, limit: Duration) -> Result<Option<i32>> {
    let mut child = child;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ctr run did not return within {limit:?} after the kill");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_spinning_guest() -> Result<()> {
    both_targets(|cd, image, target| {
        for (signal, code) in [("SIGTERM", 143), ("SIGKILL", 137)] {
            let id = format!("spin-{}-{}", &target[10..], signal.to_lowercase());
            let child = spawn_spinner(cd, image, &id)?;
            cd.ctr(&["tasks", "kill", "-s", signal, &id])?;
            // Generous bound for a loaded CI machine; the guest is killed by a
            // real signal, not by a cooperative check.
            let status = wait_child(child, Duration::from_secs(10))?;
            ensure!(
                status == Some(code),
                "{signal}: ctr exit {status:?}, want {code}"
            );
        }
        Ok(())
    })
}

fn expect_create_error(
    cd: &Containerd,
    image: &str,
    id: &str,
    flags: &[&str],
    args: &[&str],
    needles: &[&str],
) -> Result<()> {
    let out = run(cd, flags, image, id, args)?;
    ensure!(out.status != Some(0), "{id}: should fail: {out:?}");
    for n in needles {
        ensure!(out.stderr.contains(n), "{id}: error lacks {n:?}: {out:?}");
    }
    // The failed task left no container behind either (`--rm` only removes
    // containers whose task ran).
    let _ = cd.ctr(&["containers", "rm", id]);
    Ok(())
}

#[test]
fn bad_inputs_get_clear_errors() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let probe = std::fs::read(guest(P1, "probe")?)?;
    let wat = |name: &str| -> Result<Vec<u8>> {
        wat::parse_file(wat_fixture(name)).with_context(|| format!("parse {name}.wat"))
    };
    let files = vec![
        ("probe.wasm", probe.clone()),
        ("truncated.wasm", probe[..probe.len() / 3].to_vec()),
        ("garbage.wasm", b"\0asm\x01\0\0\0\xff\xff\xff\xff".to_vec()),
        ("script.wasm", b"#!/bin/sh\necho hi\n".to_vec()),
        (
            "bin/busybox",
            std::fs::read("/bin/busybox").context("busybox-static")?,
        ),
        ("missing-import.wasm", wat("missing-import")?),
        ("unknown-wasi.wasm", wat("unknown-wasi")?),
        ("no-start.wasm", wat("no-start")?),
        ("exit7.wasm", wat("exit7")?),
    ];
    let image = "docker.io/wasmpod/bad:latest";
    import(&cd, image, files, &["/probe.wasm"])?;

    expect_create_error(
        &cd,
        image,
        "bad-missing",
        &[],
        &["/nope.wasm"],
        &["bad-missing", "/nope.wasm", "not found"],
    )?;
    expect_create_error(
        &cd,
        image,
        "bad-path",
        &[],
        &["nope.wasm"],
        &["bad-path", "/usr/bin/nope.wasm", "/bin/nope.wasm"],
    )?;
    expect_create_error(
        &cd,
        image,
        "bad-elf",
        &[],
        &["/bin/busybox"],
        &["bad-elf", "not WebAssembly", "ELF"],
    )?;
    expect_create_error(
        &cd,
        image,
        "bad-script",
        &[],
        &["/script.wasm"],
        &["bad-script", "not WebAssembly"],
    )?;
    expect_create_error(
        &cd,
        image,
        "bad-trunc",
        &[],
        &["/truncated.wasm"],
        &["bad-trunc", "invalid WebAssembly"],
    )?;
    expect_create_error(
        &cd,
        image,
        "bad-garbage",
        &[],
        &["/garbage.wasm"],
        &["bad-garbage", "invalid WebAssembly"],
    )?;
    expect_create_error(
        &cd,
        image,
        "bad-import",
        &[],
        &["/missing-import.wasm"],
        &["bad-import", "cannot link", "does_not_exist"],
    )?;
    expect_create_error(
        &cd,
        image,
        "bad-wasi",
        &[],
        &["/unknown-wasi.wasm"],
        &["bad-wasi", "no_such_function"],
    )?;
    expect_create_error(
        &cd,
        image,
        "bad-nostart",
        &[],
        &["/no-start.wasm"],
        &["bad-nostart", "_start"],
    )?;
    expect_create_error(
        &cd,
        image,
        "bad-dir",
        &[],
        &["/data"],
        &["bad-dir", "not a regular file"],
    )?;
    // ctr needs a console for --tty: give it a pty through script(1).
    let (status, out) = crate::common::ctr_on_a_terminal(
        &cd,
        &[
            "run",
            "--rm",
            "--tty",
            "--runtime",
            RUNTIME,
            image,
            "bad-tty",
            "/probe.wasm",
            "args",
        ],
        24,
        80,
    )?;
    ensure!(status != Some(0), "tty: should fail: {out:?}");
    ensure!(
        out.contains("bad-tty") && out.contains("has no terminal"),
        "tty: {out:?}"
    );
    let _ = cd.ctr(&["containers", "rm", "bad-tty"]);
    expect_create_error(
        &cd,
        image,
        "bad-cwd",
        &["--cwd", "relative/dir"],
        &["/probe.wasm", "args"],
        &["bad-cwd", "cwd"],
    )?;

    // A WAT module calling proc_exit(7) and a bare name found through PATH.
    let out = run(&cd, &[], image, "wat-exit", &["/exit7.wasm"])?;
    ensure!(out.status == Some(7), "{out:?}");
    cd.assert_no_leftovers()
}

#[test]
fn symlinks_resolve_inside_the_rootfs() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    let probe = std::fs::read(guest(P1, "probe")?)?;
    let spec = ImageSpec {
        reference: "docker.io/wasmpod/links:latest".into(),
        entries: vec![
            Entry::File {
                path: "opt/app/probe.wasm".into(),
                data: probe,
                mode: 0o755,
            },
            // absolute link: resolved against the container's root, not the host's
            Entry::Symlink {
                path: "usr/bin/probe".into(),
                target: "/opt/app/probe.wasm".into(),
            },
            // climbing link: clamped at the container's root
            Entry::Symlink {
                path: "usr/bin/climb.wasm".into(),
                target: "../../../../../../opt/app/probe.wasm".into(),
            },
            // links that would leave the rootfs on the host
            Entry::Symlink {
                path: "escape.wasm".into(),
                target: "/proc/self/root/bin/busybox".into(),
            },
        ],
        entrypoint: vec!["probe".into()],
        cmd: vec![],
        env: vec!["PATH=/usr/bin".into()],
        working_dir: None,
        os: "linux".into(),
        architecture: "amd64".into(),
        annotations: BTreeMap::new(),
    };
    let tar: PathBuf = cd.tempdir().join("links.tar");
    write_image_tar(&spec, std::fs::File::create(&tar)?)?;
    cd.ctr(&["images", "import", &tar.to_string_lossy()])?;
    let image = "docker.io/wasmpod/links:latest";

    let out = run(&cd, &[], image, "link-path", &["probe", "args"])?;
    ensure!(
        out.status == Some(0) && out.stdout.starts_with("probe\nargs\n"),
        "{out:?}"
    );
    let out = run(
        &cd,
        &[],
        image,
        "link-climb",
        &["/usr/bin/climb.wasm", "args"],
    )?;
    ensure!(out.status == Some(0), "{out:?}");
    let out = run(&cd, &[], image, "link-escape", &["/escape.wasm"])?;
    ensure!(
        out.status != Some(0) && out.stderr.contains("link-escape"),
        "{out:?}"
    );
    ensure!(
        !out.stderr.contains("ELF"),
        "followed a link out of the rootfs: {out:?}"
    );
    let _ = cd.ctr(&["containers", "rm", "link-escape"]);
    let _ = Path::new("/");
    cd.assert_no_leftovers()
}
