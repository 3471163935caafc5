//! OCI images and Wasm artifacts through a registry, as a developer and a
//! node meet them: `wasmpod oci push` to a private registry (Debian's
//! `docker-registry` on 127.0.0.1), CRI `PullImage` as kubelet pulls, then a
//! pod runs it and its log is read. Artifacts need containerd ≥ 1.6.25 /
//! 1.7.7 to pull (older ones refuse non-tar layers, which the tests check
//! too); classic images run everywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use wasmpod_e2e::cri::{api, container_config, Cri, Pod, HANDLER};
use wasmpod_e2e::guests::{guest, wat_fixture};
use wasmpod_e2e::process::run_with_timeout;
use wasmpod_e2e::registry::Registry;
use wasmpod_e2e::{workspace_root, Containerd, ContainerdOptions, Output};
use wasmpod_oci::artifact::{
    WasmConfig, MEDIA_TYPE_COMPONENT, MEDIA_TYPE_WASM, MEDIA_TYPE_WASM_CONTENT,
    WASM_CONFIG_MEDIA_TYPE,
};
use wasmpod_oci::blob::{Blob, Blobs};
use wasmpod_oci::layout::write_layout_tar;

use crate::common::{P1, P2};

/// What the hello guest prints.
const HELLO: &str = "hello from wasmpod";

/// The error containerd before 1.6.25 / 1.7.7 gives for non-tar layers.
const OLD_CONTAINERD_ERROR: &str = "mismatched image rootfs and manifest layers";

fn cri_containerd() -> Result<Containerd> {
    Containerd::start(ContainerdOptions {
        cri: true,
        ..Default::default()
    })
}

/// The `wasmpod` CLI built next to the shim.
fn wasmpod_cli() -> Result<PathBuf> {
    let path = workspace_root().join("target/release/wasmpod");
    ensure!(path.is_file(), "{} not built (make build)", path.display());
    Ok(path)
}

/// Runs `wasmpod args...` (bounded in time) and returns its output.
fn wasmpod(args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(wasmpod_cli()?);
    cmd.args(args).env("HOME", "/nonexistent");
    run_with_timeout(&mut cmd, None, Duration::from_secs(180))
}

/// `wasmpod oci push` that must succeed.
fn push(args: &[&str]) -> Result<String> {
    let mut argv = vec!["oci", "push"];
    argv.extend_from_slice(args);
    let out = wasmpod(&argv)?;
    ensure!(
        out.success(),
        "wasmpod {argv:?} failed: {}{}",
        out.stdout,
        out.stderr
    );
    Ok(out.stdout)
}

/// Whether this containerd pulls images with non-tar (Wasm) layers.
fn pulls_artifacts(cri: &Cri) -> Result<bool> {
    let v = cri.version()?.runtime_version;
    let nums: Vec<u32> = v
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    Ok(match nums[..] {
        [1, 6, patch, ..] => patch >= 25,
        [1, 7, patch, ..] => patch >= 7,
        [1, minor, ..] => minor > 7,
        [major, ..] => major > 1,
        _ => bail!("cannot parse containerd version {v:?}"),
    })
}

/// A CRI containerd that pulls artifacts, or `None` (with a note) on one
/// too old: its pull error is checked by the first test of this module.
fn artifact_containerd() -> Result<Option<(Containerd, Cri)>> {
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    if pulls_artifacts(&cri)? {
        return Ok(Some((cd, cri)));
    }
    eprintln!(
        "containerd {} cannot pull artifacts",
        cri.version()?.runtime_version
    );
    cd.assert_no_leftovers()?;
    Ok(None)
}

/// `bytes` with a custom section named `wasmpod-e2e` holding `payload`
/// appended: the same program, a different digest (and size).
fn with_custom_section(bytes: &[u8], payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"wasmpod-e2e";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    let mut out = bytes.to_vec();
    out.push(0);
    leb(body.len() + payload.len(), &mut out);
    out.extend_from_slice(&body);
    out.extend_from_slice(payload);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    Ok(path.to_string_lossy().into_owned())
}

