//! Helpers shared by the e2e test modules: the runtime name, the guest
//! targets, and importing images built from guest programs.

use std::collections::BTreeMap;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wasmpod_e2e::guests::guest;
use wasmpod_e2e::Containerd;
use wasmpod_oci::image::{write_image_tar, Entry, ImageSpec};

/// The runtime name that selects the wasmpod shim.
pub const RUNTIME: &str = "io.containerd.wasmpod.v1";
/// Guests built as WASI 0.1 core modules.
pub const P1: &str = "wasm32-wasip1";
/// Guests built as WASI 0.2 components.
pub const P2: &str = "wasm32-wasip2";

/// Builds and imports an image holding `files`, with `entrypoint`.
pub fn import(
    cd: &Containerd,
    reference: &str,
    files: Vec<(&str, Vec<u8>)>,
    entrypoint: &[&str],
) -> Result<()> {
    let tar = image_tar(cd, reference, files, entrypoint)?;
    cd.ctr(&["images", "import", &tar.to_string_lossy()])?;
    Ok(())
}

/// Writes an image tar (in the harness' directory) holding `files` and an
/// empty `/data`, with `entrypoint`; returns its path.
pub fn image_tar(
    cd: &Containerd,
    reference: &str,
    files: Vec<(&str, Vec<u8>)>,
    entrypoint: &[&str],
) -> Result<std::path::PathBuf> {
    let mut entries: Vec<Entry> = files
        .into_iter()
        .map(|(path, data)| Entry::File {
            path: path.to_owned(),
            data,
            mode: 0o755,
        })
        .collect();
    entries.push(Entry::Dir {
        path: "data".into(),
        mode: 0o755,
    });
    image_tar_of(cd, reference, entries, entrypoint)
}

/// Writes an image tar (in the harness' directory) of one layer holding
/// `entries`, with `entrypoint`; returns its path.
pub fn image_tar_of(
    cd: &Containerd,
    reference: &str,
    entries: Vec<Entry>,
    entrypoint: &[&str],
) -> Result<std::path::PathBuf> {
    let spec = ImageSpec {
        reference: reference.to_owned(),
        entries,
        entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
        cmd: vec![],
        env: vec!["PATH=/usr/bin:/bin".into()],
        working_dir: None,
        os: "linux".into(),
        architecture: "amd64".into(),
        annotations: BTreeMap::new(),
    };
    let tar = cd
        .tempdir()
        .join(format!("{}.tar", reference.replace(['/', ':'], "_")));
    let out = std::fs::File::create(&tar).with_context(|| format!("create {}", tar.display()))?;
    write_image_tar(&spec, out).context("write image")?;
    Ok(tar)
}

/// Imports the probe guest built for `target` (with `/data/greeting.txt`)
/// and returns the image reference.
pub fn probe_image(cd: &Containerd, target: &str) -> Result<String> {
    let reference = format!(
        "docker.io/wasmpod/probe:{}",
        if target == P1 { "p1" } else { "p2" }
    );
    import(cd, &reference, probe_files(target)?, &["/probe.wasm"])?;
    Ok(reference)
}

/// The probe guest for `target` with `/data/greeting.txt`: (files, entrypoint).
fn probe_files(target: &str) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let wasm = std::fs::read(guest(target, "probe")?)?;
    Ok(vec![
        ("probe.wasm", wasm),
        ("data/greeting.txt", b"hello from the image\n".to_vec()),
    ])
}

/// Imports the probe guest for `target` into CRI's namespace and returns the
/// image reference.
pub fn cri_probe_image(cd: &Containerd, target: &str) -> Result<String> {
    let reference = format!(
        "docker.io/wasmpod/probe:cri-{}",
        if target == P1 { "p1" } else { "p2" }
    );
    let tar = image_tar(cd, &reference, probe_files(target)?, &["/probe.wasm"])?;
    cd.cri_import(&tar, &reference)?;
    Ok(reference)
}

/// Waits until `ctr tasks ls` lists `id` as RUNNING and returns its pid.
pub fn running_pid(cd: &Containerd, id: &str) -> Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tasks = cd.ctr(&["tasks", "ls"])?;
        for line in tasks.lines() {
            if let [task, pid, "RUNNING", ..] = line.split_whitespace().collect::<Vec<_>>()[..] {
                if task == id {
                    return pid
                        .parse()
                        .with_context(|| format!("pid in `ctr tasks ls` line {line:?}"));
                }
            }
        }
        if Instant::now() > deadline {
            bail!("task {id} never ran:\n{tasks}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The arguments of `ctr run --rm` of `image` as `id` with extra ctr
/// flags and guest args, through wasmpod.
fn run_argv<'a>(flags: &[&'a str], image: &'a str, id: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["run", "--rm", "--runtime", RUNTIME];
    argv.extend_from_slice(flags);
    argv.push(image);
    argv.push(id);
    argv.extend_from_slice(args);
    argv
}

/// `ctr run --rm` of `image` as `id` with extra ctr flags and guest args.
pub fn run(
    cd: &Containerd,
    flags: &[&str],
    image: &str,
    id: &str,
    args: &[&str],
) -> Result<wasmpod_e2e::Output> {
    cd.ctr_output(&run_argv(flags, image, id, args))
}

/// [`run`] in the background: the running `ctr`.
pub fn spawn_run(
    cd: &Containerd,
    flags: &[&str],
    image: &str,
    id: &str,
    args: &[&str],
) -> Result<std::process::Child> {
    cd.ctr_spawn(&run_argv(flags, image, id, args))
}

/// `cmd` as one shell word list (single-quoted arguments).
pub fn shell_line(cmd: &std::process::Command) -> String {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    std::iter::once(quote(cmd.get_program()))
        .chain(cmd.get_args().map(quote))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `ctr ARGS` on a terminal of `rows`×`cols` (ctr's `-t` wants its
/// stdin to be one): util-linux `script` provides it, and passes ctr's exit
/// status on. Returns the status and the output without `\r` (both terminals
/// turn `\n` into `\r\n`).
pub fn ctr_on_a_terminal(
    cd: &Containerd,
    args: &[&str],
    rows: u16,
    cols: u16,
) -> Result<(Option<i32>, String)> {
    let line = format!(
        "stty rows {rows} cols {cols}; exec {}",
        shell_line(&cd.ctr_command(args))
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"]);
    let out =
        wasmpod_e2e::process::run_with_timeout(&mut cmd, None, std::time::Duration::from_secs(60))?;
    Ok((out.status, out.stdout.replace('\r', "")))
}

/// Removes the FIFO directories `ctr` left in the harness' FIFO directory:
/// `ctr run -d` leaves its FIFOs to the client that made them.
pub fn remove_ctr_fifos(cd: &Containerd) -> Result<()> {
    let dir = cd.fifo_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        std::fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
    }
    Ok(())
}

/// Whether a thread of process `pid` sleeps in a pipe write.
pub fn blocked_in_pipe_write(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w.contains("pipe_write"))
    })
}
