//! A stand-in for the Kubernetes API server, on loopback, for the node
//! installer's tests: it keeps nodes and their labels, answers the two calls
//! the installer makes (a JSON merge patch of a node's labels, a list of
//! nodes by label selector) as the API server does, can fail the next
//! requests with a status of the test's choosing, and records every request
//! with the time it arrived.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// When it arrived.
    pub at: Instant,
    /// `PATCH`, `GET`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Authorization` header.
    pub auth: String,
    /// The body.
    pub body: String,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    nodes: BTreeMap<String, BTreeMap<String, String>>,
    requests: Vec<Request>,
    /// Statuses for the next requests, first first.
    failures: Vec<u16>,
}

/// The server; it runs until the test process ends (one thread, loopback).
#[derive(Clone)]
pub struct KubeApi {
    url: String,
    inner: Arc<Mutex<Inner>>,
}

impl KubeApi {
    /// Starts it with the nodes `nodes` (no labels), on this network
    /// namespace's loopback.
    pub fn start(nodes: &[&str]) -> Result<KubeApi> {
        Self::start_in(nodes, None)
    }

    /// Starts it on the loopback of the network namespace `netns` (a
    /// `/run/netns/NAME` path; its thread joins it, the rest of the test
    /// process stays where it is), or of this one.
    pub fn start_in(nodes: &[&str], netns: Option<&std::path::Path>) -> Result<KubeApi> {
        let (tx, rx) = std::sync::mpsc::channel();
        let netns = netns.map(std::path::Path::to_path_buf);
        let inner = Arc::new(Mutex::new(Inner {
            nodes: nodes
                .iter()
                .map(|n| ((*n).to_owned(), BTreeMap::new()))
                .collect(),
            ..Default::default()
        }));
        let shared = Arc::clone(&inner);
        std::thread::spawn(move || {
            let bound = (|| {
                if let Some(ns) = &netns {
                    let f = std::fs::File::open(ns)
                        .with_context(|| format!("open {}", ns.display()))?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("join {}", ns.display()))?;
                }
                let listener = TcpListener::bind("127.0.0.1:0").context("bind the API stand-in")?;
                let url = format!("http://{}", listener.local_addr()?);
                Ok::<_, anyhow::Error>((listener, url))
            })();
            let listener = match bound {
                Ok((listener, url)) => {
                    let _ = tx.send(Ok(url));
                    listener
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            for stream in listener.incoming().flatten() {
                let _ = serve(stream, &shared);
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(10))
            .context("the API stand-in did not start")??;
        Ok(KubeApi { url, inner })
    }

    /// Its base URL (`--api-server`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The labels of `node`.
    pub fn labels(&self, node: &str) -> BTreeMap<String, String> {
        self.lock().nodes.get(node).cloned().unwrap_or_default()
    }

    /// Sets or removes a label, as another client would.
    pub fn set_label(&self, node: &str, key: &str, value: Option<&str>) {
        let mut inner = self.lock();
        let labels = inner.nodes.entry(node.to_owned()).or_default();
        match value {
            Some(v) => labels.insert(key.to_owned(), v.to_owned()),
            None => labels.remove(key),
        };
    }

    /// Answers the next `n` requests with `status` and changes nothing.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.lock().failures.extend(std::iter::repeat_n(status, n));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Waits until `node` has `key` = `value` (`None`: no `key`).
    pub fn wait_label(
        &self,
        node: &str,
        key: &str,
        value: Option<&str>,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.labels(node).get(key).map(String::as_str) == value {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {node}: {key} is {:?} after {timeout:?}, expected {value:?}",
                self.labels(node).get(key)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn serve(stream: std::net::TcpStream, inner: &Mutex<Inner>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let (mut len, mut auth) = (0usize, String::new());
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("authorization") {
                auth = v.trim().to_owned();
            }
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let at = Instant::now();
    let (status, answer) = {
        let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
        let (status, answer) = if g.failures.is_empty() {
            handle(&mut g.nodes, &method, &path, &body)
        } else {
            let s = g.failures.remove(0);
            (
                s,
                format!(r#"{{"kind":"Status","code":{s},"message":"injected by the test"}}"#),
            )
        };
        g.requests.push(Request {
            at,
            method,
            path,
            auth,
            body,
            status,
        });
        (status, answer)
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )
}

fn node_json(name: &str, labels: &BTreeMap<String, String>) -> serde_json::Value {
    serde_json::json!({"kind": "Node", "metadata": {"name": name, "labels": labels}})
}

fn handle(
    nodes: &mut BTreeMap<String, BTreeMap<String, String>>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    match (method, path.strip_prefix("/api/v1/nodes")) {
        ("PATCH", Some(name)) if name.starts_with('/') => {
            let name = &name[1..];
            let Some(labels) = nodes.get_mut(name) else {
                return (
                    404,
                    format!(r#"{{"message":"nodes \"{name}\" not found"}}"#),
                );
            };
            let Ok(patch) = serde_json::from_str::<serde_json::Value>(body) else {
                return (400, r#"{"message":"not JSON"}"#.into());
            };
            if let Some(map) = patch["metadata"]["labels"].as_object() {
                // label values are strings; null removes one
                if map.values().any(|v| !(v.is_string() || v.is_null())) {
                    return (400, r#"{"message":"label values must be strings"}"#.into());
                }
                for (k, v) in map {
                    match v.as_str() {
                        Some(v) => labels.insert(k.clone(), v.to_owned()),
                        None => labels.remove(k),
                    };
                }
            }
            (200, node_json(name, labels).to_string())
        }
        ("GET", Some("")) => {
            let selector = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("labelSelector="))
                .map(|s| s.replace("%2F", "/").replace("%2f", "/"));
            let items: Vec<_> = nodes
                .iter()
                .filter(|(_, l)| selector.as_ref().is_none_or(|k| l.contains_key(k)))
                .map(|(n, l)| node_json(n, l))
                .collect();
            (
                200,
                serde_json::json!({"kind": "NodeList", "items": items}).to_string(),
            )
        }
        _ => (404, r#"{"message":"not served by the stand-in"}"#.into()),
    }
}
