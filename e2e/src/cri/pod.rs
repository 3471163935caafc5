//! A pod as kubelet runs one: its sandbox, its containers and their
//! configs, its logs, and its teardown (StopPodSandbox, RemovePodSandbox,
//! then the pod's cgroup).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use super::{api, Cri, POD_CGROUP_ROOT};
use crate::Containerd;

/// An image spec for `reference`.
pub fn image_spec(reference: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: reference.to_string(),
        ..Default::default()
    }
}

/// The namespace options kubelet sends for a pod and for each of its
/// containers: the pod's network and IPC namespaces, and a PID namespace per
/// container unless the pod sets `shareProcessNamespace: true`.
pub fn namespace_options(share_process_namespace: bool) -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Pod as i32,
        pid: if share_process_namespace {
            api::NamespaceMode::Pod as i32
        } else {
            api::NamespaceMode::Container as i32
        },
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// What kubelet sends for a pod with `hostUsers: false` whose 65536 ids
/// start at `host` on the node.
fn user_namespace(host: u32) -> api::UserNamespace {
    let map = api::IdMapping {
        host_id: host,
        container_id: 0,
        length: 65536,
    };
    api::UserNamespace {
        mode: api::NamespaceMode::Pod as i32,
        uids: vec![map],
        gids: vec![map],
    }
}

/// `config` of a pod with `hostUsers: false`, its ids from `host` up.
pub fn host_users_false(mut config: api::PodSandboxConfig, host: u32) -> api::PodSandboxConfig {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default)
        .userns_options = Some(user_namespace(host));
    config
}

/// `config` of a container of such a pod.
pub fn in_host_users_false(mut config: api::ContainerConfig, host: u32) -> api::ContainerConfig {
    security_context(&mut config)
        .namespace_options
        .get_or_insert_with(Default::default)
        .userns_options = Some(user_namespace(host));
    config
}

/// `config` for a pod with `shareProcessNamespace: true`.
pub fn with_shared_pids(mut config: api::ContainerConfig) -> api::ContainerConfig {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(namespace_options(true));
    config
}

/// A container config as kubelet would send it for a container `name` of
/// `image` with `command` (the image's entrypoint when empty) and `args`;
/// its CRI log goes to `<pod log dir>/<name>.log`.
pub fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    args: &[&str],
) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: command.iter().map(|s| s.to_string()).collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options(false)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container's security context, made if it has none.
pub fn security_context(
    config: &mut api::ContainerConfig,
) -> &mut api::LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The paths kubelet masks in every container (its defaults for
/// `procMount: Default`).
pub const KUBELET_MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// The paths kubelet makes read-only in every container.
pub const KUBELET_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// `config` as kubelet sends a container of a PodSecurity-"restricted" pod
/// running as `uid`:`uid` (`runAsNonRoot`, `allowPrivilegeEscalation:
/// false`, `capabilities.drop: [ALL]`, `seccompProfile: RuntimeDefault`),
/// with kubelet's masked and read-only paths.
pub fn restricted(mut config: api::ContainerConfig, uid: i64) -> api::ContainerConfig {
    let sc = security_context(&mut config);
    sc.run_as_user = Some(api::Int64Value { value: uid });
    sc.run_as_group = Some(api::Int64Value { value: uid });
    sc.no_new_privs = true;
    sc.capabilities = Some(api::Capability {
        drop_capabilities: vec!["ALL".into()],
        ..Default::default()
    });
    sc.seccomp = Some(api::SecurityProfile {
        profile_type: api::security_profile::ProfileType::RuntimeDefault as i32,
        ..Default::default()
    });
    sc.masked_paths = KUBELET_MASKED_PATHS.map(String::from).to_vec();
    sc.readonly_paths = KUBELET_READONLY_PATHS.map(String::from).to_vec();
    config
}

/// `config` with `memory_limit_in_bytes` set (what kubelet sends for
/// `resources.limits.memory`).
pub fn with_memory_limit(mut config: api::ContainerConfig, bytes: i64) -> api::ContainerConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    linux
        .resources
        .get_or_insert_with(Default::default)
        .memory_limit_in_bytes = bytes;
    config
}

