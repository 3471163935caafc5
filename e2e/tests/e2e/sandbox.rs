//! The guest stays inside its sandbox, and hostile programs end inside their
//! limits: links and `..` that point out of the rootfs, writes of every kind
//! to read-only mounts, runaway recursion, deeply nested and huge modules.

use std::fs;

use anyhow::{ensure, Result};
use wasmpod_e2e::guests::guest;
use wasmpod_e2e::{Containerd, ContainerdOptions, Output};
use wasmpod_oci::image::Entry;

use crate::common::{image_tar_of, import, run, P1, P2};

/// What the host has and no image here has: the test fails if a guest
/// ever prints it.
const HOST_ONLY: &str = "root:x:0:0";

/// An image with the probe for `target` and links that point out of the
/// rootfs if resolved on the host.
fn escape_image(cd: &Containerd, target: &str) -> Result<String> {
    let reference = format!("docker.io/wasmpod/escape:{}", &target[10..]);
    let tar = image_tar_of(
        cd,
        &reference,
        vec![
            Entry::File {
                path: "probe.wasm".into(),
                data: fs::read(guest(target, "probe")?)?,
                mode: 0o755,
            },
            Entry::Dir {
                path: "data".into(),
                mode: 0o755,
            },
            Entry::Symlink {
                path: "data/up".into(),
                target: "../../../../../../etc".into(),
            },
            Entry::Symlink {
                path: "data/abs".into(),
                target: "/etc".into(),
            },
            Entry::Symlink {
                path: "data/self".into(),
                target: "/proc/self/root/etc".into(),
            },
        ],
        &["/probe.wasm"],
    )?;
    cd.ctr(&["images", "import", &tar.to_string_lossy()])?;
    Ok(reference)
}

/// Runs `args` and checks that the guest failed its filesystem operation
/// (probe exit 1) and showed nothing of the host.
fn refused(cd: &Containerd, flags: &[&str], image: &str, id: &str, args: &[&str]) -> Result<()> {
    let out = run(cd, flags, image, id, args)?;
    ensure!(
        out.status == Some(1),
        "{id}: {args:?} should be refused: {out:?}"
    );
    ensure!(
        !out.stdout.contains(HOST_ONLY) && !out.stdout.contains(": ok"),
        "{id}: {args:?} reached the host: {out:?}"
    );
    Ok(())
}

