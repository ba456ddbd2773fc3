//! Addresses, outputs and counters: the values that cross the core's boundary.
//! Owns: the ids, addresses, [`Output`], [`PersistOp`] and [`Stats`]. Must never: import another
//! core file (it sits below them all).

use std::net::SocketAddr;

use bytes::Bytes;

use crate::mqtt;

/// Which transport (UDP socket, serial port) a frame came in on; assigned by the shell.
/// The gateway's handle for one device's record. Never reused within a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransportId(pub u16);

/// A peer on one transport.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    Udp(SocketAddr),
    /// A link-layer address (e.g. an XBee 64-bit address); empty for a point-to-point UART.
    Link(Bytes),
}

/// Where a device is reached: transport, peer, and the forwarder's wireless node id when the
/// device sits behind a forwarder (spec §5.5); replies are encapsulated again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceAddr {
    pub transport: TransportId,
    pub peer: PeerAddr,
    pub wireless_node_id: Option<Bytes>,
}

impl DeviceAddr {
    pub fn udp(transport: TransportId, addr: SocketAddr) -> Self {
        DeviceAddr {
            transport,
            peer: PeerAddr::Udp(addr),
            wireless_node_id: None,
        }
    }
}

impl std::fmt::Display for DeviceAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.peer {
            PeerAddr::Udp(a) => write!(f, "udp#{}/{a}", self.transport.0)?,
            PeerAddr::Link(l) => write!(f, "link#{}/{l:02x?}", self.transport.0)?,
        }
        if let Some(n) = &self.wireless_node_id {
            write!(f, " node {n:02x?}")?;
        }
        Ok(())
    }
}

/// A device's address as a person reads it in a log line: the UDP source, or the serial port's
/// path with the radio's node address, and the forwarder node when there is one
/// (`serial /dev/ttyUSB0 radio 0013a20041a7b3c2 via node 0a1b`). Built by the context from
/// `Settings::transport_names`; falls back to [`DeviceAddr`]'s own form.
pub(crate) struct PeerName<'a> {
    pub(super) names: &'a [String],
    pub(super) addr: &'a DeviceAddr,
}

impl std::fmt::Display for PeerName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(name) = self.names.get(usize::from(self.addr.transport.0)) else {
            return self.addr.fmt(f);
        };
        match &self.addr.peer {
            PeerAddr::Udp(a) => write!(f, "udp {a}")?,
            PeerAddr::Link(l) if l.is_empty() => write!(f, "serial {name}")?,
            PeerAddr::Link(l) => {
                write!(f, "serial {name} radio ")?;
                for b in l.iter() {
                    write!(f, "{b:02x}")?;
                }
            }
        }
        if let Some(n) = &self.addr.wireless_node_id {
            f.write_str(" via node ")?;
            for b in n.iter() {
                write!(f, "{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// A multicast group the shell listens on for discovery (`discovery.multicast[]`, in config
/// order); assigned by the shell, which alone knows the group's address, port and transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u16);

/// One upstream MQTT session (a TCP connection to the broker). Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Whose upstream session an [`Output::Open`] is: the device's ClientId (without
/// `client_id_prefix`), the transport it came in on, and the index of its rule in
/// [`super::rules::AdmissionRules::devices`] (`None`: no rule names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFor {
    pub client_id: String,
    pub transport: TransportId,
    pub rule: Option<usize>,
}

/// An effect the shell must carry out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this encoded MQTT-SN frame to a device.
    Transmit { to: DeviceAddr, frame: Bytes },
    /// Send this encoded frame (ADVERTISE) everywhere the shell broadcasts: the serial ports'
    /// broadcast address, `discovery.advertise.address`, and every multicast group.
    Broadcast { frame: Bytes },
    /// Send this encoded frame (GWINFO) to a multicast group, from the UDP transport the
    /// group belongs to, with `radius` (spec §5.3.9: 0 = the whole network) as its scope.
    Multicast {
        group: GroupId,
        radius: u8,
        frame: Bytes,
    },
    /// Open a new upstream session: connect to the broker and send this CONNECT first.
    /// Report the outcome with `handle_upstream` (CONNACK) or `handle_upstream_closed`.
    ///
    /// `device` says whose session it is (`None`: the gateway's own, e.g. for QoS -1), so the
    /// shell can apply that device's credentials (user name, password, client certificate),
    /// which the core never holds.
    Open {
        session: SessionId,
        connect: mqtt::Connect,
        device: Option<OpenFor>,
    },
    /// Send a packet on an open (or opening) upstream session.
    Send {
        session: SessionId,
        packet: mqtt::Packet,
    },
    /// Flush what was sent and close the session's connection. Without a DISCONNECT sent
    /// before it, the broker publishes the session's will.
    Close { session: SessionId },
    /// Make these changes durable, atomically and in order, then report `seq` with
    /// `Gateway::handle_persisted`. Only emitted when `Settings::persistent` is on.
    Persist { seq: u64, ops: Vec<PersistOp> },
}

/// What the core keeps durable, by kind: the one definition, used by the core to say what to
/// persist and by `store/` to keep it (on disk under [`Table::name`]).
///
/// A closed set, so a typo cannot create a table and the store can reject a row whose table
/// this version does not know. Adding a variant means a new schema version in
/// `store/sqlite.rs`, so that an older gateway refuses the file instead of calling it corrupt.
/// The derived order (declaration order) is the order the store loads tables in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// One record per persistent device session (clean session 0), keyed by ClientId.
    Device,
    /// Messages buffered for a sleeping device, keyed by ClientId then sequence.
    Buffer,
    /// Uplink QoS 2 flows and parked uplink messages, keyed by ClientId then id.
    Uplink,
    /// One row per granted subscription of a persistent session, keyed by ClientId then
    /// filter, so a SUBSCRIBE writes one row instead of the whole device record.
    Subscription,
}