/// A running pod sandbox of a harness' containerd and the containers created
/// in it. Drop does not tear it down: call [`Pod::remove`] (tests check
/// leftovers after it).
pub struct Pod<'a> {
    cd: &'a Containerd,
    cri: &'a Cri,
    /// The sandbox id.
    pub id: String,
    /// The config it was created with.
    pub config: api::PodSandboxConfig,
    containers: BTreeMap<String, String>,
}

impl std::fmt::Debug for Pod<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("id", &self.id)
            .field("containers", &self.containers)
            .finish()
    }
}

impl<'a> Pod<'a> {
    /// The sandbox config kubelet would send for a pod `name` of namespace
    /// `wasmpod-e2e`: a unique uid, logs under `T/pods/<uid>`, cgroup parent
    /// `/wasmpod-e2e/pod<uid>` (cgroupfs driver), the pod's own network, a
    /// PID namespace per container (see [`Pod::share_process_namespace`]).
    pub fn config(cd: &Containerd, name: &str) -> api::PodSandboxConfig {
        let uid = cd.unique_id("uid");
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.to_string(),
                uid: uid.clone(),
                namespace: "wasmpod-e2e".to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: cd
                .tempdir()
                .join("pods")
                .join(&uid)
                .to_string_lossy()
                .into_owned(),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: format!("{POD_CGROUP_ROOT}/pod{uid}"),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespace_options(false)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `config` with `shareProcessNamespace: true`: one PID namespace, held
    /// by the sandbox, for all containers (which need [`with_shared_pids`]).
    pub fn share_process_namespace(mut config: api::PodSandboxConfig) -> api::PodSandboxConfig {
        config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options = Some(namespace_options(true));
        config
    }

    /// The pid of the sandbox's (pause) process, from containerd's verbose
    /// sandbox status.
    pub fn sandbox_pid(&self) -> Result<i32> {
        let status = self.cri.pod_sandbox_status(&self.id)?;
        let info = status
            .info
            .get("info")
            .ok_or_else(|| anyhow!("sandbox {}: no verbose info", self.id))?;
        let info: serde_json::Value = serde_json::from_str(info)
            .with_context(|| format!("sandbox {}: verbose info is not JSON", self.id))?;
        info["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow!("sandbox {}: no pid in {info}", self.id))
    }

    /// `RunPodSandbox` of `config` with runtime handler `handler`.
    pub fn run(
        cd: &'a Containerd,
        cri: &'a Cri,
        config: api::PodSandboxConfig,
        handler: &str,
    ) -> Result<Pod<'a>> {
        if let Some(m) = &config.metadata {
            cd.track_container_id(&m.uid);
        }
        if !config.log_directory.is_empty() {
            fs::create_dir_all(&config.log_directory)
                .with_context(|| format!("failed to create {}", config.log_directory))?;
        }
        let id = cri.run_pod_sandbox(&config, handler)?;
        cd.track_container_id(&id);
        let pod = Pod {
            cd,
            cri,
            id,
            config,
            containers: BTreeMap::new(),
        };
        if let Some(netns) = pod.netns_path()? {
            cd.track_netns(&netns);
        }
        Ok(pod)
    }

    /// The pod's network namespace file, from containerd's verbose sandbox
    /// status (`None` for a host-network pod).
    pub fn netns_path(&self) -> Result<Option<PathBuf>> {
        let status = self.cri.pod_sandbox_status(&self.id)?;
        let Some(info) = status.info.get("info") else {
            return Ok(None);
        };
        let info: serde_json::Value = serde_json::from_str(info)
            .with_context(|| format!("sandbox {}: verbose info is not JSON", self.id))?;
        let namespaces = info
            .pointer("/runtimeSpec/linux/namespaces")
            .and_then(|n| n.as_array())
            .cloned()
            .unwrap_or_default();
        Ok(namespaces
            .iter()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from))
    }

