//! `containerd-shim-wasmpod-v1`: containerd's shim for Wasm containers, and
//! (with a private first argument) the runner process of one container.

use std::ffi::OsString;

use wasmpod_shim::{actions, control, runner, server, RUNTIME_ID};

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    std::process::exit(dispatch(&args));
}

/// Runs what `args` (the whole argv, `argv[0]` included, possibly empty)
/// asks for and returns the exit code.
fn dispatch(args: &[OsString]) -> i32 {
    let rest = args.get(1..).unwrap_or_default();
    if rest.first().map(OsString::as_os_str) == Some(control::RUNNER_ARG.as_ref()) {
        return runner::main();
    }
    let flags = match containerd_shim::parse(rest) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            return 2;
        }
    };
    if flags.version {
        println!("{RUNTIME_ID} {}", env!("CARGO_PKG_VERSION"));
        return 0;
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
    match result {
        Ok(()) => 0,
        Err(e) => {
            let action = if flags.action.is_empty() {
                "serve"
            } else {
                &flags.action
            };
            eprintln!("{RUNTIME_ID}: {action}: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_odd_command_line_is_an_error_not_a_panic() {
        // no argv at all: serve, which needs a socket
        assert_eq!(dispatch(&[]), 1);
        assert_eq!(dispatch(&["shim".into()]), 1);
        assert_eq!(dispatch(&["shim".into(), "bogus-action".into()]), 1);
        assert_eq!(dispatch(&["shim".into(), "-v".into()]), 0);
    }
}
