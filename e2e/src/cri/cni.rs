//! The CNI bridge network of one harness: its own bridge and subnet, with
//! host-local IPAM state in the harness's temporary directory.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};

/// Pod networks claimed by harnesses of this process (wide or not, and the
/// `N` of `wpe<N>` / `wpw<N>`).
static CLAIMED: Mutex<BTreeSet<(bool, u8)>> = Mutex::new(BTreeSet::new());

/// The CNI bridge network of one harness: `10.213.<N>.0/24` (253 pods,
/// bridge `wpe<N>`), or a wide one, `10.212.<4N>.0/22` (1021 pods, bridge
/// `wpw<N>`), for benches that run a thousand pods at once.
#[derive(Debug)]
pub struct CniNetwork {
    slot: Slot,
}

/// Where a network lies (its addresses, its bridge's name); a candidate
/// examined while [`CLAIMED`] is locked must not be a [`CniNetwork`], whose
/// drop takes that lock.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    index: u8,
    wide: bool,
}

impl std::ops::Deref for CniNetwork {
    type Target = Slot;
    fn deref(&self) -> &Slot {
        &self.slot
    }
}

impl CniNetwork {
    /// Claims a network no other harness of this process uses and no host
    /// interface or route of this machine overlaps; `wide` for a /22.
    pub fn claim(wide: bool) -> Result<CniNetwork> {
        let routes = fs::read_to_string("/proc/net/route").unwrap_or_default();
        let mut claimed = CLAIMED
            .lock()
            .map_err(|_| anyhow!("network lock poisoned"))?;
        let (first, count) = if wide { (0u8, 64u8) } else { (20u8, 200u8) };
        let start = (std::process::id() % u32::from(count)) as u8;
        for i in 0..count {
            let net = Slot {
                index: first + (start.wrapping_add(i) % count),
                wide,
            };
            if claimed.contains(&(wide, net.index))
                || Path::new("/sys/class/net").join(net.bridge()).exists()
                || routes_overlap(&routes, net.base(), net.mask())
            {
                continue;
            }
            claimed.insert((wide, net.index));
            return Ok(CniNetwork { slot: net });
        }
        bail!(
            "no free pod network {} left for the e2e harness",
            if wide {
                "10.212.4N.0/22"
            } else {
                "10.213.N.0/24"
            }
        )
    }
}

impl Slot {
    /// The network's first address.
    fn base(&self) -> u32 {
        if self.wide {
            u32::from_be_bytes([10, 212, self.index * 4, 0])
        } else {
            u32::from_be_bytes([10, 213, self.index, 0])
        }
    }

    /// Its netmask.
    fn mask(&self) -> u32 {
        if self.wide {
            0xffff_fc00
        } else {
            0xffff_ff00
        }
    }

    /// The bridge device (`wpe<N>`, or `wpw<N>` when wide).
    pub fn bridge(&self) -> String {
        format!("{}{}", if self.wide { "wpw" } else { "wpe" }, self.index)
    }

    /// The pod subnet (`10.213.<N>.0/24` or `10.212.<4N>.0/22`).
    pub fn subnet(&self) -> String {
        format!(
            "{}/{}",
            std::net::Ipv4Addr::from(self.base()),
            self.mask().count_ones()
        )
    }

    /// The host's address on the bridge, the pods' gateway (the first).
    pub fn gateway(&self) -> String {
        std::net::Ipv4Addr::from(self.base() + 1).to_string()
    }

    /// How many pods the network holds (host-local leaves out the network,
    /// gateway and broadcast addresses).
    pub fn capacity(&self) -> usize {
        (!self.mask()) as usize - 2
    }

    /// The network's name in CNI.
    pub fn name(&self) -> String {
        format!(
            "wasmpod-e2e-{}{}",
            if self.wide { "w" } else { "" },
            self.index
        )
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
            claimed.remove(&(self.wide, self.index));
        }
    }
}

/// Whether a route of the host (`/proc/net/route`) covers or lies inside
/// the network `ours`/`our_mask`.
fn routes_overlap(routes: &str, ours: u32, our_mask: u32) -> bool {
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
        let net = Slot {
            index: 42,
            wide: false,
        };
        // 10.213.0.0/16 covers every 10.213.N.0/24
        assert!(routes_overlap(routes, net.base(), net.mask()));
        let routes: String = routes.lines().take(3).collect::<Vec<_>>().join("\n");
        assert!(!routes_overlap(&routes, net.base(), net.mask()));
        // a /24 inside a wide /22 overlaps it
        let wide = Slot {
            index: 3,
            wide: true,
        };
        let inside = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                      br0\t000ED40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(wide.subnet(), "10.212.12.0/22");
        assert!(routes_overlap(inside, wide.base(), wide.mask()));
        assert!(!routes_overlap(inside, net.base(), net.mask()));
    }

    #[test]
    fn claims_skip_the_networks_already_claimed() {
        // the second claim passes over the first's network (a candidate
        // dropped while the claims are locked must not take the lock)
        let a = CniNetwork::claim(false).unwrap();
        let b = CniNetwork::claim(false).unwrap();
        let w = CniNetwork::claim(true).unwrap();
        let v = CniNetwork::claim(true).unwrap();
        assert_ne!(a.subnet(), b.subnet());
        assert_ne!(w.subnet(), v.subnet());
        drop(a);
        let c = CniNetwork::claim(false).unwrap();
        assert_ne!(c.subnet(), b.subnet());
    }

    #[test]
    fn wide_network_holds_a_thousand_pods() {
        let wide = Slot {
            index: 63,
            wide: true,
        };
        assert_eq!(wide.subnet(), "10.212.252.0/22");
        assert_eq!(wide.gateway(), "10.212.252.1");
        assert_eq!(wide.bridge(), "wpw63");
        assert_eq!(wide.capacity(), 1021);
        let net = Slot {
            index: 77,
            wide: false,
        };
        assert_eq!(net.capacity(), 253);
    }

    #[test]
    fn conflist_is_a_bridge_with_private_ipam() {
        let net = Slot {
            index: 77,
            wide: false,
        };
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