    /// The pod's IP on its `eth0`.
    pub fn ip(&self) -> Result<String> {
        let status = self.cri.pod_sandbox_status(&self.id)?;
        status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| anyhow!("sandbox {} has no IP", self.id))
    }

    /// `CreateContainer` of `config` in this pod; returns its id.
    pub fn create(&mut self, config: &api::ContainerConfig) -> Result<String> {
        let id = self.cri.create_container(&self.id, config, &self.config)?;
        self.cd.track_container_id(&id);
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        self.containers.insert(name, id.clone());
        Ok(id)
    }

    /// `CreateContainer` and `StartContainer`; returns the container id.
    pub fn start(&mut self, config: &api::ContainerConfig) -> Result<String> {
        let id = self.create(config)?;
        self.cri.start_container(&id)?;
        Ok(id)
    }

    /// The CRI log file of the container created from `config`.
    pub fn log_path(&self, config: &api::ContainerConfig) -> PathBuf {
        Path::new(&self.config.log_directory).join(&config.log_path)
    }

    /// The container lines of a CRI log file (`<time> <stream> <P|F>
    /// <text>`), reassembled: `(stream, line)` pairs.
    pub fn log_lines(&self, config: &api::ContainerConfig) -> Result<Vec<(String, String)>> {
        let path = self.log_path(config);
        let text = fs::read_to_string(&path)
            .with_context(|| format!("failed to read CRI log {}", path.display()))?;
        Ok(parse_cri_log(&text))
    }

    /// The pod's cgroup parent.
    pub fn cgroup_parent(&self) -> String {
        self.config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default()
    }

    /// Tears the pod down as kubelet does: StopPodSandbox (which stops every
    /// container), RemovePodSandbox (which removes them), then removes the
    /// pod's cgroup in every controller, as kubelet's pod cgroup manager.
    pub fn remove(self) -> Result<()> {
        self.cri.stop_pod_sandbox(&self.id)?;
        self.cri.remove_pod_sandbox(&self.id)?;
        let parent = self.cgroup_parent();
        if !parent.is_empty() {
            remove_pod_cgroup(&parent)?;
        }
        Ok(())
    }
}

/// Removes the cgroupfs directory `parent` (relative to each controller),
/// waiting up to 5 s for it to empty.
pub fn remove_pod_cgroup(parent: &str) -> Result<()> {
    let rel = parent.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs: Vec<PathBuf> = vec![root.join(rel)];
    if let Ok(ctls) = fs::read_dir(root) {
        dirs.extend(ctls.flatten().map(|c| c.path().join(rel)));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e)
                        .with_context(|| format!("failed to remove pod cgroup {}", dir.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(())
}

/// `(stream, line)` pairs of a CRI log (`<RFC3339 time> <stdout|stderr>
/// <P|F> <text>`); partial (`P`) records join the next ones of their stream.
pub fn parse_cri_log(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut partial: BTreeMap<String, String> = BTreeMap::new();
    for record in text.lines() {
        let mut parts = record.splitn(4, ' ');
        let (Some(_time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let content = parts.next().unwrap_or("");
        let acc = partial.entry(stream.to_string()).or_default();
        acc.push_str(content);
        if tag == "F" {
            out.push((stream.to_string(), std::mem::take(acc)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_records_reassemble() {
        let log = "2026-01-01T00:00:00.1Z stdout P hel\n\
                   2026-01-01T00:00:00.2Z stderr F oops\n\
                   2026-01-01T00:00:00.3Z stdout F lo\n\
                   2026-01-01T00:00:00.4Z stdout F \n";
        assert_eq!(
            parse_cri_log(log),
            vec![
                ("stderr".to_string(), "oops".to_string()),
                ("stdout".to_string(), "hello".to_string()),
                ("stdout".to_string(), String::new()),
            ]
        );
    }
}
