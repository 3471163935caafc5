//! The Kubernetes path: containerd's CRI plugin, driven as kubelet drives it.
//!
//! With [`ContainerdOptions::cri`](crate::ContainerdOptions::cri) the private
//! containerd loads its CRI plugin with:
//! - the `wasmpod` runtime handler registered by the very snippet operators
//!   merge into their config (`runtimeclass/containerd/config-v2.toml`), and
//!   `runc` as the default handler;
//! - CNI networking from Debian's `containernetworking-plugins`: a bridge of
//!   its own (`wpe<N>`, subnet `10.213.<N>.0/24`, host side `.1`) with
//!   host-local IPAM whose state stays in `T/cni`, and loopback;
//! - a pause image built here ([`crate::images::pause_image`]), imported
//!   before the first sandbox, so nothing is ever pulled;
//! - `restrict_oom_score_adj`, as root lacks `CAP_SYS_RESOURCE` here.
//!
//! [`Cri`] is a blocking CRI v1 client over containerd's unix socket; every
//! call is bounded in time. [`Pod`] runs a sandbox and its containers and
//! tears them down as kubelet does (StopPodSandbox, RemovePodSandbox, then
//! the pod's cgroup), recording what the leftovers check must look at: the
//! pod's network namespace, its cgroup parent and its container ids.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
pub use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Containerd;

/// The namespace containerd's CRI plugin keeps its images and containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The runtime handler wasmpod registers (the RuntimeClass `handler`).
pub const HANDLER: &str = wasmpod_runtimeclass::HANDLER;

/// The reference of the locally built pause image.
pub const PAUSE_IMAGE: &str = "docker.io/wasmpod-e2e/pause:e2e";

/// Top cgroup (under each controller) of the pods the tests run, as
/// `/kubepods` is kubelet's.
pub const POD_CGROUP_ROOT: &str = "/wasmpod-e2e";

/// Where the CNI plugins are (Debian's `containernetworking-plugins`).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// How long one CRI call may take by default.
pub const CRI_TIMEOUT: Duration = Duration::from_secs(60);

/// Pod networks claimed by harnesses of this process (the `N` of `wpe<N>`).
static CLAIMED: Mutex<BTreeSet<u8>> = Mutex::new(BTreeSet::new());

/// The CNI bridge network of one harness.
#[derive(Debug)]
pub struct CniNetwork {
    index: u8,
}

impl CniNetwork {
    /// Claims a network no other harness of this process uses and no host
    /// interface or route of this machine overlaps.
    pub fn claim() -> Result<CniNetwork> {
        let routes = fs::read_to_string("/proc/net/route").unwrap_or_default();
        let mut claimed = CLAIMED
            .lock()
            .map_err(|_| anyhow!("network lock poisoned"))?;
        let start = (std::process::id() % 200) as u8;
        for i in 0..200u8 {
            let index = 20 + (start.wrapping_add(i) % 200);
            if claimed.contains(&index)
                || Path::new("/sys/class/net")
                    .join(bridge_name(index))
                    .exists()
                || routes_overlap(&routes, index)
            {
                continue;
            }
            claimed.insert(index);
            return Ok(CniNetwork { index });
        }
        bail!("no free pod network 10.213.N.0/24 left for the e2e harness")
    }

    /// The bridge device (`wpe<N>`).
    pub fn bridge(&self) -> String {
        bridge_name(self.index)
    }

    /// The pod subnet (`10.213.<N>.0/24`).
    pub fn subnet(&self) -> String {
        format!("10.213.{}.0/24", self.index)
    }

    /// The host's address on the bridge, the pods' gateway.
    pub fn gateway(&self) -> String {
        format!("10.213.{}.1", self.index)
    }

    /// The network's name in CNI.
    pub fn name(&self) -> String {
        format!("wasmpod-e2e-{}", self.index)
    }

    /// The CNI configuration list: bridge with host-local IPAM (state in
    /// `ipam_dir`); no masquerading, no port mapping, nothing in iptables.
    pub fn conflist(&self, ipam_dir: &Path) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name(),
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge(),
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": self.subnet(), "gateway": self.gateway() }]],
                    "dataDir": ipam_dir,
                }
            }]
        })
        .to_string()
    }

    /// Veth ports still attached to the bridge (each is a pod's network
    /// left behind).
    pub fn ports(&self) -> Vec<String> {
        let dir = Path::new("/sys/class/net").join(self.bridge()).join("brif");
        let mut out: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

impl Drop for CniNetwork {
    fn drop(&mut self) {
        let bridge = self.bridge();
        if Path::new("/sys/class/net").join(&bridge).exists() {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &bridge])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        if let Ok(mut claimed) = CLAIMED.lock() {
            claimed.remove(&self.index);
        }
    }
}

/// The bridge device of network `index`.
fn bridge_name(index: u8) -> String {
    format!("wpe{index}")
}

