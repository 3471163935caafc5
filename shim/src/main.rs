//! `containerd-shim-wasmpod-v1`: containerd's shim for Wasm containers, and
//! (with a private first argument) the runner process of one container.

use wasmpod_shim::{actions, runner, serve, RUNTIME_ID};

fn main() {
    let args: Vec<_> = std::env::args_os().collect();
    if args.get(1).map(|a| a.as_os_str()) == Some(runner::RUNNER_ARG.as_ref()) {
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
    // One thread serves the whole pod: ttrpc requests are short, and the
    // shim's memory is paid once per pod.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        if flags.info {
            return actions::info_action();
        }
        match flags.action.as_str() {
            "start" => actions::start_action(&flags).await,
            "delete" => actions::delete_action(&flags).await,
            "" => serve::serve(&flags).await,
            other => Err(anyhow::anyhow!("unknown action {other:?}")),
        }
    });
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
