//! The one-shot actions containerd runs the shim binary for, in the bundle
//! directory: `start` ([`start`]: the address of the server of a container's
//! group, forking one if needed), `delete` ([`delete`]: clean up after a
//! server that died) and `-info` (describe the runtime).
//!
//! All three are plain blocking code without an async runtime: containerd
//! waits for `start` when creating a task and for `delete` after every shim
//! exits, so their start-up is part of each container's start and removal.

use std::io::Write;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};

use crate::RUNTIME_ID;

pub mod delete;
pub mod features;
pub mod start;

pub use delete::delete_action;
pub use start::start_action;

/// The `-info` action (containerd 2.x): the runtime's name, version and
/// OCI features (what `runc features` prints, in the same `Any`), which
/// containerd reads before it creates a task whose mounts are idmapped.
pub fn info_action() -> anyhow::Result<()> {
    let info = RuntimeInfo {
        name: RUNTIME_ID.to_owned(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        }),
        features: MessageField::some(Any {
            type_url: features::TYPE_URL.to_owned(),
            value: serde_json::to_vec(&features::features())?,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&info.write_to_bytes()?)?;
    stdout.flush()?;
    Ok(())
}