#[test]
fn guest_cannot_reach_the_host_through_links_dotdot_or_read_only_mounts() -> Result<()> {
    ensure!(
        fs::read_to_string("/etc/passwd")?.contains(HOST_ONLY),
        "this host's /etc/passwd lacks {HOST_ONLY:?}: the test would prove nothing"
    );
    let cd = Containerd::start(ContainerdOptions::default())?;
    for target in [P1, P2] {
        let t = &target[10..];
        let image = escape_image(&cd, target)?;
        for (n, path) in [
            "/data/up/passwd",
            "/data/abs/passwd",
            "/data/self/passwd",
            "/../../../etc/passwd",
            "/data/../../etc/passwd",
            "/proc/self/root/etc/passwd",
        ]
        .iter()
        .enumerate()
        {
            refused(
                &cd,
                &[],
                &image,
                &format!("esc-{t}-{n}"),
                &["/probe.wasm", "cat", path],
            )?;
        }
        // The root the guest sees is the rootfs, even from `/..`.
        let out = run(
            &cd,
            &[],
            &image,
            &format!("ls-{t}"),
            &["/probe.wasm", "ls", "/"],
        )?;
        ensure!(
            out.status == Some(0) && out.stdout.contains("probe.wasm"),
            "{out:?}"
        );
        let out = run(
            &cd,
            &[],
            &image,
            &format!("lsup-{t}"),
            &["/probe.wasm", "ls", "/.."],
        )?;
        ensure!(
            !out.stdout.contains("etc\n") && !out.stdout.contains("proc\n"),
            "`ls /..` listed the host: {out:?}"
        );
        // `..` in the entrypoint stays inside the rootfs too.
        let id = format!("entry-{t}");
        let out = run(&cd, &[], &image, &id, &["/../../../bin/busybox"])?;
        ensure!(
            out.status != Some(0)
                && out.stderr.contains("not found")
                && !out.stderr.contains("ELF"),
            "{id}: {out:?}"
        );
        let _ = cd.ctr(&["containers", "rm", &id]);

        // A read-only bind mount refuses every kind of write.
        let host = cd.tempdir().join(format!("ro-{t}"));
        fs::create_dir_all(host.join("sub"))?;
        fs::write(host.join("keep.txt"), "keep")?;
        let ro = format!("type=bind,src={},dst=/out,options=rbind:ro", host.display());
        for (n, args) in [
            vec!["truncate", "/out/keep.txt"],
            vec!["write", "/out/keep.txt", "x"],
            vec!["link", "/out/keep.txt", "/out/hard.txt"],
            vec!["rename", "/out/keep.txt", "/out/moved.txt"],
            vec!["rename", "/out/sub", "/out/moved"],
            vec!["rm", "/out/keep.txt"],
            vec!["mkdir", "/out/new"],
        ]
        .into_iter()
        .enumerate()
        {
            let mut full = vec!["/probe.wasm"];
            full.extend(args);
            refused(
                &cd,
                &["--mount", &ro],
                &image,
                &format!("ro-{t}-{n}"),
                &full,
            )?;
        }
        let mut left: Vec<String> = fs::read_dir(&host)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        left.sort();
        ensure!(
            left == ["keep.txt", "sub"] && fs::read_to_string(host.join("keep.txt"))? == "keep",
            "the read-only mount changed: {left:?}"
        );
        // The same operations go through on a writable mount: the refusals
        // above come from the mount being read-only.
        let rw = format!("type=bind,src={},dst=/out,options=rbind:rw", host.display());
        let out = run(
            &cd,
            &["--mount", &rw],
            &image,
            &format!("rw-{t}"),
            &["/probe.wasm", "rename", "/out/keep.txt", "/out/moved.txt"],
        )?;
        ensure!(out.status == Some(0), "{out:?}");
        ensure!(host.join("moved.txt").is_file(), "rename did not land");
        // A read-only root: truncating an image file is refused as well.
        refused(
            &cd,
            &["--read-only"],
            &image,
            &format!("rootro-{t}"),
            &["/probe.wasm", "truncate", "/probe.wasm"],
        )?;
    }

    // Native code comes only from the shim's own cache: the very files it
    // stored above, shipped in an image, are refused as not WebAssembly.
    let mut files = Vec::new();
    for entry in fs::read_dir(cd.tempdir().join("wasmpod-cache"))? {
        let path = entry?.path();
        if let Some(ext @ ("cwasm" | "ccwasm")) = path.extension().and_then(|e| e.to_str()) {
            let name: &'static str = if ext == "cwasm" {
                "app.cwasm"
            } else {
                "app.ccwasm"
            };
            files.push((name, fs::read(&path)?));
        }
    }
    ensure!(
        files.len() == 2,
        "expected a module and a component in the cache"
    );
    import(
        &cd,
        "docker.io/wasmpod/native:latest",
        files,
        &["/app.cwasm"],
    )?;
    for (n, entry) in ["/app.cwasm", "/app.ccwasm"].iter().enumerate() {
        let id = format!("native-{n}");
        let out = run(&cd, &[], "docker.io/wasmpod/native:latest", &id, &[entry])?;
        ensure!(
            out.status != Some(0) && out.stderr.contains("not WebAssembly"),
            "{id}: precompiled code from an image was not refused: {out:?}"
        );
        let _ = cd.ctr(&["containers", "rm", &id]);
    }
    cd.assert_no_leftovers()
}