impl Table {
    /// Every table, in load order.
    pub const ALL: [Table; 4] = [
        Table::Device,
        Table::Buffer,
        Table::Uplink,
        Table::Subscription,
    ];

    /// The name stored on disk. Stable: changing one is a schema change.
    pub const fn name(self) -> &'static str {
        match self {
            Table::Device => "device",
            Table::Buffer => "buffer",
            Table::Uplink => "uplink",
            Table::Subscription => "subscription",
        }
    }

    /// The table stored under `name`, if this version knows it.
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One change to durable state. A batch of these is committed as one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistOp {
    /// Insert `key`, or replace its value.
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Remove `key`; nothing happens if it is absent.
    Delete { table: Table, key: Vec<u8> },
    /// Remove every key of `table` that starts with `prefix` (an empty prefix empties it).
    DeletePrefix { table: Table, prefix: Vec<u8> },
}

impl PersistOp {
    /// The bytes this op carries (key or prefix plus value), used to bound a batch's size.
    pub fn payload_len(&self) -> usize {
        match self {
            PersistOp::Put { key, value, .. } => key.len() + value.len(),
            PersistOp::Delete { key, .. } => key.len(),
            PersistOp::DeletePrefix { prefix, .. } => prefix.len(),
        }
    }
}

/// Plain counters kept by the core; the shell exports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames handed to the core.
    pub frames_in: u64,
    /// Frames that did not decode.
    pub malformed: u64,
    /// Frames larger than `limits.max_frame_size`.
    pub oversized: u64,
    /// Frames from an address with no session (answered with DISCONNECT).
    pub unknown_peer: u64,
    /// Frames that made no sense in the device's state.
    pub wrong_state: u64,
    /// PUBLISH forwarded from devices to the broker (all QoS, including -1).
    pub uplink_publishes: u64,
    /// QoS 0 PUBLISH from devices dropped while their broker session was away.
    pub uplink_dropped: u64,
    /// PUBLISH sent to devices (first transmissions).
    pub downlink_publishes: u64,
    /// Messages for a device dropped: queue full, too large for a frame, topic rejected.
    pub downlink_dropped: u64,
    /// Re-sends toward devices after T_RETRY.
    pub retransmissions: u64,
    /// Devices declared lost (keep-alive or N_RETRY exceeded).
    pub devices_lost: u64,
    /// Devices connected now (active, asleep or awake).
    pub devices_active: u64,
    /// Of those, devices asleep now.
    pub devices_asleep: u64,
    /// Messages for sleeping devices dropped by the buffer policy (QoS 0 when full or not kept;
    /// QoS 1/2 left unacknowledged at the broker when full).
    pub sleep_buffer_dropped: u64,
    /// CONNECTs refused by a per-source limit or the per-subnet connect rate.
    pub connects_refused_source: u64,
    /// CONNECTs refused by admission (`admission: listed`, or a binding not met).
    pub connects_refused_admission: u64,
    /// Devices ended by a reload whose admission rules no longer admit them.
    pub devices_refused_on_reload: u64,
    /// CONNECTs refused because the table was full and every device in it was talking.
    pub connects_refused_full: u64,
    /// Devices removed to make room for a newcomer (not connected, or silent since CONNECT).
    pub devices_evicted: u64,
    /// Devices declared lost because more than `limits.max_silent_downlink_bytes` were sent to
    /// them with nothing heard back.
    pub devices_silent_lost: u64,
    /// SUBSCRIBEs refused because the device had `limits.max_subscriptions_per_device`.
    pub subscriptions_refused: u64,
    /// PUBLISHes, REGISTERs and will topics refused because the topic is outside the device's
    /// `publish` patterns (answered "rejected: not supported"; nothing went upstream).
    pub publishes_denied: u64,
    /// SUBSCRIBEs refused because the filter reaches outside the device's `subscribe`
    /// patterns (SUBACK "rejected: not supported"; nothing went upstream).
    pub subscribes_denied: u64,
    /// QoS -1 PUBLISHes dropped by `qos_minus_one` (off, or topic or source not listed).
    pub qos_minus_one_denied: u64,
    /// PINGREQs with a ClientId from an address that ClientId's rule does not bind (a
    /// sleeping device's session would have moved there): dropped, the session stays.
    pub moves_refused: u64,
    /// Retained PUBLISHes on the status session (`status`): the gateway's `online` /
    /// `offline`, device states, Home Assistant discovery configs.
    pub status_publishes: u64,
    /// Times the status session was accepted again after it dropped.
    pub status_reconnects: u64,
    /// Device states not published: more than `limits.max_devices` pending while the status
    /// session was down, or a ClientId too long for a topic.
    pub status_dropped: u64,
    /// PUBLISH packets sent to the broker (first transmissions, not DUP re-sends) by MQTT QoS
    /// (0, 1, 2; a device's QoS -1 goes up as 0), and their payload octets.
    pub uplink_by_qos: [u64; 3],
    pub uplink_bytes_by_qos: [u64; 3],
    /// PUBLISH frames sent to devices (first transmissions) by QoS (0, 1, 2), and their
    /// payload octets.
    pub downlink_by_qos: [u64; 3],
    pub downlink_bytes_by_qos: [u64; 3],
    /// Upstream sessions the core asked the shell to open (devices' and its own).
    pub upstream_opens: u64,
}

