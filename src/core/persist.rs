//! The records the core keeps durable, their keys, and their encoding.
//!
//! Records are JSON (payloads as hex) so `sqlite3 store.db 'select * from kv'` shows a person
//! what the gateway remembers. Keys start with the ClientId, length-prefixed, so one device's
//! records sort together and can be deleted by prefix. Owns no I/O: the shell's store does that.
//! Must never: touch the store or change a record's encoding without reading the old one.

use serde::{Deserialize, Serialize};

use super::types::{DeviceAddr, PeerAddr, PersistOp, Table, TransportId};

/// A persistent device session (clean session 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub client_id: String,
    pub addr: AddrRecord,
    pub state: StoredState,
    /// The device's keep-alive, seconds.
    pub keep_alive: u16,
    pub will: Option<WillRecord>,
    /// Granted subscriptions as older versions stored them: (filter, QoS 0..=2). Now each
    /// is a row of [`Table::Subscription`]; read on restore, never written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subs: Vec<(String, u8)>,
    /// Normal topic ids: (id, name, known by the device).
    pub topics: Vec<(u16, String, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredState {
    Active,
    /// Asleep with this sleep Duration (seconds).
    Asleep(u16),
    /// Disconnected or lost: the broker keeps the session; the device reconnects itself.
    Offline,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillRecord {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub msg: Hex,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrRecord {
    pub transport: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Hex>,
}

impl AddrRecord {
    pub fn from_addr(a: &DeviceAddr) -> Self {
        let (udp, link) = match &a.peer {
            PeerAddr::Udp(s) => (Some(s.to_string()), None),
            PeerAddr::Link(l) => (None, Some(Hex(l.to_vec()))),
        };
        AddrRecord {
            transport: a.transport.0,
            udp,
            link,
            node: a.wireless_node_id.as_ref().map(|n| Hex(n.to_vec())),
        }
    }

    pub fn to_addr(&self) -> Option<DeviceAddr> {
        let peer = match (&self.udp, &self.link) {
            (Some(s), None) => PeerAddr::Udp(s.parse().ok()?),
            (None, Some(l)) => PeerAddr::Link(l.0.clone().into()),
            _ => return None,
        };
        Some(DeviceAddr {
            transport: TransportId(self.transport),
            peer,
            wireless_node_id: self.node.as_ref().map(|n| n.0.clone().into()),
        })
    }
}

/// A message buffered for a sleeping device, already acknowledged to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferedRecord {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub data: Hex,
}

/// Uplink state that must survive a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkRecord {
    /// A QoS 2 flow from the device: its MsgId is carried upstream as `pkid`. `released` once
    /// the broker sent PUBREC (so a re-sent PUBLISH gets PUBREC, never a second copy).
    Qos2 {
        msg_id: u16,
        pkid: u16,
        topic_id: u16,
        released: bool,
        /// The broker answered the QoS 2 PUBLISH with PUBACK (it downgrades to QoS 1): it has
        /// the message; the device's PUBREL is completed by the gateway alone.
        #[serde(default)]
        acked: bool,
    },
    /// A QoS 1/2 message the device handed over while the broker was away; acknowledged to the
    /// device, forwarded when the broker is back.
    Parked {
        topic: String,
        qos: u8,
        retain: bool,
        data: Hex,
        /// The packet id it went upstream with, once forwarded (re-sent with DUP under it).
        #[serde(default)]
        pkid: Option<u16>,
        /// QoS 2: the broker sent PUBREC and we sent PUBREL.
        #[serde(default)]
        released: bool,
    },
    /// Aggregating mode: a QoS 2 flow of the device (its `packet_id` on its virtual session)
    /// went up on shared session `shared` as `shared_packet_id`; a re-sent PUBLISH or PUBREL
    /// after a restart continues it there. Keyed at [`AGGREGATED_UPLINK_BASE`] + `packet_id`.
    Aggregated {
        packet_id: u16,
        shared: u16,
        shared_packet_id: u16,
    },
}

/// Where [`UplinkRecord::Aggregated`] rows are numbered (QoS 2 flows are below 2^16, parked
/// messages from 2^32).
pub const AGGREGATED_UPLINK_BASE: u64 = 1 << 16;

/// Bytes as a hex string in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hex(pub Vec<u8>);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0F)]));
        }
        s.serialize_str(&out)
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let digit = |c: u8| -> Result<u8, D::Error> {
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(serde::de::Error::custom("invalid hex digit")),
            }
        };
        let bytes = s.as_bytes();
        if bytes.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd-length hex"));
        }
        bytes
            .chunks_exact(2)
            .map(|p| match p {
                [hi, lo] => Ok(digit(*hi)? << 4 | digit(*lo)?),
                _ => Err(serde::de::Error::custom("odd-length hex")),
            })
            .collect::<Result<Vec<u8>, _>>()
            .map(Hex)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Key prefix of everything stored for `client_id`: its length (u16 BE) then its octets.
