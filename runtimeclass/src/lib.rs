//! `wasmpod-runtimeclass`: how a Kubernetes node learns about wasmpod.
//!
//! This crate will hold the RuntimeClass manifests, the containerd CRI config
//! snippets that register the `wasmpod` handler (config versions 2 and 3) and
//! the node installer that patches a node's containerd config with
//! `toml_edit`. Outside Kubernetes nothing needs registering: containerd finds
//! `containerd-shim-wasmpod-v1` on its `PATH` for the runtime name
//! [`RUNTIME_TYPE`].

/// The containerd runtime type (`runtime_type` in CRI config) of the shim.
pub const RUNTIME_TYPE: &str = "io.containerd.wasmpod.v1";

/// The CRI runtime handler name, and the RuntimeClass `handler`.
pub const HANDLER: &str = "wasmpod";

/// The shim binary containerd resolves [`RUNTIME_TYPE`] to.
pub const SHIM_BINARY: &str = "containerd-shim-wasmpod-v1";

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
}