/// An artifact as other tools publish it (runwasi's builder, `wkg`): CNCF
/// config without an entry point, raw layers without titles.
fn third_party_artifact(dir: &Path, reference: &str, modules: &[&[u8]]) -> Result<String> {
    let layers: Vec<Blob> = modules
        .iter()
        .map(|m| Blob::new(MEDIA_TYPE_WASM, m.to_vec()))
        .collect();
    let config = WasmConfig {
        created: Some("2024-01-01T00:00:00Z".into()),
        author: None,
        architecture: "wasm".into(),
        os: "wasip1".into(),
        layer_digests: layers.iter().map(|l| l.digest.clone()).collect(),
        component: None,
        config: None,
        rootfs: None,
    };
    let config = Blob::new(WASM_CONFIG_MEDIA_TYPE, serde_json::to_vec(&config)?);
    let descriptor = |b: &Blob| serde_json::json!({"mediaType": b.media_type, "digest": b.digest, "size": b.data.len()});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor(&config),
        "layers": layers.iter().map(descriptor).collect::<Vec<_>>(),
    });
    let blobs = Blobs {
        manifest: Blob::new(
            "application/vnd.oci.image.manifest.v1+json",
            serde_json::to_vec(&manifest)?,
        ),
        config,
        layers,
        platform: ("wasip1".into(), "wasm".into()),
    };
    let tar = dir.join(format!("{}.tar", &blobs.manifest.digest[7..19]));
    write_layout_tar(&blobs, reference, std::fs::File::create(&tar)?)?;
    Ok(tar.to_string_lossy().into_owned())
}

/// Starts `config` in `pod`, waits for its exit and returns (exit code, log lines).
fn run_to_exit(
    cri: &Cri,
    pod: &mut Pod,
    config: &api::ContainerConfig,
) -> Result<(i32, Vec<String>)> {
    let id = pod.start(config)?;
    let status = cri.wait_exited(&id, Duration::from_secs(60))?;
    let lines = pod
        .log_lines(config)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    Ok((status.exit_code, lines))
}

#[test]
fn classic_images_and_artifacts_pushed_pulled_and_run_through_cri() -> Result<()> {
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    let registry = Registry::start(&cd.tempdir().join("registry"))?;
    let host = registry.host();
    let artifacts = pulls_artifacts(&cri)?;
    let p1 = guest(P1, "hello")?.to_string_lossy().into_owned();
    let p2 = guest(P2, "hello")?.to_string_lossy().into_owned();
    let third_party = third_party_artifact(
        cd.tempdir(),
        &format!("{host}/e2e/third-party:v1"),
        &[&std::fs::read(&p1)?],
    )?;

    // (name, push arguments, is an artifact, pod command)
    let cases: Vec<(&str, Vec<String>, bool, Vec<&str>)> = vec![
        ("classic-p1", vec![p1.clone()], false, vec![]),
        ("classic-p2", vec![p2.clone()], false, vec![]),
        (
            "wasm-p1",
            vec![
                p1.clone(),
                "--artifact".into(),
                "--media-type".into(),
                MEDIA_TYPE_WASM.into(),
            ],
            true,
            vec![],
        ),
        (
            "content-p1",
            vec![
                p1.clone(),
                "--artifact".into(),
                "--media-type".into(),
                MEDIA_TYPE_WASM_CONTENT.into(),
            ],
            true,
            vec![],
        ),
        (
            "component-p2",
            vec![
                p2.clone(),
                "--artifact".into(),
                "--media-type".into(),
                MEDIA_TYPE_COMPONENT.into(),
            ],
            true,
            vec![],
        ),
        (
            "wasm-p2",
            vec![p2.clone(), "--artifact".into()],
            true,
            vec![],
        ),
        // Other tools' artifacts carry no entry point: pods name one, as
        // runwasi's and Spin's examples do.
        ("third-party", vec![third_party], true, vec!["/"]),
    ];
    let mut pod = Pod::run(&cd, &cri, Pod::config(&cd, "artifacts"), HANDLER)?;
    for (name, args, is_artifact, command) in &cases {
        let reference = format!("{host}/e2e/{name}:v1");
        let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
        argv.insert(1, &reference);
        let pushed = push(&argv)?;
        ensure!(pushed.contains(&reference), "{name}: push said {pushed:?}");

        match cri.pull_image(&reference) {
            Err(e) if *is_artifact && !artifacts => {
                ensure!(
                    format!("{e:#}").contains(OLD_CONTAINERD_ERROR),
                    "{name}: unexpected pull error on an old containerd: {e:#}"
                );
                continue;
            }
            Err(e) => return Err(e.context(format!("{name}: CRI PullImage {reference}"))),
            Ok(_) => ensure!(
                !*is_artifact || artifacts,
                "{name}: an old containerd pulled an artifact"
            ),
        }
        let config = container_config(name, &reference, command, &[]);
        let (code, lines) = run_to_exit(&cri, &mut pod, &config)?;
        ensure!(
            code == 0 && lines.iter().any(|l| l == HELLO),
            "{name}: exit {code}, log {lines:?}"
        );
    }
    pod.remove()?;
    drop(registry);
    cd.assert_no_leftovers()
}

