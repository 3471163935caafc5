//! Asking containerd's CRI plugin about itself: whether it knows the
//! `wasmpod` handler (`Status` with `verbose`, whose `config` lists the
//! runtimes containerd loaded from its config, what kubelet's RuntimeClass
//! resolves against), and its version (`Version`, which decides the config
//! version a new config gets).

use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{StatusRequest, VersionRequest};
use tonic::transport::{Channel, Endpoint, Uri};

async fn connect(socket: &Path) -> Result<RuntimeServiceClient<Channel>, String> {
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
    Ok(RuntimeServiceClient::new(channel))
}

/// Whether the CRI service on `socket` has runtime handler `handler`.
/// `Err` when it cannot be asked (containerd down, not CRI, no answer).
pub async fn has_handler(socket: &Path, handler: &str) -> Result<bool, String> {
    let status = connect(socket)
        .await?
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

/// The version of the runtime serving CRI on `socket` (containerd's, e.g.
/// `v1.6.20` or `2.1.9`).
pub async fn runtime_version(socket: &Path) -> Result<String, String> {
    Ok(connect(socket)
        .await?
        .version(VersionRequest {
            version: String::new(),
        })
        .await
        .map_err(|e| format!("CRI Version on {}: {}", socket.display(), e.message()))?
        .into_inner()
        .runtime_version)
}

/// The containerd config version a new config gets for containerd
/// `version`: 3 from containerd 2.0 on, else 2.
pub fn config_version_for(version: &str) -> i64 {
    let major = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(1);
    if major >= 2 {
        3
    } else {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_versions_by_containerd_version() {
        assert_eq!(config_version_for("v1.6.20"), 2);
        assert_eq!(config_version_for("1.7.24~ds1"), 2);
        assert_eq!(config_version_for("2.1.9"), 3);
        assert_eq!(config_version_for("v2.0.0-rc.1"), 3);
        assert_eq!(config_version_for("unknown"), 2);
    }
}
