//! `containerd-shim-wasmpod-v1`: containerd's shim for Wasm containers, and
//! (with a private first argument) the runner process of one container.

use wasmpod_shim::{actions, control, runner, server, RUNTIME_ID};

fn main() {
    let args: Vec<_> = std::env::args_os().collect();
    if args.get(1).map(|a| a.as_os_str()) == Some(control::RUNNER_ARG.as_ref()) {
        std::process::exit(runner::main());
    }
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            std::process::exit(2);
        }
    };
    if flags.version {
        println!("{RUNTIME_ID} {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    // The one-shot actions run without an async runtime (see `actions`).
    let result = if flags.info {
        actions::info_action()
    } else {
        match flags.action.as_str() {
            "start" => actions::start_action(&flags),
            "delete" => actions::delete_action(&flags),
            "" => server::run(&flags),
            other => Err(anyhow::anyhow!("unknown action {other:?}")),
        }
    };
    if let Err(e) = result {
        eprintln!(
            "{RUNTIME_ID}: {}: {e:#}",
            if flags.action.is_empty() {
                "serve"
            } else {
                &flags.action
            }
        );
        std::process::exit(1);
    }
}