pub fn device_prefix(client_id: &str) -> Vec<u8> {
    let len = u16::try_from(client_id.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(2 + client_id.len() + 8);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(client_id.as_bytes());
    k
}

/// Key of a record numbered `n` under `client_id` (buffer sequence, uplink id).
pub fn numbered_key(client_id: &str, n: u64) -> Vec<u8> {
    let mut k = device_prefix(client_id);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// A granted subscription of a persistent session ([`Table::Subscription`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub qos: u8,
}

/// Key of `client_id`'s subscription to `filter`.
pub fn subscription_key(client_id: &str, filter: &str) -> Vec<u8> {
    let mut k = device_prefix(client_id);
    k.extend_from_slice(filter.as_bytes());
    k
}

/// Splits a subscription key back into (ClientId, filter).
pub fn split_subscription_key(key: &[u8]) -> Option<(String, String)> {
    let (len, rest) = key.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let (id, filter) = (rest.get(..len)?, rest.get(len..)?);
    Some((
        String::from_utf8(id.to_vec()).ok()?,
        String::from_utf8(filter.to_vec()).ok()?,
    ))
}

/// Splits a numbered key back into (ClientId, number).
pub fn split_numbered_key(key: &[u8]) -> Option<(String, u64)> {
    let (len, rest) = key.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let (id, n) = (rest.get(..len)?, rest.get(len..)?);
    let n: [u8; 8] = n.try_into().ok()?;
    Some((String::from_utf8(id.to_vec()).ok()?, u64::from_be_bytes(n)))
}

pub fn put<T: Serialize>(table: Table, key: Vec<u8>, record: &T) -> PersistOp {
    PersistOp::Put {
        table,
        key,
        // Serialising plain structs of strings and numbers to JSON cannot fail.
        value: serde_json::to_vec(record).unwrap_or_default(),
    }
}

pub fn decode<T: for<'de> Deserialize<'de>>(value: &[u8]) -> Option<T> {
    serde_json::from_slice(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let h = Hex(vec![0, 1, 0xAB, 0xFF]);
        let j = serde_json::to_string(&h).unwrap();
        assert_eq!(j, "\"0001abff\"");
        assert_eq!(serde_json::from_str::<Hex>(&j).unwrap(), h);
        assert!(serde_json::from_str::<Hex>("\"0g\"").is_err());
        assert!(serde_json::from_str::<Hex>("\"abc\"").is_err());
    }

    #[test]
    fn numbered_keys_sort_by_device_then_number_and_split_back() {
        let a = numbered_key("dev", 2);
        let b = numbered_key("dev", 10);
        let c = numbered_key("dev2", 1);
        assert!(a < b);
        assert!(a.starts_with(&device_prefix("dev")));
        assert!(!c.starts_with(&device_prefix("dev")));
        assert_eq!(split_numbered_key(&b), Some(("dev".to_string(), 10)));
        assert_eq!(split_numbered_key(&[0, 9, b'x']), None);
    }

    #[test]
    fn addresses_round_trip() {
        let udp = DeviceAddr::udp(TransportId(3), "[::1]:1884".parse().unwrap());
        assert_eq!(AddrRecord::from_addr(&udp).to_addr(), Some(udp));
        let link = DeviceAddr {
            transport: TransportId(1),
            peer: PeerAddr::Link(bytes::Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7, 8])),
            wireless_node_id: Some(bytes::Bytes::from_static(&[9])),
        };
        assert_eq!(AddrRecord::from_addr(&link).to_addr(), Some(link));
    }
}
