//! The runtime's OCI features (the runtime-spec `features.json` document,
//! as `runc features` prints it), for `-info`: what a Wasm container's spec
//! may use.

use serde_json::{json, Value};
use wasmpod_oci::plan::mounts::MOUNT_OPTIONS;
use wasmpod_oci::plan::security::CAPABILITIES;
use wasmpod_oci::spec_check::{SECCOMP_ACTIONS, SECCOMP_ARCHES, SECCOMP_OPERATORS};

/// The `Any` type containerd registers for the features document (JSON).
pub const TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// The features document.
pub fn features() -> Value {
    let actions: Vec<&str> = SECCOMP_ACTIONS
        .iter()
        .copied()
        .filter(|a| *a != "SCMP_ACT_NOTIFY")
        .collect();
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": [],
        "mountOptions": &MOUNT_OPTIONS[..],
        "linux": {
            "namespaces": ["ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": &CAPABILITIES[..],
            "cgroup": {"v1": true, "v2": true, "systemd": true, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": actions,
                "operators": &SECCOMP_OPERATORS[..],
                "archs": &SECCOMP_ARCHES[..],
            },
            "apparmor": {"enabled": true},
            "selinux": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": true}},
        },
        "annotations": {
            "io.github.wasmpod.runtime": "wasmtime",
        },
    })
}
