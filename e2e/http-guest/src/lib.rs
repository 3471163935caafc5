//! A `wasi:http/incoming-handler` component for wasmpod's tests and
//! benchmarks. Routes:
//! - `/` → 200 `hello from wasmpod http`
//! - `/trap` → the handler traps (the server answers 500)
//! - `/slow?ms=N` → 200 at once, then the body `slept N` after N ms
//! - `/spin` → loops forever (the request timeout ends it)
//! - `/alloc?mib=N` → allocates and touches N MiB, then 200 `allocated N`
//! - `/call?to=HOST:PORT&path=/P` → GET http://HOST:PORT/P with
//!   `wasi:http/outgoing-handler`, then 200 `called HOST:PORT: <status> <body>`
//! - `/env?name=K` → 200 with the value of environment variable K

use std::io::Write as _;

use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(Handler);

struct Handler;

fn query<'a>(pq: &'a str, key: &str) -> Option<&'a str> {
    let q = pq.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn respond(out: ResponseOutparam, status: u16, body: &str) {
    let resp = OutgoingResponse::new(Fields::new());
    let _ = resp.set_status_code(status);
    let Ok(b) = resp.body() else { return };
    ResponseOutparam::set(out, Ok(resp));
    if let Ok(mut stream) = b.write() {
        let _ = stream.write_all(body.as_bytes());
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(b, None);
}

fn call(to: &str, path: &str) -> Result<(u16, String), String> {
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).map_err(|()| "method")?;
    req.set_scheme(Some(&Scheme::Http)).map_err(|()| "scheme")?;
    req.set_authority(Some(to)).map_err(|()| "authority")?;
    req.set_path_with_query(Some(path)).map_err(|()| "path")?;
    let body = req.body().map_err(|()| "body")?;
    let fut = wasip2::http::outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
    fut.subscribe().block();
    let resp = fut
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken")?
        .map_err(|e: ErrorCode| format!("{e:?}"))?;
    let status = resp.status();
    let incoming = resp.consume().map_err(|()| "consume")?;
    let stream = incoming.stream().map_err(|()| "stream")?;
    let mut data = Vec::new();
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        data.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&data).into_owned()))
}

impl wasip2::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let pq = request.path_with_query().unwrap_or_default();
        let path = pq.split('?').next().unwrap_or("");
        match path {
            "/" => respond(out, 200, "hello from wasmpod http\n"),
            "/trap" => panic!("trap requested"),
            "/slow" => {
                // The head goes out first, so a client knows the request is
                // being answered while the body is still to come.
                let ms: u64 = query(&pq, "ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
                let resp = OutgoingResponse::new(Fields::new());
                let _ = resp.set_status_code(200);
                let Ok(b) = resp.body() else { return };
                ResponseOutparam::set(out, Ok(resp));
                if let Ok(mut stream) = b.write() {
                    let _ = stream.flush();
                    wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                    let _ = stream.write_all(format!("slept {ms}\n").as_bytes());
                    let _ = stream.flush();
                }
                let _ = OutgoingBody::finish(b, None);
            }
            "/spin" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "/alloc" => {
                let mib: usize = query(&pq, "mib").and_then(|v| v.parse().ok()).unwrap_or(1);
                let mut v = vec![0u8; mib << 20];
                for i in (0..v.len()).step_by(4096) {
                    v[i] = 1;
                }
                respond(out, 200, &format!("allocated {}\n", std::hint::black_box(v).len() >> 20));
            }
            "/call" => {
                let to = query(&pq, "to").unwrap_or("127.0.0.1:8080").to_owned();
                let target = query(&pq, "path").unwrap_or("/").to_owned();
                match call(&to, &target) {
                    Ok((status, body)) => respond(out, 200, &format!("called {to}: {status} {body}")),
                    Err(e) => respond(out, 502, &format!("call {to} failed: {e}\n")),
                }
            }
            "/env" => {
                let name = query(&pq, "name").unwrap_or("");
                let value = std::env::var(name).unwrap_or_default();
                respond(out, 200, &format!("{value}\n"));
            }
            _ => respond(out, 404, "not found\n"),
        }
    }
}
