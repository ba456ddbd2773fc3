//! One message on its way to the device (a REGISTER or a PUBLISH), what the broker is owed for
//! it, and releasing it (the broker's PUBACK / PUBREC, the durable copy deleted).
//!
//! Owns nothing; part of downlink.rs. Must never: queue, send to the device, or look at the
//! device's state.

use bytes::Bytes;

use crate::codec::{self, Message, Publish, TopicRef};
use crate::core::ctx::Ctx;
use crate::core::device::types::Link;
use crate::core::persist;
use crate::core::types::{PersistOp, Table};
use crate::mqtt;

/// What the broker is owed once the device has a downlink message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BrokerAck {
    None,
    PubAck(u16),
    PubRec(u16),
}

#[derive(Debug, Clone)]
pub(super) enum Down {
    Register {
        topic_id: u16,
        name: String,
    },
    Publish {
        topic: TopicRef,
        qos: codec::QoS,
        retain: bool,
        data: Bytes,
        ack: BrokerAck,
        /// Already re-registered once after the device said "invalid topic id".
        reregistered: bool,
        /// Sequence of its durable copy (a sleeping device's message already acknowledged to
        /// the broker); deleted once the device has it.
        stored: Option<u64>,
    },
}

impl Down {
    /// A copy is in the store (the broker was already acknowledged).
    pub(super) fn is_stored(&self) -> bool {
        matches!(
            self,
            Down::Publish {
                stored: Some(_),
                ..
            }
        )
    }

    pub(super) fn is_qos0(&self) -> bool {
        matches!(
            self,
            Down::Publish {
                qos: codec::QoS::AtMostOnce | codec::QoS::MinusOne,
                ..
            }
        )
    }
}

/// The device has the message, or never will: owe the broker nothing more and forget the
/// durable copy.
pub(super) fn release(ctx: &mut Ctx, link: &Link, item: &Down) {
    if let Down::Publish { ack, stored, .. } = item {
        if let Some(session) = link.session {
            match *ack {
                BrokerAck::None => {}
                BrokerAck::PubAck(packet_id) => {
                    ctx.send(session, mqtt::Packet::PubAck { packet_id })
                }
                BrokerAck::PubRec(packet_id) => {
                    ctx.send(session, mqtt::Packet::PubRec { packet_id })
                }
            }
        }
        if let Some(n) = stored {
            ctx.persist(PersistOp::Delete {
                table: Table::Buffer,
                key: persist::numbered_key(link.client_id, *n),
            });
        }
    }
}

pub(super) fn drop_down(ctx: &mut Ctx, link: &Link, item: Down) {
    ctx.stats.downlink_dropped += 1;
    // Acknowledged so the broker's in-flight window does not stall on a message the device
    // can never take.
    release(ctx, link, &item);
}

pub(super) fn publish_message(item: &Down, msg_id: u16, dup: bool) -> Message {
    match item {
        Down::Publish {
            topic,
            qos,
            retain,
            data,
            ..
        } => Message::Publish(Publish {
            dup,
            qos: *qos,
            retain: *retain,
            topic: *topic,
            msg_id,
            data: data.clone(),
        }),
        Down::Register { .. } => Message::PingResp, // unreachable by construction
    }
}
