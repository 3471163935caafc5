//! The tests' HTTP/1.1 client: hyper over a TCP connection, one request per
//! connection, bounded in time.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;

/// `GET path` on `addr` with extra `headers`: (status, body).
pub fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, String)> {
    runtime()?.block_on(async {
        let resp = tokio::time::timeout(timeout, request(addr, path, headers))
            .await
            .map_err(|_| anyhow!("GET {path} from {addr}: no answer in {timeout:?}"))??;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(timeout, body(resp, path, addr))
            .await
            .map_err(|_| anyhow!("GET {path} from {addr}: body not done in {timeout:?}"))??;
        Ok((status, body))
    })
}

/// A request whose answer has begun: its status is known, its body may
/// still be coming.
pub struct InFlight {
    /// The response's status.
    pub status: u16,
    body: std::thread::JoinHandle<Result<String>>,
}

impl InFlight {
    /// Waits for the rest of the body.
    pub fn body(self) -> Result<String> {
        self.body
            .join()
            .map_err(|_| anyhow!("the HTTP client thread panicked"))?
    }
}

/// `GET path` on `addr`, returning as soon as the response's head has
/// arrived (so the server is known to be answering it); the body is read
/// on a thread of its own, within `timeout` in all.
pub fn get_in_flight(addr: SocketAddr, path: &str, timeout: Duration) -> Result<InFlight> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_owned();
    let body = std::thread::spawn(move || -> Result<String> {
        runtime()?.block_on(async {
            let deadline = tokio::time::Instant::now() + timeout;
            let resp = tokio::time::timeout_at(deadline, request(addr, &path, &[])).await;
            let resp = match resp {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
                Err(_) => {
                    let e = anyhow!("GET {path} from {addr}: no answer in {timeout:?}");
                    let _ = tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let _ = tx.send(Ok(resp.status().as_u16()));
            tokio::time::timeout_at(deadline, body(resp, &path, addr))
                .await
                .map_err(|_| anyhow!("GET {path} from {addr}: body not done in {timeout:?}"))?
        })
    });
    let status = rx
        .recv_timeout(timeout)
        .map_err(|_| anyhow!("GET from {addr}: no response head in {timeout:?}"))??;
    Ok(InFlight { status, body })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a client runtime")
}

async fn request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<hyper::Response<Incoming>> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {addr}"))?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONNECTION, "close");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new())?;
    sender
        .send_request(req)
        .await
        .with_context(|| format!("GET {path} from {addr}"))
}

async fn body(resp: hyper::Response<Incoming>, path: &str, addr: SocketAddr) -> Result<String> {
    let bytes = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("read the answer to GET {path} from {addr}"))?
        .to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