/// Whether a route of the host (`/proc/net/route`) covers or lies inside
/// `10.213.<index>.0/24`.
fn routes_overlap(routes: &str, index: u8) -> bool {
    let ours = u32::from_be_bytes([10, 213, index, 0]);
    let our_mask = 0xffff_ff00u32;
    routes.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dst), Some(mask)) = (f.get(1), f.get(7)) else {
            return false;
        };
        // The kernel prints them as little-endian hex words.
        let (Ok(dst), Ok(mask)) = (
            u32::from_str_radix(dst, 16).map(u32::from_be),
            u32::from_str_radix(mask, 16).map(u32::from_be),
        ) else {
            return false;
        };
        if mask == 0 {
            return false; // the default route
        }
        let common = mask & our_mask;
        dst & common == ours & common
    })
}

/// The CRI part of the private containerd's config (version 2).
pub fn cri_config(cni_conf_dir: &Path, with_handler: bool) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {pause}
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {bin}
    conf_dir = {conf}
    max_conf_num = 1

# --- runtimeclass/containerd/config-v2.toml, verbatim ---
{snippet}
"#,
        pause = q(PAUSE_IMAGE),
        bin = q(CNI_BIN_DIR),
        conf = q(&cni_conf_dir.to_string_lossy()),
        snippet = if with_handler {
            wasmpod_runtimeclass::CONTAINERD_V2_SNIPPET
        } else {
            "# (no wasmpod handler: the node installer adds it)"
        },
    )
}

/// A CRI v1 client on containerd's socket. Blocking: each call runs on the
/// client's own single-threaded runtime, bounded by a timeout.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    timeout: Duration,
}

impl std::fmt::Debug for Cri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cri")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A failed CRI call: which call, and the gRPC status.
fn call_error(what: &str, status: tonic::Status) -> anyhow::Error {
    anyhow!(
        "CRI {what} failed: {:?}: {}",
        status.code(),
        status.message()
    )
}

