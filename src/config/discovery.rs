//! `discovery`: periodic ADVERTISE and the multicast groups the gateway listens on for SEARCHGW
//! (spec §6.1). Values are checked while they are read, like the rest of `config`; the checks
//! that need `transports.udp` (which transport a group belongs to) run when the gateway starts.
//! Must never import from `mod.rs`; shared deserializers come from `checks.rs`.
//! Owns: the `discovery` section's types and checks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::checks::{
    advertise_interval, check_destination, checked_int, checked_str, nonzero_port, unique_list,
    AddrVisitor,
};
use super::duration;

/// `discovery`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Discovery {
    /// `discovery.advertise`: `None` (absent or `null`) means no ADVERTISE is sent.
    pub advertise: Option<Advertise>,
    /// `discovery.multicast[]`: groups joined for discovery; empty: none.
    #[serde(deserialize_with = "multicast_groups")]
    pub multicast: Vec<MulticastGroup>,
}

/// `discovery.advertise`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Advertise {
    /// `address`: where ADVERTISE goes besides the multicast groups, usually a broadcast
    /// address; `None` (`null`): only to the groups (and serial ports).
    #[serde(deserialize_with = "optional_destination")]
    pub address: Option<SocketAddr>,
    /// `interval`: the period of ADVERTISE; also its Duration field, so whole seconds, 1s..=65535s.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "advertise_interval"
    )]
    pub interval: Duration,
}

impl Default for Advertise {
    fn default() -> Self {
        Advertise {
            address: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), 1884)),
            interval: Duration::from_secs(15 * 60),
        }
    }
}

/// One entry of `discovery.multicast[]`: a group the gateway joins. A SEARCHGW heard there is
/// answered with GWINFO to the group; ADVERTISE (when on) is sent there too. Both leave from
/// the group's UDP transport, so devices learn that transport's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MulticastGroup {
    /// `group`: an IPv4 (224.0.0.0/4) or IPv6 (ff00::/8) multicast address.
    #[serde(deserialize_with = "multicast_ip")]
    pub group: IpAddr,
    /// `port`: the UDP port devices send SEARCHGW to and listen on; not a transport's port.
    #[serde(deserialize_with = "nonzero_port")]
    pub port: u16,
    /// `interface`: where to join. IPv4: a local IPv4 address of the interface. IPv6: an
    /// interface name (`eth0`) or index. `None`: the kernel's choice (by route).
    #[serde(deserialize_with = "interface")]
    pub interface: Option<String>,
    /// `transport`: index into `transports.udp` of the socket GWINFO and ADVERTISE leave from;
    /// `None`: the first UDP transport of the group's address family.
    pub transport: Option<usize>,
    /// `ttl`: IPv4 TTL / IPv6 hop limit of what is sent to the group, 1..=255. A SEARCHGW's
    /// radius (when not 0) narrows it for the GWINFO that answers it.
    #[serde(deserialize_with = "ttl")]
    pub ttl: u8,
}

impl Default for MulticastGroup {
    /// 225.1.1.1:1883: what the Paho MQTT-SN clients and gateway use out of the box.
    fn default() -> Self {
        MulticastGroup {
            group: IpAddr::V4(Ipv4Addr::new(225, 1, 1, 1)),
            port: 1883,
            interface: None,
            transport: None,
            ttl: 1,
        }
    }
}

impl MulticastGroup {
    /// The group's address and port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.group, self.port)
    }

    /// Checks that `interface` fits the group's family.
    fn check(&self) -> Result<(), String> {
        let Some(interface) = &self.interface else {
            return Ok(());
        };
        match self.group {
            IpAddr::V4(_) => match interface.parse::<Ipv4Addr>() {
                Ok(_) => Ok(()),
                Err(_) => Err(format!(
                    "interface `{interface}`: for an IPv4 group give the interface's IPv4 address, e.g. 192.168.1.10"
                )),
            },
            IpAddr::V6(_) if interface.parse::<IpAddr>().is_ok() => Err(format!(
                "interface `{interface}`: for an IPv6 group give an interface name (eth0) or index"
            )),
            IpAddr::V6(_) => Ok(()),
        }
    }
}

fn multicast_groups<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<MulticastGroup>, D::Error> {
    let list = unique_list(
        deserializer,
        "a list of `{ group: 225.1.1.1, port: 1883 }`",
        true,
        |earlier: &[MulticastGroup], entry: &MulticastGroup| {
            entry.check()?;
            match earlier
                .iter()
                .position(|e| e.addr() == entry.addr() && e.interface == entry.interface)
            {
                Some(i) => Err(format!(
                    "group {} on this interface is already discovery.multicast[{i}]",
                    entry.addr()
                )),
                None => Ok(()),
            }
        },
    )?;
    Ok(list.unwrap_or_default())
}

fn optional_destination<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    struct Optional;

    impl<'de> de::Visitor<'de> for Optional {
        type Value = Option<SocketAddr>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a socket address like 255.255.255.255:1884, or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(AddrVisitor {
                check: check_destination,
            })
            .map(Some)
        }
    }

    deserializer.deserialize_option(Optional)
}

fn multicast_ip<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    let text = checked_str(deserializer, "a multicast IP address", |v| {
        match v.parse::<IpAddr>() {
            Ok(ip) if ip.is_multicast() => Ok(v.to_owned()),
            Ok(_) => Err(format!(
                "`{v}` is not a multicast address (IPv4 224.0.0.0/4, e.g. 225.1.1.1; IPv6 ff00::/8, e.g. ff02::1:1883)"
            )),
            Err(_) => Err(format!(
                "invalid IP address `{v}` (quote IPv6 in YAML, without brackets or port)"
            )),
        }
    })?;
    text.parse().map_err(de::Error::custom)
}

fn ttl<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let ttl = checked_int(deserializer, 1, 255, |_| Ok(()))?;
    Ok(ttl as u8) // checked above
}

/// `interface`: a string (address or name) or an interface index; `null` for none.
fn interface<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct Interface;

    fn name<E: de::Error>(v: &str) -> Result<Option<String>, E> {
        if v.is_empty() || v.len() > 15 || v.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(E::custom(format_args!(
                "`{v}` is not an interface name, index or IPv4 address"
            )));
        }
        Ok(Some(v.to_owned()))
    }

    impl<'de> de::Visitor<'de> for Interface {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an interface name, index or IPv4 address, or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            name(v)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            match u32::try_from(v) {
                Ok(i) if i > 0 => Ok(Some(i.to_string())),
                _ => Err(E::custom(format_args!(
                    "interface index {v} is out of range: must be from 1 to 4294967295"
                ))),
            }
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::custom(format_args!("interface index {v} is negative"))),
            }
        }
    }

    deserializer.deserialize_option(Interface)
}
