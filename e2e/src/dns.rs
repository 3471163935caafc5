//! A small authoritative DNS server for the tests: UDP on one address the
//! pods can reach (their network's gateway), answering `A` queries for the
//! names it is given and `NXDOMAIN` for everything else, so that a test can
//! tell a lookup that went to the server a pod's `resolv.conf` names from
//! one that went anywhere else. It stops when dropped, and never runs
//! longer than the lifetime it is started with.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A running DNS server.
pub struct DnsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    queries: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `records` (fully qualified name without the trailing dot →
    /// address) on `addr` for at most `lifetime`.
    pub fn start(
        addr: SocketAddr,
        records: BTreeMap<String, Ipv4Addr>,
        lifetime: Duration,
    ) -> Result<DnsServer> {
        let socket =
            UdpSocket::bind(addr).with_context(|| format!("bind the test DNS server on {addr}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let (stop2, queries2) = (stop.clone(), queries.clone());
        let deadline = Instant::now() + lifetime;
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Some(query) = Query::parse(&buf[..n]) else {
                    continue;
                };
                if let Ok(mut q) = queries2.lock() {
                    q.push(query.name.clone());
                }
                let answer = if query.qtype == TYPE_A {
                    records.get(&query.name).copied()
                } else {
                    None
                };
                // a name we hold has no other records: NOERROR, no answer
                let known = records.contains_key(&query.name);
                let _ = socket.send_to(&query.reply(answer, known), peer);
            }
        });
        Ok(DnsServer {
            addr,
            stop,
            queries,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The names asked so far, in order.
    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().map(|q| q.clone()).unwrap_or_default()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

/// One question of a query.
struct Query {
    id: u16,
    flags: u16,
    name: String,
    qtype: u16,
    /// The question section, as received.
    question: Vec<u8>,
}

impl Query {
    fn parse(msg: &[u8]) -> Option<Query> {
        if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
            return None;
        }
        let mut labels = Vec::new();
        let mut i = 12;
        loop {
            let len = usize::from(*msg.get(i)?);
            i += 1;
            if len == 0 {
                break;
            }
            if len > 63 {
                return None;
            }
            labels.push(String::from_utf8_lossy(msg.get(i..i + len)?).to_ascii_lowercase());
            i += len;
        }
        let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
        let question = msg.get(12..i + 4)?.to_vec();
        Some(Query {
            id: u16::from_be_bytes([msg[0], msg[1]]),
            flags: u16::from_be_bytes([msg[2], msg[3]]),
            name: labels.join("."),
            qtype,
            question,
        })
    }

    /// The response: `answer` as one A record, or no answer (NOERROR when
    /// the name is `known`, NXDOMAIN otherwise).
    fn reply(&self, answer: Option<Ipv4Addr>, known: bool) -> Vec<u8> {
        let rcode = if answer.is_some() || known { 0 } else { 3 };
        // QR, AA, the query's RD; RA
        let flags = 0x8400 | (self.flags & 0x0100) | 0x0080 | rcode;
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&u16::from(answer.is_some()).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&self.question);
        if let Some(ip) = answer {
            // the name by pointer to the question's (offset 12)
            out.extend_from_slice(&[0xc0, 12]);
            out.extend_from_slice(&TYPE_A.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&30u32.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&ip.octets());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` of `qtype`, as a resolver sends it.
    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q[..2].copy_from_slice(&id.to_be_bytes());
        for label in name.split('.') {
            q.push(u8::try_from(label.len()).unwrap());
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn answers_its_names_and_refuses_the_rest() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        drop(socket);
        let records = BTreeMap::from([("svc.example.test".to_owned(), Ipv4Addr::new(10, 1, 2, 3))]);
        let server = DnsServer::start(addr, records, Duration::from_secs(10)).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];

        client
            .send_to(&query(7, "SVC.example.test", TYPE_A), server.addr())
            .unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..2], &7u16.to_be_bytes());
        assert_eq!(buf[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([buf[6], buf[7]]), 1, "one answer");
        assert_eq!(&buf[n - 4..n], &[10, 1, 2, 3]);

        client
            .send_to(&query(8, "svc.example.test", 28), server.addr())
            .unwrap();
        client.recv(&mut buf).unwrap();
        assert_eq!(buf[3] & 0x0f, 0, "AAAA of a known name: NOERROR, no data");
        assert_eq!(u16::from_be_bytes([buf[6], buf[7]]), 0);

        client
            .send_to(&query(9, "other.test", TYPE_A), server.addr())
            .unwrap();
        client.recv(&mut buf).unwrap();
        assert_eq!(buf[3] & 0x0f, 3, "NXDOMAIN");
        assert_eq!(
            server.queries(),
            ["svc.example.test", "svc.example.test", "other.test"]
        );
    }
}
