//! The bundle directory containerd gives each container, and what the shim
//! keeps in it: the contract between containerd, the shim server and the
//! one-shot `start` and `delete` actions (which run in the bundle with no
//! server to ask).

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// The container's OCI runtime spec, written by containerd.
pub const SPEC_FILE: &str = "config.json";

/// The directory the rootfs is mounted on.
pub const ROOTFS_DIR: &str = "rootfs";

/// The address of the server serving the container, written by `start`.
pub const ADDRESS_FILE: &str = "address";

/// The pid of the container's process, for `delete` after a server crash.
pub const PID_FILE: &str = "init.pid";

/// A Wasm artifact's layer, written out of containerd's content store for
/// the runner to read (and removed once it has).
pub const LAYER_FILE: &str = "wasmpod-layer.wasm";

/// Annotation CRI puts on every container of a pod: containers sharing it
/// are served by one shim process.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// Annotation CRI puts on the containers of a pod (`sandbox` for the pause
/// container, `container` for the others). Where it is present, a container
/// whose entry point is not WebAssembly runs through runc.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// Reads the spec of container `id` from `bundle`. Where the typed spec
/// refuses a value, the error names the field that holds it.
pub fn load_spec(id: &str, bundle: &Path) -> Result<oci_spec::runtime::Spec> {
    let path = bundle.join(SPEC_FILE);
    oci_spec::runtime::Spec::load(&path).map_err(|source| Error::Spec {
        id: id.to_owned(),
        field: std::fs::read(&path)
            .ok()
            .and_then(|bytes| wasmpod_oci::spec_check::explain(&bytes)),
        path,
        source,
    })
}

/// The server group of a container: its pod's sandbox id (CRI's annotation
/// in the spec `spec`), else its own id.
pub fn grouping(spec: &[u8], id: &str) -> String {
    serde_json::from_slice::<Annotations>(spec)
        .ok()
        .and_then(|spec| spec.annotations?.remove(SANDBOX_ID_ANNOTATION))
        .unwrap_or_else(|| id.to_owned())
}

/// The part of an OCI spec `start` reads.
#[derive(serde::Deserialize)]
struct Annotations {
    /// Absent or `null` when the spec has none.
    annotations: Option<HashMap<String, String>>,
}

#[cfg(test)]
mod tests {
    use super::grouping;

    #[test]
    fn containers_of_a_pod_share_its_sandbox_group() {
        let pod = br#"{"ociVersion":"1.1.0","process":{"args":["/app.wasm"]},
            "annotations":{"io.kubernetes.cri.sandbox-id":"sandbox1","other":"x"}}"#;
        assert_eq!(grouping(pod, "c1"), "sandbox1");
        for alone in [
            &br#"{"ociVersion":"1.1.0"}"#[..],
            br#"{"ociVersion":"1.1.0","annotations":null}"#,
            br#"{"ociVersion":"1.1.0","annotations":{"other":"x"}}"#,
            b"",
            b"not json",
        ] {
            assert_eq!(
                grouping(alone, "c1"),
                "c1",
                "{}",
                String::from_utf8_lossy(alone)
            );
        }
    }
}
