//! Any `config.json` a bundle can hold → the run plan the shim builds from
//! it: parsing and planning must never panic, and a plan that is built
//! holds only what the shim relies on (an entry point, absolute mount
//! destinations and cwd, a cgroup path with no `..`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::Spec;
use wasmpod_oci::plan::RunPlan;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<Spec>(data) else {
        return;
    };
    let Ok(plan) = RunPlan::from_spec(&spec, Path::new("/run/bundle")) else {
        return;
    };
    assert!(!plan.args.is_empty() && !plan.args[0].is_empty());
    assert!(plan.cwd.starts_with('/') && !plan.cwd.split('/').any(|c| c == ".."));
    for bind in &plan.binds {
        let d = &bind.destination;
        assert!(
            d.starts_with('/') && !d.split('/').any(|c| c == ".."),
            "{d:?}"
        );
    }
    for candidate in plan.entrypoint_candidates() {
        assert!(candidate.starts_with('/'), "{candidate:?}");
    }
    if let Some(cg) = &plan.cgroup {
        assert!(!cg.split('/').any(|c| c == ".." || c == "."), "{cg:?}");
    }
});
