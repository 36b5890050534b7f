//! Which backend addresses are allowed: an address that reaches the load
//! balancer VM itself (loopback, link-local, the metadata service) would put
//! Envoy's admin API or the agent on a public port, so such addresses are
//! refused unless the operator trusts a range explicitly.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network in CIDR notation, e.g. `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The network's address, as written (IPv4-mapped IPv6 as IPv4).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` (IPv4-mapped IPv6 compared as IPv4) is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[whole] & mask == b[whole] & mask
}

impl FromStr for IpNet {
    type Err = String;

    /// Parses `ADDR/PREFIX`; a bare address is a single host (/32 or /128).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not a network like 10.0.0.0/8 or fd00::/8"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why `ip` reaches the VM itself (or nothing at all), if it does: the
/// address classes refused as backends unless an allowed network covers them.
pub fn forbidden_class(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

/// [`forbidden_class`], unless one of the `allowed` networks (the
/// operator's `allowed_backend_networks`) covers `ip`.
pub fn refused_class(ip: IpAddr, allowed: &[IpNet]) -> Option<&'static str> {
    forbidden_class(ip).filter(|_| !allowed.iter().any(|n| n.contains(ip)))
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        () if ip.is_loopback() => "a loopback address (the load balancer VM itself)",
        () if a == 169 && b == 254 => {
            "a link-local address (the VM's own link, and the cloud metadata service)"
        }
        () if ip.is_unspecified() => "the unspecified address (the VM itself)",
        () if a == 0 => "in 0.0.0.0/8, which means this host",
        () if ip.is_broadcast() => "the broadcast address",
        () if ip.is_multicast() => "a multicast address",
        () => return None,
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(match () {
        () if ip.is_loopback() => "a loopback address (the load balancer VM itself)",
        () if ip.is_unspecified() => "the unspecified address (the VM itself)",
        () if first & 0xffc0 == 0xfe80 => "a link-local address (the VM's own link)",
        () if ip.is_multicast() => "a multicast address",
        () => return None,
    })
}

/// Whether `host` (lowercase, no trailing dot) is a name that always means
/// this machine: `localhost` and every name under `.localhost` (RFC 6761).
pub fn is_localhost_name(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("network")
    }

    #[test]
    fn contains_compares_the_prefix_only() {
        assert!(net("127.0.0.0/8").contains("127.9.8.7".parse().expect("ip")));
        assert!(!net("127.0.0.0/8").contains("128.0.0.1".parse().expect("ip")));
        assert!(net("10.1.2.0/23").contains("10.1.3.255".parse().expect("ip")));
        assert!(!net("10.1.2.0/23").contains("10.1.4.0".parse().expect("ip")));
        assert!(net("0.0.0.0/0").contains("8.8.8.8".parse().expect("ip")));
        assert!(!net("0.0.0.0/0").contains("::1".parse().expect("ip")));
        assert!(net("fe80::/10").contains("febf::1".parse().expect("ip")));
        assert!(
            net("127.0.0.1").contains("::ffff:127.0.0.1".parse().expect("ip")),
            "mapped IPv6 is compared as IPv4"
        );
    }

    #[test]
    fn bad_networks_say_why() {
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("::/129".parse::<IpNet>().is_err());
        assert!("10.0.0/8".parse::<IpNet>().is_err());
        assert!("10.0.0.0/x".parse::<IpNet>().is_err());
        assert_eq!(net("::ffff:10.0.0.0/8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn classes_that_reach_the_vm_itself() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(
                forbidden_class(ip.parse().expect("ip")).is_some(),
                "{ip} must be refused"
            );
        }
        for ip in [
            "10.0.0.1",
            "192.168.1.1",
            "8.8.8.8",
            "2001:db8::1",
            "fd00::1",
        ] {
            assert_eq!(forbidden_class(ip.parse().expect("ip")), None, "{ip}");
        }
    }
}