impl Stats {
    pub(crate) fn count_uplink(&mut self, qos: mqtt::QoS, payload: usize) {
        let q = qos as usize;
        self.uplink_by_qos[q] += 1;
        self.uplink_bytes_by_qos[q] += payload as u64;
    }

    pub(crate) fn count_downlink(&mut self, qos: crate::codec::QoS, payload: usize) {
        let q = match qos {
            crate::codec::QoS::AtMostOnce | crate::codec::QoS::MinusOne => 0,
            crate::codec::QoS::AtLeastOnce => 1,
            crate::codec::QoS::ExactlyOnce => 2,
        };
        self.downlink_by_qos[q] += 1;
        self.downlink_bytes_by_qos[q] += payload as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_named_by_their_port_path_radio_and_node() {
        let names = ["0.0.0.0:1884".to_owned(), "/dev/ttyUSB0".to_owned()];
        let udp = DeviceAddr::udp(TransportId(0), "192.168.1.7:5000".parse().unwrap());
        let radio = DeviceAddr {
            transport: TransportId(1),
            peer: PeerAddr::Link(Bytes::from_static(&[0x00, 0x13, 0xa2, 0x00])),
            wireless_node_id: Some(Bytes::from_static(&[0x0a, 0x1b])),
        };
        let uart = DeviceAddr {
            transport: TransportId(1),
            peer: PeerAddr::Link(Bytes::new()),
            wireless_node_id: None,
        };
        let name = |addr| {
            PeerName {
                names: &names,
                addr,
            }
            .to_string()
        };
        assert_eq!(name(&udp), "udp 192.168.1.7:5000");
        assert_eq!(
            name(&radio),
            "serial /dev/ttyUSB0 radio 0013a200 via node 0a1b"
        );
        assert_eq!(name(&uart), "serial /dev/ttyUSB0");
        // Without names: the raw form.
        let raw = PeerName {
            names: &[],
            addr: &udp,
        };
        assert_eq!(raw.to_string(), udp.to_string());
    }
}
