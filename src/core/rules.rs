//! Device rules (`admission`, `devices`, `qos_minus_one` in `gateway.yaml`) as plain values:
//! which ClientIds may connect, from where, to which topics, and who may publish QoS -1.
//!
//! Owns: [`AdmissionRules`], [`DeviceRule`], [`AddressMatch`], [`QosMinusOnePolicy`], their text
//! syntax ([`AddressMatch::parse`], [`check_client_id_glob`]) and matching. Must never: read
//! files, or know credentials (those stay in the shell: the core only says which rule a
//! session is for, in [`super::OpenFor`]).

use std::net::IpAddr;

use bytes::Bytes;

use super::types::{DeviceAddr, PeerAddr, TransportId};

/// `admission` + `devices`: who may connect.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AdmissionRules {
    /// `admission: listed`: a ClientId no rule matches gets CONNACK "rejected: not
    /// supported". Off (`open`, the default): it is admitted with no restriction.
    pub listed: bool,
    /// `devices[]` then `devices_file`'s entries, in that order; the first rule whose
    /// ClientId pattern and bindings all match is the device's rule.
    pub devices: Vec<DeviceRule>,
}

/// One entry of `devices`: a ClientId pattern, what it is bound to, what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    /// Exact ClientId, or a glob with `*` (any run) and `?` (one character).
    pub client_id: String,
    /// Transports the device may come in on (`None`: any).
    pub transports: Option<Vec<TransportId>>,
    /// Source address the device must come from (`None`: any).
    pub address: Option<AddressMatch>,
    /// Forwarder wireless node id the device must sit behind (`None`: any, forwarded or not).
    pub node: Option<Bytes>,
    /// Topic patterns (MQTT filters, `{client_id}` substituted) the device may publish to,
    /// its will included. `None`: any topic.
    pub publish: Option<Vec<String>>,
    /// Topic patterns the device's subscriptions must stay within. `None`: any filter.
    pub subscribe: Option<Vec<String>>,
}

/// A source address binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressMatch {
    /// A UDP source: an address or a subnet (`10.0.0.0/8`), optionally with a port.
    Ip {
        net: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
    /// A link-layer source (a serial radio's node address, e.g. an XBee 64-bit address).
    Link(Bytes),
}

/// `qos_minus_one`: who may publish without a connection (spec §6.8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QosMinusOnePolicy {
    /// Any sender, any predefined id or short name (today's behaviour, the default).
    #[default]
    All,
    /// No QoS -1 publish is accepted.
    Off,
    /// Only to these topics and/or from these sources: each list that is not empty must
    /// match.
    Listed {
        /// Predefined topic ids.
        predefined: Vec<u16>,
        /// Short topic names (two characters).
        short: Vec<[u8; 2]>,
        /// Source addresses.
        sources: Vec<AddressMatch>,
    },
}

impl AddressMatch {
    /// `192.168.1.7`, `192.168.1.7:5000`, `192.168.1.0/24`, `"[fd00::1]:5000"`, `fd00::/64`,
    /// or a link address in plain hex (`0013a20041a7b3c2`; no colons: `00:13:…` with eight groups
    /// would read as an IPv6 address).
    pub fn parse(text: &str) -> Result<AddressMatch, String> {
        let text = text.trim();
        if let Ok(sa) = text.parse::<std::net::SocketAddr>() {
            let prefix = if sa.is_ipv4() { 32 } else { 128 };
            return Ok(AddressMatch::Ip {
                net: sa.ip(),
                prefix,
                port: Some(sa.port()),
            });
        }
        let (ip_text, prefix_text) = match text.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (text, None),
        };
        if let Ok(ip) = ip_text.parse::<IpAddr>() {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix_text {
                None => max,
                Some(p) => match p.parse::<u8>() {
                    Ok(p) if p <= max => p,
                    _ => return Err(format!("`{text}`: the prefix length must be 0..={max}")),
                },
            };
            return Ok(AddressMatch::Ip {
                net: ip,
                prefix,
                port: None,
            });
        }
        let hex = text;
        if !hex.is_empty()
            && hex.len().is_multiple_of(2)
            && hex.len() <= 32
            && hex.chars().all(|c| c.is_ascii_hexdigit())
        {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("checked hex"))
                .collect::<Vec<u8>>();
            return Ok(AddressMatch::Link(Bytes::from(bytes)));
        }
        Err(format!(
            "`{text}`: expected an IP address (192.168.1.7), an address and port \
             (192.168.1.7:5000, \"[fd00::1]:5000\"), a subnet (192.168.1.0/24) or a link \
             address in hex (0013a20041a7b3c2)"
        ))
    }

    /// Whether a device's source is this one.
    pub fn matches(&self, peer: &PeerAddr) -> bool {
        match (self, peer) {
            (AddressMatch::Ip { net, prefix, port }, PeerAddr::Udp(sa)) => {
                port.is_none_or(|p| p == sa.port()) && ip_in(sa.ip(), *net, *prefix)
            }
            (AddressMatch::Link(l), PeerAddr::Link(p)) => l == p,
            _ => false,
        }
    }
}

