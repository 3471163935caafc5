//! The runtime options containerd gives a task (`CreateTaskRequest.options`,
//! from the handler's `options` table in containerd's config), read for
//! what the shim acts on: the cgroup driver.
//!
//! containerd's CRI plugin decodes a handler's options into runc's
//! `containerd.runc.v1.Options` only for runc's own runtime type; for any
//! other (wasmpod's) it sends `runtimeoptions.v1.Options`: a `ConfigPath`
//! the operator set, or since containerd 1.7 the table itself as TOML in
//! `ConfigBody` when there is no path. containerd 1.6 sends no body, so on
//! 1.6 the options reach the shim only through a `ConfigPath` file (the
//! installer writes one). With none of them, the driver is cgroupfs, as
//! runc's shim defaults it.

use std::path::PathBuf;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedInputStream, Message};
use wasmpod_oci::plan::CgroupDriver;

/// `containerd.runc.v1.Options`, as typeurl names it.
pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
/// `runtimeoptions.v1.Options`.
pub const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

/// Why the runtime options cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("{type_url}: not a valid message: {source}")]
    Decode {
        type_url: String,
        #[source]
        source: containerd_shim::protos::protobuf::Error,
    },
    #[error("ConfigPath {}: {source}", path.display())]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: not valid TOML: {why}")]
    Toml { what: String, why: String },
    #[error("{what}: SystemdCgroup must be true or false")]
    SystemdCgroup { what: String },
}

/// What the shim takes from the runtime options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    pub cgroup_driver: CgroupDriver,
}

impl RuntimeOptions {
    /// How the spec is read under these options.
    pub fn plan(&self) -> wasmpod_oci::plan::PlanOptions {
        wasmpod_oci::plan::PlanOptions {
            cgroup_driver: self.cgroup_driver,
        }
    }

    /// Reads `any` (absent or empty: the defaults).
    pub fn parse(any: Option<&Any>) -> Result<RuntimeOptions, OptionsError> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
            return Ok(RuntimeOptions::default());
        };
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        let decode = |source| OptionsError::Decode {
            type_url: any.type_url.clone(),
            source,
        };
        match name {
            RUNC_OPTIONS => {
                let o = containerd_shim::protos::shim::oci::Options::parse_from_bytes(&any.value)
                    .map_err(decode)?;
                Ok(RuntimeOptions {
                    cgroup_driver: driver(o.systemd_cgroup),
                })
            }
            RUNTIME_OPTIONS => {
                let o = Generic::decode(&any.value).map_err(decode)?;
                if !o.config_path.is_empty() {
                    let path = PathBuf::from(&o.config_path);
                    let text = std::fs::read_to_string(&path).map_err(|source| {
                        OptionsError::ReadConfig {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    return from_toml(&text, &format!("ConfigPath {}", path.display()));
                }
                from_toml(&String::from_utf8_lossy(&o.config_body), "ConfigBody")
            }
            // another runtime's options: nothing wasmpod reads
            _ => Ok(RuntimeOptions::default()),
        }
    }
}

fn driver(systemd: bool) -> CgroupDriver {
    if systemd {
        CgroupDriver::Systemd
    } else {
        CgroupDriver::Cgroupfs
    }
}

/// The options table as TOML: `SystemdCgroup` (other keys are the
/// operator's and ignored, as runc's shim ignores unknown ones).
fn from_toml(text: &str, what: &str) -> Result<RuntimeOptions, OptionsError> {
    let doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| OptionsError::Toml {
                what: what.to_owned(),
                why: e.message().to_owned(),
            })?;
    let systemd = match doc.get("SystemdCgroup") {
        None => false,
        Some(item) => item.as_bool().ok_or_else(|| OptionsError::SystemdCgroup {
            what: what.to_owned(),
        })?,
    };
    Ok(RuntimeOptions {
        cgroup_driver: driver(systemd),
    })
}

/// `runtimeoptions.v1.Options`: `type_url` (1), `config_path` (2),
/// `config_body` (3, containerd 1.7+).
#[derive(Debug, Default, PartialEq, Eq)]
struct Generic {
    type_url: String,
    config_path: String,
    config_body: Vec<u8>,
}