impl Cri {
    /// Connects to the CRI service on the unix socket `socket`.
    pub fn connect(socket: &Path) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to build the CRI client's runtime")?;
        let path = socket.to_path_buf();
        // The URI is required but unused: every connection goes to `path`.
        let channel = rt
            .block_on(async move {
                Endpoint::try_from("http://localhost")?
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await
            })
            .with_context(|| format!("failed to connect to CRI at {}", socket.display()))?;
        Ok(Cri {
            rt,
            channel,
            timeout: CRI_TIMEOUT,
        })
    }

    /// Runs one call to completion, within the client's timeout.
    fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let rt = RuntimeServiceClient::new(self.channel.clone());
        let im = ImageServiceClient::new(self.channel.clone());
        let fut = f(rt, im);
        match self
            .rt
            .block_on(async { tokio::time::timeout(self.timeout, fut).await })
        {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(call_error(what, status)),
            Err(_) => bail!("CRI {what} did not answer within {:?}", self.timeout),
        }
    }

    /// `Version`: the runtime's name and version.
    pub fn version(&self) -> Result<api::VersionResponse> {
        self.call("Version", |mut rt, _| async move {
            rt.version(api::VersionRequest::default()).await
        })
    }

    /// `ImageStatus`: whether CRI knows the image `reference`.
    pub fn image_present(&self, reference: &str) -> Result<bool> {
        let req = api::ImageStatusRequest {
            image: Some(image_spec(reference)),
            verbose: false,
        };
        let resp = self.call("ImageStatus", |_, mut im| async move {
            im.image_status(req).await
        })?;
        Ok(resp.image.is_some())
    }

    /// `PullImage`, as kubelet pulls a pod's image; returns the image id.
    pub fn pull_image(&self, reference: &str) -> Result<String> {
        let req = api::PullImageRequest {
            image: Some(image_spec(reference)),
            ..Default::default()
        };
        let resp = self.call(
            "PullImage",
            |_, mut im| async move { im.pull_image(req).await },
        )?;
        Ok(resp.image_ref)
    }

    /// `RemoveImage`.
    pub fn remove_image(&self, reference: &str) -> Result<()> {
        let req = api::RemoveImageRequest {
            image: Some(image_spec(reference)),
        };
        self.call("RemoveImage", |_, mut im| async move {
            im.remove_image(req).await
        })?;
        Ok(())
    }

    /// `RunPodSandbox` with `handler`; returns the sandbox id.
    pub fn run_pod_sandbox(&self, config: &api::PodSandboxConfig, handler: &str) -> Result<String> {
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let resp = self.call("RunPodSandbox", |mut rt, _| async move {
            rt.run_pod_sandbox(req).await
        })?;
        Ok(resp.pod_sandbox_id)
    }

    /// `PodSandboxStatus` (verbose: with containerd's `info`).
    pub fn pod_sandbox_status(&self, id: &str) -> Result<api::PodSandboxStatusResponse> {
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        };
        self.call("PodSandboxStatus", |mut rt, _| async move {
            rt.pod_sandbox_status(req).await
        })
    }

    /// `StopPodSandbox`.
    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call("StopPodSandbox", |mut rt, _| async move {
            rt.stop_pod_sandbox(req).await
        })
        .map(drop)
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call("RemovePodSandbox", |mut rt, _| async move {
            rt.remove_pod_sandbox(req).await
        })
        .map(drop)
    }

    /// `CreateContainer` in sandbox `pod_id`; returns the container id.
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &api::ContainerConfig,
        sandbox_config: &api::PodSandboxConfig,
    ) -> Result<String> {
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox_config.clone()),
        };
        let resp = self.call("CreateContainer", |mut rt, _| async move {
            rt.create_container(req).await
        })?;
        Ok(resp.container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> Result<()> {
        let req = api::StartContainerRequest {
            container_id: id.to_string(),
        };
        self.call("StartContainer", |mut rt, _| async move {
            rt.start_container(req).await
        })
        .map(drop)
    }

    /// `ContainerStatus`.
    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatus> {
        let req = api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        let resp = self.call("ContainerStatus", |mut rt, _| async move {
            rt.container_status(req).await
        })?;
        resp.status
            .ok_or_else(|| anyhow!("CRI ContainerStatus of {id}: no status in the answer"))
    }

    /// `ContainerStats` (what `kubectl top` reads, through kubelet).
    pub fn container_stats(&self, id: &str) -> Result<api::ContainerStats> {
        let req = api::ContainerStatsRequest {
            container_id: id.to_string(),
        };
        let resp = self.call("ContainerStats", |mut rt, _| async move {
            rt.container_stats(req).await
        })?;
        resp.stats
            .ok_or_else(|| anyhow!("CRI ContainerStats of {id}: no stats in the answer"))
    }

    /// `StopContainer` with a grace period of `timeout_secs`; the call itself
    /// may take that long plus the kill.
    pub fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()> {
        let req = api::StopContainerRequest {
            container_id: id.to_string(),
            timeout: timeout_secs,
        };
        self.call("StopContainer", |mut rt, _| async move {
            rt.stop_container(req).await
        })
        .map(drop)
    }

    /// `UpdateContainerResources` (what kubelet sends for an in-place
    /// resize).
    pub fn update_container_resources(
        &self,
        id: &str,
        linux: api::LinuxContainerResources,
    ) -> Result<()> {
        let req = api::UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(linux),
            ..Default::default()
        };
        self.call("UpdateContainerResources", |mut rt, _| async move {
            rt.update_container_resources(req).await
        })
        .map(drop)
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        let req = api::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.call("RemoveContainer", |mut rt, _| async move {
            rt.remove_container(req).await
        })
        .map(drop)
    }

    /// `ExecSync` (what `kubectl exec` without a terminal amounts to, and
    /// what exec probes call).
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_secs: i64) -> Result<ExecResult> {
        let req = api::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
        };
        let resp = self.call(
            "ExecSync",
            |mut rt, _| async move { rt.exec_sync(req).await },
        )?;
        Ok(ExecResult {
            exit_code: resp.exit_code,
            stdout: String::from_utf8_lossy(&resp.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&resp.stderr).into_owned(),
        })
    }

    /// `ListContainers` of one sandbox.
    pub fn list_containers(&self, pod_id: &str) -> Result<Vec<api::Container>> {
        let req = api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                pod_sandbox_id: pod_id.to_string(),
                ..Default::default()
            }),
        };
        let resp = self.call("ListContainers", |mut rt, _| async move {
            rt.list_containers(req).await
        })?;
        Ok(resp.containers)
    }

    /// Polls `ContainerStatus` until the container has exited, or `timeout`
    /// passes; returns the last status.
    pub fn wait_exited(&self, id: &str, timeout: Duration) -> Result<api::ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(id)?;
            if status.state == api::ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("container {id} still not exited after {timeout:?}: {status:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What `ExecSync` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// The exec'd process' exit code.
    pub exit_code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

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

    #[test]
    fn route_overlap() {
        let routes = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                      eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n\
                      eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                      br0\t0000D50A\t00000000\t0001\t0\t0\t0\t0000FFFF\n";
        // 10.213.0.0/16 covers every 10.213.N.0/24
        assert!(routes_overlap(routes, 42));
        let routes: String = routes.lines().take(3).collect::<Vec<_>>().join("\n");
        assert!(!routes_overlap(&routes, 42));
    }

    #[test]
    fn conflist_is_a_bridge_with_private_ipam() {
        let net = CniNetwork { index: 77 };
        let v: serde_json::Value =
            serde_json::from_str(&net.conflist(Path::new("/t/ipam"))).unwrap();
        assert_eq!(v["plugins"][0]["bridge"], "wpe77");
        assert_eq!(v["plugins"][0]["ipam"]["dataDir"], "/t/ipam");
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.213.77.0/24"
        );
    }
}