/// Whether `ip` lies in `net/prefix` (an IPv4-mapped IPv6 source is compared as IPv4).
fn ip_in(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// A ClientId pattern: 1..=64 characters (globs `*`, `?`), no NUL.
pub fn check_client_id_glob(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("client_id is empty: give a ClientId or a glob like `sensor-*`".into());
    }
    if pattern.contains('\0') {
        return Err("client_id contains a NUL character".into());
    }
    Ok(())
}

/// Whether `client_id` matches the glob `pattern` (`*` any run, `?` one character; no
/// escapes). Iterative with one backtrack point: linear in practice, never exponential.
pub fn glob_matches(pattern: &str, client_id: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = client_id.chars().collect();
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// What admission says of a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted, under this rule (`None`: no rule names it, and admission is open).
    Admit(Option<usize>),
    /// `admission: listed` and no rule names the ClientId.
    Unknown,
    /// Rules name the ClientId, but none of them binds it to where it came from (a
    /// takeover attempt, or a device moved without its rule being updated).
    WrongPlace,
}

impl AdmissionRules {
    /// The first rule that names `client_id` and whose bindings `from` satisfies.
    pub fn verdict(&self, client_id: &str, from: &DeviceAddr) -> Verdict {
        let mut named = false;
        for (i, rule) in self.devices.iter().enumerate() {
            if rule.names(client_id) {
                if rule.binds(from) {
                    return Verdict::Admit(Some(i));
                }
                named = true;
            }
        }
        if named {
            Verdict::WrongPlace
        } else if self.listed {
            Verdict::Unknown
        } else {
            Verdict::Admit(None)
        }
    }
}

impl DeviceRule {
    /// Whether this rule's ClientId pattern matches.
    pub fn names(&self, client_id: &str) -> bool {
        glob_matches(&self.client_id, client_id)
    }

    /// Whether the device's address satisfies this rule's bindings (transport, source, node).
    pub fn binds(&self, addr: &DeviceAddr) -> bool {
        self.transports
            .as_ref()
            .is_none_or(|t| t.contains(&addr.transport))
            && self.address.as_ref().is_none_or(|a| a.matches(&addr.peer))
            && self
                .node
                .as_ref()
                .is_none_or(|n| addr.wireless_node_id.as_ref() == Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn globs() {
        assert!(glob_matches("sensor-*", "sensor-12"));
        assert!(glob_matches("sensor-*", "sensor-"));
        assert!(!glob_matches("sensor-*", "sensor"));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "abbc"));
        assert!(glob_matches("*x*y", "aaxbby"));
        assert!(!glob_matches("exact", "exactly"));
        assert!(glob_matches("*", ""));
    }

    #[test]
    fn addresses() {
        let udp = |s: &str| PeerAddr::Udp(s.parse::<SocketAddr>().unwrap());
        let net = AddressMatch::parse("192.168.1.0/24").unwrap();
        assert!(net.matches(&udp("192.168.1.7:4000")));
        assert!(!net.matches(&udp("192.168.2.7:4000")));
        assert!(net.matches(&udp("[::ffff:192.168.1.9]:1")));
        let exact = AddressMatch::parse("10.0.0.1:5000").unwrap();
        assert!(exact.matches(&udp("10.0.0.1:5000")));
        assert!(!exact.matches(&udp("10.0.0.1:5001")));
        let v6 = AddressMatch::parse("fd00::/64").unwrap();
        assert!(v6.matches(&udp("[fd00::5]:1")));
        assert!(!v6.matches(&udp("[fd01::5]:1")));
        let link = AddressMatch::parse("0013a20041a7b3c2").unwrap();
        assert!(link.matches(&PeerAddr::Link(Bytes::from_static(&[
            0x00, 0x13, 0xa2, 0x00, 0x41, 0xa7, 0xb3, 0xc2
        ]))));
        assert!(AddressMatch::parse("10.0.0.0/33").is_err());
        assert!(AddressMatch::parse("nonsense").is_err());
        assert!(AddressMatch::parse("0.0.0.0/0")
            .unwrap()
            .matches(&udp("1.2.3.4:5")));
    }
}
