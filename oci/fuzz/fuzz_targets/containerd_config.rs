//! Any containerd config file the node installer may find: registering the
//! `wasmpod` handler must never panic, and when it succeeds the result is
//! TOML, has the handler, is a fixed point (installing again changes
//! nothing), and uninstalling leaves TOML without the handler.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmpod_runtimeclass::config::{install, is_installed, uninstall};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(installed) = install(text, 2) else {
        return;
    };
    let out = &installed.text;
    assert!(
        out.parse::<toml_edit::DocumentMut>().is_ok(),
        "not TOML:\n{out}"
    );
    assert!(is_installed(out), "handler missing:\n{out}");
    let again = install(out, 2).expect("installing over our own output");
    assert!(
        !again.changed && &again.text == out,
        "not idempotent:\n{out}"
    );
    let removed = uninstall(out)
        .expect("uninstalling our own output")
        .expect("our block is there");
    assert!(!is_installed(&removed), "handler left:\n{removed}");
    assert!(
        removed.parse::<toml_edit::DocumentMut>().is_ok(),
        "uninstall broke the TOML:\n{removed}"
    );
});