#[test]
fn multi_layer_artifacts_run_the_layer_the_pod_names() -> Result<()> {
    let Some((cd, cri)) = artifact_containerd()? else {
        return Ok(());
    };
    let registry = Registry::start(&cd.tempdir().join("registry"))?;
    let host = registry.host();
    let dir = cd.tempdir();
    let hello = std::fs::read(guest(P1, "hello")?)?;
    let exit7 = wat::parse_file(wat_fixture("exit7"))?;
    let hello_path = write(dir, "hello.wasm", &hello)?;
    let exit7_path = write(dir, "exit7.wasm", &exit7)?;

    let ours = format!("{host}/e2e/two-modules:v1");
    let ours_tar = dir.join("two-modules.tar").to_string_lossy().into_owned();
    let built = wasmpod(&[
        "oci",
        "build",
        &hello_path,
        &exit7_path,
        "--artifact",
        "-t",
        &ours,
        "-o",
        &ours_tar,
    ])?;
    ensure!(built.success(), "build: {built:?}");
    push(&[&ours_tar, &ours])?;
    let theirs = format!("{host}/e2e/two-untitled:v1");
    let tar = third_party_artifact(dir, &theirs, &[&hello, &exit7])?;
    push(&[&tar, &theirs])?;
    cri.pull_image(&ours)?;
    cri.pull_image(&theirs)?;

    // `ctr` pulls artifacts but its `run` only builds specs from image
    // configs (the README says so): artifacts are for the CRI path.
    cd.ctr(&["images", "pull", "--plain-http", &ours])?;
    let out = crate::common::run(&cd, &[], &ours, &cd.unique_id("art"), &[])?;
    ensure!(
        !out.success() && out.stderr.contains("unknown image config media type"),
        "ctr run of an artifact: {out:?}"
    );

    let mut pod = Pod::run(&cd, &cri, Pod::config(&cd, "layers"), HANDLER)?;
    // No command: the artifact's entry point, its first module.
    let (code, lines) = run_to_exit(
        &cri,
        &mut pod,
        &container_config("default", &ours, &[], &[]),
    )?;
    ensure!(
        code == 0 && lines.iter().any(|l| l == HELLO),
        "default: {code} {lines:?}"
    );
    // The command names the other layer (by file name, any directory).
    let (code, _) = run_to_exit(
        &cri,
        &mut pod,
        &container_config("by-command", &ours, &["/bin/exit7.wasm"], &[]),
    )?;
    ensure!(code == 7, "by command: exit {code}");
    // Untitled layers are named by digest.
    let digest = wasmpod_oci::blob::sha256_digest(&exit7);
    let (code, _) = run_to_exit(
        &cri,
        &mut pod,
        &container_config("by-digest", &theirs, &[&digest], &[]),
    )?;
    ensure!(code == 7, "by digest: exit {code}");

    // Two untitled layers and a command naming neither: a clear error at
    // StartContainer, and in the container's log.
    let ambiguous = container_config("ambiguous", &theirs, &["/"], &[]);
    let err = match pod.start(&ambiguous) {
        Ok(id) => bail!("container {id} of an ambiguous artifact started"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("2 Wasm layers")
            && err.contains(&digest)
            && err.contains("wasmpod.io/wasm-layer"),
        "StartContainer error: {err}"
    );
    let log = pod.log_lines(&ambiguous)?;
    ensure!(
        log.iter()
            .any(|(stream, l)| stream == "stderr" && l.contains("2 Wasm layers")),
        "the container log does not say why: {log:?}"
    );
    pod.remove()?;

    // A pod annotation (passed through by the handler's pod_annotations)
    // chooses the layer for its containers.
    let mut config = Pod::config(&cd, "annotated");
    config.annotations =
        BTreeMap::from([("wasmpod.io/wasm-layer".to_owned(), "exit7.wasm".to_owned())])
            .into_iter()
            .collect();
    let mut annotated = Pod::run(&cd, &cri, config, HANDLER)?;
    let (code, _) = run_to_exit(
        &cri,
        &mut annotated,
        &container_config("annotated", &ours, &[], &[]),
    )?;
    ensure!(code == 7, "annotated: exit {code}");
    let mut config = container_config("annotated-bad", &ours, &[], &[]);
    config
        .annotations
        .insert("wasmpod.io/wasm-layer".into(), "nope.wasm".into());
    let err = match annotated.start(&config) {
        Ok(id) => bail!("container {id} with a bad layer annotation started"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("nope.wasm") && err.contains("exit7.wasm") && err.contains("hello.wasm"),
        "StartContainer error: {err}"
    );
    annotated.remove()?;
    drop(registry);
    cd.assert_no_leftovers()
}

#[test]
fn unreachable_registries_and_corrupt_layers_are_refused() -> Result<()> {
    let cd = cri_containerd()?;
    let cri = cd.cri()?;
    let registry = Registry::start(&cd.tempdir().join("registry"))?;
    let host = registry.host();
    let hello = guest(P1, "hello")?.to_string_lossy().into_owned();

    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let down = format!("{closed}/e2e/down:v1");
    let out = wasmpod(&["oci", "push", &hello, &down])?;
    ensure!(
        !out.success() && out.stderr.contains(&closed.to_string()),
        "push to a closed port: {out:?}"
    );
    let err = format!(
        "{:#}",
        cri.pull_image(&down)
            .err()
            .context("pull from a closed port succeeded")?
    );
    ensure!(
        err.contains("connection refused") && err.contains(&closed.to_string()),
        "CRI PullImage from a closed port: {err}"
    );

    // The registry serves a layer whose bytes do not match the digest the
    // manifest names: containerd refuses it at pull.
    for (name, artifact) in [("corrupt-image", false), ("corrupt-artifact", true)] {
        let reference = format!("{host}/e2e/{name}:v1");
        let mut argv = vec![hello.as_str(), reference.as_str()];
        if artifact {
            argv.push("--artifact");
        }
        push(&argv)?;
        let inspect = wasmpod(&["oci", "inspect", "--json", &reference])?;
        ensure!(inspect.success(), "inspect {reference}: {inspect:?}");
        let v: serde_json::Value = serde_json::from_str(&inspect.stdout)
            .with_context(|| format!("inspect --json output: {}", inspect.stdout))?;
        let layer = v["layers"][0]["digest"]
            .as_str()
            .with_context(|| format!("no layer digest in {v}"))?
            .to_owned();
        let blob = registry.blob_path(&layer);
        let mut bytes = std::fs::read(&blob).with_context(|| format!("read {}", blob.display()))?;
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&blob, &bytes)?;
        let err = format!(
            "{:#}",
            cri.pull_image(&reference)
                .err()
                .context("a corrupt layer was pulled")?
        );
        ensure!(
            err.contains(&layer) || err.contains("digest"),
            "{name}: CRI PullImage error does not name the digest: {err}"
        );
        ensure!(
            !cri.image_present(&reference)?,
            "{name}: image listed after a failed pull"
        );
    }
    drop(registry);
    cd.assert_no_leftovers()
}

#[test]
fn huge_layers_stream_through_the_shim_in_bounded_memory() -> Result<()> {
    const PAYLOAD: usize = 192 << 20;
    let Some((cd, cri)) = artifact_containerd()? else {
        return Ok(());
    };
    let registry = Registry::start(&cd.tempdir().join("registry"))?;
    let reference = format!("{}/e2e/huge:v1", registry.host());
    let hello = std::fs::read(guest(P1, "hello")?)?;
    let huge = with_custom_section(&hello, &vec![0x5a; PAYLOAD]);
    let path = write(cd.tempdir(), "huge.wasm", &huge)?;
    drop(huge);
    push(&[&path, &reference, "--artifact"])?;
    std::fs::remove_file(&path)?;
    cri.pull_image(&reference)?;

    let mut pod = Pod::run(&cd, &cri, Pod::config(&cd, "huge"), HANDLER)?;
    let (code, lines) = run_to_exit(
        &cri,
        &mut pod,
        &container_config("huge", &reference, &[], &[]),
    )?;
    ensure!(
        code == 0 && lines.iter().any(|l| l == HELLO),
        "huge: exit {code}, log {lines:?}"
    );
    // The shim streamed the layer: its peak resident memory stays far
    // below the layer's size.
    let shim = cd.shim_server(None)?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", shim.pid))?;
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")?;
    eprintln!(
        "shim peak RSS {hwm_kib} KiB after a {} MiB layer",
        PAYLOAD >> 20
    );
    ensure!(
        hwm_kib < 64 * 1024,
        "shim peak RSS {hwm_kib} KiB while streaming a {} MiB layer",
        PAYLOAD >> 20
    );
    pod.remove()?;
    drop(registry);
    cd.assert_no_leftovers()
}
