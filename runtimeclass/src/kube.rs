//! The two Kubernetes API calls the installer makes, with the pod's service
//! account: labelling (and unlabelling) its own node with a JSON merge patch,
//! and listing the nodes that still carry the label (the uninstall waiter).
//! Nothing else is needed, which is what the chart's RBAC grants.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the service account's credentials are mounted in a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach the API server.
#[derive(Debug, Clone)]
pub struct ApiServer {
    /// Base URL, e.g. `https://10.96.0.1:443`.
    pub url: String,
    /// Bearer token.
    pub token: String,
    /// CA bundle (PEM) for `https` URLs; the system roots when `None`.
    pub ca_pem: Option<Vec<u8>>,
}

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No in-cluster configuration and none given.
    #[error("no Kubernetes API configuration: {0}")]
    Config(String),
    /// The request failed before an answer.
    #[error("{what}: {reason}")]
    Transport { what: String, reason: String },
    /// The API server answered with an error status.
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
}

impl ApiServer {
    /// The in-cluster configuration (service host/port environment and the
    /// mounted service account), with `url`, `token_file` and `ca_file`
    /// overriding its parts.
    pub fn discover(
        url: Option<&str>,
        token_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<ApiServer, KubeError> {
        let sa = PathBuf::from(SERVICE_ACCOUNT_DIR);
        let url = match url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                    KubeError::Config(
                        "KUBERNETES_SERVICE_HOST is not set (not in a pod?); pass --api-server"
                            .into(),
                    )
                })?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        let token_file = token_file.map_or_else(|| sa.join("token"), Path::to_path_buf);
        let token = std::fs::read_to_string(&token_file)
            .map_err(|e| KubeError::Config(format!("token {}: {e}", token_file.display())))?
            .trim()
            .to_owned();
        let ca_file = ca_file.map_or_else(|| sa.join("ca.crt"), Path::to_path_buf);
        let ca_pem = if url.starts_with("https://") {
            Some(
                std::fs::read(&ca_file)
                    .map_err(|e| KubeError::Config(format!("CA {}: {e}", ca_file.display())))?,
            )
        } else {
            None
        };
        Ok(ApiServer { url, token, ca_pem })
    }

    fn client(&self) -> Result<reqwest::Client, KubeError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(10));
        if let Some(pem) = &self.ca_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| KubeError::Config(format!("CA bundle: {e}")))?;
            b = b.tls_certs_only([cert]);
        }
        b.build()
            .map_err(|e| KubeError::Config(format!("HTTP client: {e}")))
    }

    async fn send(&self, what: String, req: reqwest::RequestBuilder) -> Result<String, KubeError> {
        let resp = req
            .bearer_auth(&self.token)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| KubeError::Transport {
                what: what.clone(),
                reason: error_chain(&e),
            })?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(KubeError::Status {
                what,
                status,
                body: body.chars().take(500).collect(),
            });
        }
        Ok(body)
    }

    /// Sets (`Some`) or removes (`None`) `label` on node `node`.
    pub async fn label_node(
        &self,
        node: &str,
        label: &str,
        value: Option<&str>,
    ) -> Result<(), KubeError> {
        self.patch_labels(node, &[(label, value)]).await
    }

    /// Sets (`Some`) or removes (`None`) each label on node `node`, in one
    /// JSON merge patch (so they change together).
    pub async fn patch_labels(
        &self,
        node: &str,
        labels: &[(&str, Option<&str>)],
    ) -> Result<(), KubeError> {
        let map: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    v.map_or(serde_json::Value::Null, Into::into),
                )
            })
            .collect();
        let body = serde_json::json!({"metadata": {"labels": map}});
        let client = self.client()?;
        let url = format!("{}/api/v1/nodes/{node}", self.url);
        let req = client
            .patch(url)
            .header("Content-Type", "application/merge-patch+json")
            .body(body.to_string());
        let what = labels
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("label node {node} {k}={v}"),
                None => format!("remove label {k} from node {node}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        self.send(what, req).await.map(|_| ())
    }

    /// Names of the nodes carrying `label` (any value).
    pub async fn nodes_with_label(&self, label: &str) -> Result<Vec<String>, KubeError> {
        Ok(self
            .nodes_labelled(label)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// The nodes carrying `label`, with its value.
    pub async fn nodes_labelled(&self, label: &str) -> Result<Vec<(String, String)>, KubeError> {
        let client = self.client()?;
        let url = format!("{}/api/v1/nodes", self.url);
        let req = client.get(url).query(&[("labelSelector", label)]);
        let body = self
            .send(format!("list nodes with label {label}"), req)
            .await?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| KubeError::Transport {
                what: "list nodes".into(),
                reason: format!("answer is not JSON: {e}"),
            })?;
        Ok(v["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|n| {
                        let meta = &n["metadata"];
                        let name = meta["name"].as_str()?.to_owned();
                        let value = meta["labels"][label].as_str().unwrap_or("").to_owned();
                        Some((name, value))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl KubeError {
    /// Whether trying again may succeed: no answer, or an answer that says
    /// "later" (429, a conflict, a 5xx). A 4xx such as 403 will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            KubeError::Config(_) => false,
            KubeError::Transport { .. } => true,
            KubeError::Status { status, .. } => *status == 429 || *status == 409 || *status >= 500,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// One HTTP exchange seen by the test server.
    #[derive(Debug)]
    struct Seen {
        request_line: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Serves one request with `status` and `body`, returning what it saw.
    fn serve_once(status: u16, body: &'static str) -> (String, std::thread::JoinHandle<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            reader.read_line(&mut request_line).expect("request line");
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("header");
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (k, v) = line.split_once(':').expect("header colon");
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().expect("length"));
            let mut request_body = vec![0; len];
            reader.read_exact(&mut request_body).expect("body");
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .expect("respond");
            Seen {
                request_line: request_line.trim_end().to_owned(),
                headers,
                body: String::from_utf8(request_body).expect("utf8"),
            }
        });
        (url, handle)
    }

    fn api(url: String) -> ApiServer {
        ApiServer {
            url,
            token: "tok-123".into(),
            ca_pem: None,
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn labels_its_node_with_an_exact_merge_patch() {
        let (url, seen) = serve_once(200, "{}");
        rt().block_on(api(url).label_node("node-a", "wasmpod.io/ready", Some("true")))
            .expect("label");
        let seen = seen.join().expect("server");
        assert_eq!(seen.request_line, "PATCH /api/v1/nodes/node-a HTTP/1.1");
        assert_eq!(seen.header("authorization"), Some("Bearer tok-123"));
        assert_eq!(
            seen.header("content-type"),
            Some("application/merge-patch+json")
        );
        let body: serde_json::Value = serde_json::from_str(&seen.body).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"metadata": {"labels": {"wasmpod.io/ready": "true"}}})
        );
    }

    #[test]
    fn unlabels_with_a_null_value() {
        let (url, seen) = serve_once(200, "{}");
        rt().block_on(api(url).label_node("node-a", "wasmpod.io/ready", None))
            .expect("unlabel");
        let seen = seen.join().expect("server");
        let body: serde_json::Value = serde_json::from_str(&seen.body).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"metadata": {"labels": {"wasmpod.io/ready": null}}})
        );
    }

    #[test]
    fn lists_labelled_nodes_and_reports_http_errors() {
        let (url, seen) = serve_once(
            200,
            r#"{"kind":"NodeList","items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]}"#,
        );
        let nodes = rt()
            .block_on(api(url).nodes_with_label("wasmpod.io/ready"))
            .expect("list");
        assert_eq!(nodes, ["a", "b"]);
        let seen = seen.join().expect("server");
        assert_eq!(
            seen.request_line,
            "GET /api/v1/nodes?labelSelector=wasmpod.io%2Fready HTTP/1.1"
        );

        let (url, seen) = serve_once(403, r#"{"message":"nodes \"a\" is forbidden"}"#);
        let err = rt()
            .block_on(api(url).label_node("a", "wasmpod.io/ready", Some("true")))
            .unwrap_err()
            .to_string();
        seen.join().expect("server");
        assert!(
            err.contains("HTTP 403") && err.contains("forbidden") && err.contains("node a"),
            "{err}"
        );
    }

    #[test]
    fn unreachable_api_server_is_a_clear_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let err = rt()
            .block_on(api(format!("http://127.0.0.1:{port}")).label_node("a", "l", Some("v")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("label node a") && err.to_lowercase().contains("connect"),
            "{err}"
        );
    }
}
