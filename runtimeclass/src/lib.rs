//! `wasmpod-runtimeclass`: how a Kubernetes node learns about wasmpod.
//!
//! It carries the RuntimeClass manifest (`manifests/runtimeclass.yaml`,
//! handler `wasmpod`), an example pod, and the containerd CRI snippets that
//! register the handler: config version 2 for containerd 1.6/1.7
//! (`plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmpod`) and
//! version 3 for containerd 2.x (`plugins."io.containerd.cri.v1.runtime"...`).
//! The node installer (`wasmpod-node`, run by the Helm chart's DaemonSet)
//! applies the same tables: [`config`] edits a containerd config without
//! disturbing it, [`node`] knows each distribution's files and services and
//! undoes exactly what it did, [`cri`] asks containerd whether the handler
//! answers, [`kube`] labels the node, [`restart`] finds and restarts the
//! containerd that serves the configured socket, and [`sys`] holds the
//! socket and namespace system calls that takes.
//! Outside Kubernetes nothing needs registering: containerd finds
//! `containerd-shim-wasmpod-v1` on its `PATH` for the runtime name
//! [`RUNTIME_TYPE`].

#![deny(unsafe_code)]

pub mod config;
pub mod cri;
pub mod kube;
pub mod node;
pub mod restart;
pub mod sys;

/// The containerd runtime type (`runtime_type` in CRI config) of the shim.
pub const RUNTIME_TYPE: &str = "io.containerd.wasmpod.v1";

/// The `runtime_type` of the handler on containerd 2.x (config version 3),
/// with `runtime_path` naming the wasmpod shim: containerd's CRI plugin
/// lets only runtimes of runc's type run pods with a user namespace
/// (`hostUsers: false`), since it passes them runc's options (the I/O
/// owner) and asks them for their OCI features (idmapped mounts).
pub const RUNC_RUNTIME_TYPE: &str = "io.containerd.runc.v2";

/// Where the shim is installed unless the installer is told otherwise.
pub const DEFAULT_SHIM_PATH: &str = "/usr/local/bin/containerd-shim-wasmpod-v1";

/// The CRI runtime handler name, and the RuntimeClass `handler`.
pub const HANDLER: &str = "wasmpod";

/// The shim binary containerd resolves [`RUNTIME_TYPE`] to.
pub const SHIM_BINARY: &str = "containerd-shim-wasmpod-v1";

/// The RuntimeClass manifest.
pub const RUNTIMECLASS_YAML: &str = include_str!("../manifests/runtimeclass.yaml");

/// The CRI snippet for containerd config version 2 (containerd 1.6, 1.7).
pub const CONTAINERD_V2_SNIPPET: &str = include_str!("../containerd/config-v2.toml");

/// The CRI snippet for containerd config version 3 (containerd 2.x).
pub const CONTAINERD_V3_SNIPPET: &str = include_str!("../containerd/config-v3.toml");

/// The CRI plugin path holding runtimes, by containerd config version.
pub fn cri_runtimes_path(config_version: i64) -> Option<[&'static str; 4]> {
    match config_version {
        2 => Some([
            "plugins",
            "io.containerd.grpc.v1.cri",
            "containerd",
            "runtimes",
        ]),
        3 => Some([
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
        ]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_type_maps_to_the_shim_binary() {
        // containerd turns io.containerd.NAME.vN into containerd-shim-NAME-vN.
        let parts: Vec<_> = RUNTIME_TYPE.split('.').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            format!("containerd-shim-{}-{}", parts[2], parts[3]),
            SHIM_BINARY
        );
        assert_eq!(parts[2], HANDLER);
    }

    #[test]
    fn snippets_register_the_handler_at_the_right_path() {
        for (version, snippet) in [(2, CONTAINERD_V2_SNIPPET), (3, CONTAINERD_V3_SNIPPET)] {
            let doc: toml_edit::DocumentMut = snippet.parse().expect("snippet parses");
            let path = cri_runtimes_path(version).expect("known version");
            let mut item = doc.as_item();
            for key in path.iter().chain([&HANDLER]) {
                item = item
                    .get(key)
                    .unwrap_or_else(|| panic!("v{version}: no {key}"));
            }
            assert_eq!(
                item["runtime_type"].as_str(),
                Some(config::runtime_type(version)),
                "v{version}"
            );
            if version >= 3 {
                assert_eq!(
                    item["runtime_path"].as_str(),
                    Some(DEFAULT_SHIM_PATH),
                    "v{version}"
                );
                assert!(DEFAULT_SHIM_PATH.ends_with(SHIM_BINARY));
            }
            assert!(
                item["options"]["SystemdCgroup"].as_bool().is_some(),
                "v{version}"
            );
        }
        assert_eq!(cri_runtimes_path(1), None);
    }

    #[test]
    fn runtimeclass_names_the_handler() {
        let lines: Vec<_> = RUNTIMECLASS_YAML.lines().map(str::trim_end).collect();
        assert!(lines.contains(&"kind: RuntimeClass"));
        assert!(lines.contains(&"apiVersion: node.k8s.io/v1"));
        assert!(lines.contains(&format!("handler: {HANDLER}").as_str()));
        assert!(lines.contains(&"    wasmpod.io/ready: \"true\""));
    }
}