impl Generic {
    fn decode(bytes: &[u8]) -> containerd_shim::protos::protobuf::Result<Generic> {
        let mut out = Generic::default();
        let mut input = CodedInputStream::from_bytes(bytes);
        while let Some(tag) = input.read_raw_tag_or_eof()? {
            match tag {
                0x0a => out.type_url = input.read_string()?,
                0x12 => out.config_path = input.read_string()?,
                0x1a => out.config_body = input.read_bytes()?,
                other => input.skip_field(wire_type(other)?)?,
            }
        }
        Ok(out)
    }
}

fn wire_type(
    tag: u32,
) -> containerd_shim::protos::protobuf::Result<containerd_shim::protos::protobuf::rt::WireType> {
    containerd_shim::protos::protobuf::rt::WireType::new(tag & 7).ok_or_else(|| {
        containerd_shim::protos::protobuf::Error::from(std::io::Error::other(format!(
            "bad wire type in tag {tag}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    /// `runtimeoptions.v1.Options` as containerd marshals it.
    fn generic(path: &str, body: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut field = |tag: u8, data: &[u8]| {
            if data.is_empty() {
                return;
            }
            out.push(tag);
            out.push(u8::try_from(data.len()).unwrap());
            out.extend_from_slice(data);
        };
        field(0x0a, b"");
        field(0x12, path.as_bytes());
        field(0x1a, body.as_bytes());
        out
    }

    #[test]
    fn no_options_mean_cgroupfs() {
        assert_eq!(
            RuntimeOptions::parse(None).unwrap().cgroup_driver,
            CgroupDriver::Cgroupfs
        );
        let empty = any("", Vec::new());
        assert_eq!(
            RuntimeOptions::parse(Some(&empty)).unwrap(),
            RuntimeOptions::default()
        );
        // containerd 1.6: the generic options with neither path nor body
        let bare = any(RUNTIME_OPTIONS, generic("", ""));
        assert_eq!(
            RuntimeOptions::parse(Some(&bare)).unwrap(),
            RuntimeOptions::default()
        );
    }

    #[test]
    fn runc_options_say_systemd() {
        let o = containerd_shim::protos::shim::oci::Options {
            systemd_cgroup: true,
            ..Default::default()
        };
        let a = any(RUNC_OPTIONS, o.write_to_bytes().unwrap());
        assert_eq!(
            RuntimeOptions::parse(Some(&a)).unwrap().cgroup_driver,
            CgroupDriver::Systemd
        );
    }

    #[test]
    fn config_body_and_config_path_are_read_as_toml() {
        let body = any(
            RUNTIME_OPTIONS,
            generic("", "SystemdCgroup = true\nOther = 1\n"),
        );
        assert_eq!(
            RuntimeOptions::parse(Some(&body)).unwrap().cgroup_driver,
            CgroupDriver::Systemd
        );
        let off = any(RUNTIME_OPTIONS, generic("", "SystemdCgroup = false\n"));
        assert_eq!(
            RuntimeOptions::parse(Some(&off)).unwrap().cgroup_driver,
            CgroupDriver::Cgroupfs
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wasmpod-runtime.toml");
        std::fs::write(&file, "# the installer's\nSystemdCgroup = true\n").unwrap();
        let path = any(RUNTIME_OPTIONS, generic(file.to_str().unwrap(), ""));
        assert_eq!(
            RuntimeOptions::parse(Some(&path)).unwrap().cgroup_driver,
            CgroupDriver::Systemd
        );
    }

    #[test]
    fn bad_options_name_what_is_wrong() {
        let missing = any(RUNTIME_OPTIONS, generic("/nonexistent/wasmpod.toml", ""));
        let e = RuntimeOptions::parse(Some(&missing))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ConfigPath /nonexistent/wasmpod.toml"), "{e}");
        let typed = any(RUNTIME_OPTIONS, generic("", "SystemdCgroup = \"yes\"\n"));
        let e = RuntimeOptions::parse(Some(&typed)).unwrap_err().to_string();
        assert!(e.contains("SystemdCgroup must be true or false"), "{e}");
        let broken = any(RUNTIME_OPTIONS, generic("", "SystemdCgroup = \n"));
        let e = RuntimeOptions::parse(Some(&broken))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ConfigBody: not valid TOML"), "{e}");
        let garbage = any(RUNC_OPTIONS, vec![0xff, 0xff]);
        assert!(RuntimeOptions::parse(Some(&garbage)).is_err());
    }
}
