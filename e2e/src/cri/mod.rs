//! The Kubernetes path: containerd's CRI plugin, driven as kubelet drives it.
//!
//! With [`ContainerdOptions::cri`](crate::ContainerdOptions::cri) the private
//! containerd loads its CRI plugin with:
//! - the `wasmpod` runtime handler registered by the very snippet operators
//!   merge into their config (`runtimeclass/containerd/config-v2.toml`, or
//!   `config-v3.toml` for containerd 2.x), and
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

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
pub use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

mod cni;
mod pod;

pub use cni::{CniNetwork, Slot};
pub use pod::*;

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

/// The CRI part of the private containerd's config, in config `version` 2
/// (containerd 1.x: one `io.containerd.grpc.v1.cri` plugin) or 3
/// (containerd 2.x: images, runtime and the gRPC service apart), with the
/// operators' snippet of that version verbatim.
pub fn cri_config(version: i64, cni_conf_dir: &Path, with_handler: bool) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let pause = q(PAUSE_IMAGE);
    let bin = q(CNI_BIN_DIR);
    let conf = q(&cni_conf_dir.to_string_lossy());
    let no_handler = "# (no wasmpod handler: the node installer adds it)";
    if version >= 3 {
        return format!(
            r#"[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = {pause}
[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{bin}]
    conf_dir = {conf}
    max_conf_num = 1
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

# --- runtimeclass/containerd/config-v3.toml, verbatim but for runtime_path ---
{snippet}
"#,
            snippet = if with_handler {
                // the shim under test, where the snippet names the default
                wasmpod_runtimeclass::CONTAINERD_V3_SNIPPET.replace(
                    wasmpod_runtimeclass::DEFAULT_SHIM_PATH,
                    &crate::shim_path()
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| wasmpod_runtimeclass::DEFAULT_SHIM_PATH.to_owned()),
                )
            } else {
                no_handler.to_owned()
            },
        );
    }
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
        snippet = if with_handler {
            wasmpod_runtimeclass::CONTAINERD_V2_SNIPPET
        } else {
            no_handler
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

    /// containerd's verbose `ContainerStatus` info: the container's OCI
    /// spec as containerd generated it (`runtimeSpec`), its pid, ...
    pub fn container_info(&self, id: &str) -> Result<serde_json::Value> {
        let req = api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        };
        let resp = self.call("ContainerStatus", |mut rt, _| async move {
            rt.container_status(req).await
        })?;
        let info = resp
            .info
            .get("info")
            .ok_or_else(|| anyhow!("CRI ContainerStatus of {id}: no verbose info"))?;
        serde_json::from_str(info)
            .with_context(|| format!("CRI ContainerStatus of {id}: verbose info is not JSON"))
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

    /// `PodSandboxStats` (what kubelet's `/stats/summary` reads for a pod).
    pub fn pod_sandbox_stats(&self, id: &str) -> Result<api::PodSandboxStats> {
        let req = api::PodSandboxStatsRequest {
            pod_sandbox_id: id.to_string(),
        };
        let resp = self.call("PodSandboxStats", |mut rt, _| async move {
            rt.pod_sandbox_stats(req).await
        })?;
        resp.stats
            .ok_or_else(|| anyhow!("CRI PodSandboxStats of {id}: no stats in the answer"))
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

    /// How many containers `ListContainers` reports running, in any sandbox.
    pub fn list_running_containers(&self) -> Result<usize> {
        let req = api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                state: Some(api::ContainerStateValue {
                    state: api::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        };
        let resp = self.call("ListContainers", |mut rt, _| async move {
            rt.list_containers(req).await
        })?;
        Ok(resp.containers.len())
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
