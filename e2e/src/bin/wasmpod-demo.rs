//! `make demo`: the whole path on an embedded default. Starts a private
//! containerd (nothing of the machine's own is touched), packages the hello
//! guest with `wasmpod oci build`, imports it and runs it with
//! `ctr run --runtime io.containerd.wasmpod.v1`, printing each step.

use std::process::Command;

use anyhow::{bail, Context, Result};
use wasmpod_e2e::guests::guest;
use wasmpod_e2e::{workspace_root, Containerd, ContainerdOptions, RUNTIME};

const IMAGE: &str = "docker.io/wasmpod/hello:demo";

fn main() -> Result<()> {
    let wasm = guest("wasm32-wasip1", "hello")?;
    let cd = Containerd::start(ContainerdOptions::default())?;
    println!("# private containerd at {}", cd.socket().display());

    let tar = cd.tempdir().join("hello.tar");
    let wasmpod = workspace_root().join("target/release/wasmpod");
    println!("$ wasmpod oci build hello.wasm -t {IMAGE} -o hello.tar");
    let out = Command::new(&wasmpod)
        .args(["oci", "build"])
        .arg(&wasm)
        .args(["-t", IMAGE, "-o"])
        .arg(&tar)
        .output()
        .with_context(|| format!("run {}", wasmpod.display()))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "wasmpod oci build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let tar = tar.to_string_lossy().into_owned();
    println!("$ ctr images import --all-platforms hello.tar");
    print!(
        "{}",
        cd.ctr(&["images", "import", "--all-platforms", &tar])?
    );

    println!("$ ctr run --rm --runtime {RUNTIME} {IMAGE} hello-demo");
    let run = cd.ctr_output(&["run", "--rm", "--runtime", RUNTIME, IMAGE, "hello-demo"])?;
    print!("{}{}", run.stdout, run.stderr);
    println!("# exit status {:?}", run.status);
    if run.status != Some(0) {
        bail!(
            "the demo container failed; containerd log:\n{}",
            cd.log_tail(40)
        );
    }
    cd.assert_no_leftovers()?;
    println!("# no processes, mounts, FIFOs or state left behind");
    Ok(())
}