/// `wasm` with a custom section of `pad` zero bytes appended (valid at the
/// end of any module).
fn with_custom_section(mut wasm: Vec<u8>, pad: usize) -> Vec<u8> {
    let name = b"wasmpod-padding";
    wasm.push(0); // custom section
    leb128(&mut wasm, (1 + name.len() + pad) as u64);
    wasm.push(name.len() as u8);
    wasm.extend_from_slice(name);
    wasm.resize(wasm.len() + pad, 0);
    wasm
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A core module whose `_start` nests `depth` empty blocks.
fn nested_blocks(depth: usize) -> Vec<u8> {
    let mut body = vec![0u8]; // no locals
    for _ in 0..depth {
        body.extend_from_slice(&[0x02, 0x40]); // block (empty type)
    }
    body.resize(body.len() + depth + 1, 0x0b); // the ends, and the function's
    let mut code = Vec::new();
    leb128(&mut code, 1);
    leb128(&mut code, body.len() as u64);
    code.extend_from_slice(&body);

    let mut m = b"\0asm\x01\0\0\0".to_vec();
    let section = |m: &mut Vec<u8>, id: u8, bytes: &[u8]| {
        m.push(id);
        leb128(m, bytes.len() as u64);
        m.extend_from_slice(bytes);
    };
    section(&mut m, 1, &[1, 0x60, 0, 0]); // type 0: [] -> []
    section(&mut m, 3, &[1, 0]); // func 0: type 0
    section(&mut m, 7, b"\x01\x06_start\x00\x00"); // export "_start" = func 0
    section(&mut m, 10, &code);
    m
}

fn ends_cleanly(out: &Output, id: &str) -> Result<()> {
    ensure!(
        out.status == Some(0) || out.stderr.contains(id),
        "{id}: neither ran nor failed with a message naming it: {out:?}"
    );
    Ok(())
}

#[test]
fn runaway_and_oversized_guests_end_inside_their_limits() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions::default())?;
    for target in [P1, P2] {
        let t = &target[10..];
        let image = crate::common::probe_image(&cd, target)?;
        // Unbounded recursion in Rust: its stack in linear memory runs out
        // first, a trap (134) with a bounded backtrace.
        let out = run(
            &cd,
            &[],
            &image,
            &format!("rec-{t}"),
            &["/probe.wasm", "recurse"],
        )?;
        ensure!(out.status == Some(134), "{out:?}");
        ensure!(out.stderr.contains("wasm trap"), "{out:?}");
        ensure!(out.stderr.len() < 64 << 10, "unbounded backtrace: {out:?}");
    }
    // Recursion with no linear-memory stack: wasmtime's native stack limit.
    let recurse = wat::parse_str(
        r#"(module (func $f (call $f)) (func (export "_start") (call $f)) (memory (export "memory") 1))"#,
    )?;

    let hello = fs::read(guest(P1, "hello")?)?;
    let huge = with_custom_section(hello.clone(), 300 << 20);
    import(
        &cd,
        "docker.io/wasmpod/odd:latest",
        vec![
            ("hello.wasm", hello),
            ("huge.wasm", huge),
            ("nested.wasm", nested_blocks(100_000)),
            ("recurse.wasm", recurse),
        ],
        &["/hello.wasm"],
    )?;
    let image = "docker.io/wasmpod/odd:latest";
    let out = run(&cd, &[], image, "rec-native", &["/recurse.wasm"])?;
    ensure!(
        out.status == Some(134) && out.stderr.contains("call stack exhausted"),
        "{out:?}"
    );
    // Hundreds of MB of module: loads and runs when memory allows ...
    let out = run(&cd, &[], image, "huge", &["/huge.wasm"])?;
    ensure!(
        out.status == Some(0) && out.stdout == "hello from wasmpod\n",
        "{out:?}"
    );
    // ... and under a memory limit it cannot fit ends in that limit: the
    // kernel's OOM killer ends the runner reading it, the error says so, and
    // the shim goes on.
    let out = run(
        &cd,
        &["--memory-limit", &(64u64 << 20).to_string()],
        image,
        "huge-limited",
        &["/huge.wasm"],
    )?;
    ensure!(
        out.status != Some(0)
            && out.stderr.contains("huge-limited")
            && out.stderr.contains("memory limit is too small"),
        "{out:?}"
    );
    let _ = cd.ctr(&["containers", "rm", "huge-limited"]);
    // Deep nesting compiles or is refused with a message; never a crash.
    let out = run(&cd, &[], image, "nested", &["/nested.wasm"])?;
    ends_cleanly(&out, "nested")?;
    let _ = cd.ctr(&["containers", "rm", "nested"]);
    // The shim and its neighbours are unharmed.
    let out = run(&cd, &[], image, "after", &[])?;
    ensure!(out.status == Some(0), "{out:?}");
    cd.assert_no_leftovers()
}
