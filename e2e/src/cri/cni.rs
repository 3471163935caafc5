//! The CNI bridge network of one harness: its own bridge and subnet, with
//! host-local IPAM state in the harness's temporary directory.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
