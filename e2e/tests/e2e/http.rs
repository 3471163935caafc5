//! `wasi:http` components served from pods, through CRI: two Wasm pods, A
//! calls B over HTTP at B's pod IP, the host calls A; a trapping handler gets
//! 500 while the next request succeeds; a spinning handler is ended by the
//! request timeout; a request past the container's memory limit fails alone;
//! SIGTERM (StopContainer) lets a slow request finish and the container
//! exits 0.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use wasmpod_e2e::cri::{api, container_config, with_memory_limit, Pod, HANDLER};
use wasmpod_e2e::guests::http_guest;
use wasmpod_e2e::images::wasm_image;
use wasmpod_e2e::{Containerd, ContainerdOptions};

const IMAGE: &str = "docker.io/wasmpod-e2e/http:1";

/// `GET path` on `addr`: (status, body).
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    wasmpod_e2e::http_client::get(addr, path, &[], timeout)
}

/// Waits until `addr` answers `GET /` with 200.
fn wait_serving(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get(addr, "/", Duration::from_secs(5)) {
            Ok((200, _)) => return Ok(()),
            other if Instant::now() > deadline => bail!("{addr} does not serve: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn with_env(mut c: api::ContainerConfig, key: &str, value: &str) -> api::ContainerConfig {
    c.envs.push(api::KeyValue {
        key: key.into(),
        value: value.into(),
    });
    c
}

#[test]
fn http_components_serve_call_each_other_fail_per_request_and_drain() -> Result<()> {
    let cd = Containerd::start(ContainerdOptions {
        cri: true,
        ..Default::default()
    })?;
    let cri = cd.cri()?;
    cd.cri_import(&wasm_image(IMAGE, &http_guest()?, "/http.wasm")?, IMAGE)?;

    let mut a = Pod::run(&cd, &cri, Pod::config(&cd, "http-a"), HANDLER)?;
    let mut b = Pod::run(&cd, &cri, Pod::config(&cd, "http-b"), HANDLER)?;
    let a_cfg = with_memory_limit(
        with_env(
            container_config("a", IMAGE, &[], &[]),
            "WASMPOD_HTTP_TIMEOUT_MS",
            "1000",
        ),
        128 << 20,
    );
    let b_cfg = with_env(
        container_config("b", IMAGE, &[], &[]),
        "WASMPOD_HTTP_PORT",
        "9090",
    );
    a.start(&a_cfg)?;
    let b_id = b.start(&b_cfg)?;
    let a_addr: SocketAddr = format!("{}:8080", a.ip()?).parse()?;
    let b_addr: SocketAddr = format!("{}:9090", b.ip()?).parse()?;
    wait_serving(a_addr)?;
    wait_serving(b_addr)?;

    // The host calls A; A calls B through B's pod IP.
    let t = Duration::from_secs(20);
    let (status, body) = get(a_addr, "/", t)?;
    ensure!(
        status == 200 && body == "hello from wasmpod http\n",
        "A: {status} {body:?}"
    );
    let (status, body) = get(a_addr, &format!("/call?to={b_addr}&path=/"), t)?;
    ensure!(
        status == 200 && body == format!("called {b_addr}: 200 hello from wasmpod http\n"),
        "A → B: {status} {body:?}"
    );
    let (status, body) = get(b_addr, "/env?name=WASMPOD_HTTP_PORT", t)?;
    ensure!(
        status == 200 && body == "9090\n",
        "B's environment: {status} {body:?}"
    );

    // A trapping handler fails its request only.
    let (status, _) = get(a_addr, "/trap", t)?;
    ensure!(status == 500, "trap: {status}");
    let (status, _) = get(a_addr, "/", t)?;
    ensure!(status == 200, "after a trap: {status}");
    // A spinning handler is interrupted by A's 1 s request timeout.
    let (status, _) = get(a_addr, "/spin", t)?;
    ensure!(status == 500, "spin: {status}");
    let (status, _) = get(a_addr, "/", t)?;
    ensure!(status == 200, "after a spin: {status}");
    // Memory per request: within A's 128 MiB limit a request may allocate,
    // one that asks for more fails alone (its memory.grow is refused).
    let (status, body) = get(a_addr, "/alloc?mib=16", t)?;
    ensure!(
        status == 200 && body == "allocated 16\n",
        "alloc 16: {status} {body:?}"
    );
    let (status, _) = get(a_addr, "/alloc?mib=512", t)?;
    ensure!(status == 500, "alloc 512 in a 128 MiB container: {status}");
    let (status, _) = get(a_addr, "/", t)?;
    ensure!(status == 200, "after a refused allocation: {status}");
    let log = a.log_lines(&a_cfg)?;
    ensure!(
        log.iter()
            .any(|(s, l)| s == "stderr" && l.contains("request failed")),
        "A's log does not report the failed request: {log:?}"
    );

    // SIGTERM while a slow request runs (its response head has arrived, its
    // body comes 2 s later): it finishes, then the server exits 0.
    let slow =
        wasmpod_e2e::http_client::get_in_flight(b_addr, "/slow?ms=2000", Duration::from_secs(30))?;
    cri.stop_container(&b_id, 20)?;
    let status = slow.status;
    let body = slow.body()?;
    ensure!(
        status == 200 && body == "slept 2000\n",
        "slow request during SIGTERM: {status} {body:?}"
    );
    let st = cri.container_status(&b_id)?;
    ensure!(
        st.state == api::ContainerState::ContainerExited as i32 && st.exit_code == 0,
        "B after SIGTERM: {st:?}"
    );
    ensure!(
        TcpStream::connect_timeout(&b_addr, Duration::from_secs(2)).is_err(),
        "B still accepts connections after it drained"
    );

    a.remove()?;
    b.remove()?;
    cd.assert_no_leftovers()
}
