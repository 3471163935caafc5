//! Asking containerd's CRI plugin whether it knows the `wasmpod` handler:
//! `Status` with `verbose`, whose `config` lists the runtimes containerd
//! loaded from its config (what kubelet's RuntimeClass resolves against).

use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::StatusRequest;
use tonic::transport::{Endpoint, Uri};

/// Whether the CRI service on `socket` has runtime handler `handler`.
/// `Err` when it cannot be asked (containerd down, not CRI, no answer).
pub async fn has_handler(socket: &Path, handler: &str) -> Result<bool, String> {
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://localhost")
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| format!("connect to {}: {e}", socket.display()))?;
    let status = RuntimeServiceClient::new(channel)
        .status(StatusRequest { verbose: true })
        .await
        .map_err(|e| format!("CRI Status on {}: {}", socket.display(), e.message()))?
        .into_inner();
    let Some(config) = status.info.get("config") else {
        return Err("CRI Status has no verbose config".into());
    };
    let config: serde_json::Value =
        serde_json::from_str(config).map_err(|e| format!("CRI Status config: {e}"))?;
    Ok(config
        .pointer(&format!("/containerd/runtimes/{handler}"))
        .is_some())
}
