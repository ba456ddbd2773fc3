//! Gateway discovery (spec §6.1): the GWINFO that answers a SEARCHGW, and ADVERTISE.
//!
//! A SEARCHGW reaches the gateway one of three ways, and the GWINFO goes back the same way with
//! the SEARCHGW's radius (§5.4.3: "with the radius as indicated in the SEARCHGW message"):
//! - unicast to a transport: GWINFO unicast to the sender (an IP unicast has no radius);
//! - through a forwarder: GWINFO encapsulated for the same node, the radius in the Ctrl octet
//!   (§5.5), which the forwarder uses for its broadcast;
//! - heard on a multicast group: GWINFO to that group ([`Output::Multicast`]), the radius given
//!   to the shell, which makes it the IP scope (TTL / hop limit).
//!
//! Must never: do I/O, read the clock.
//! Owns: the GWINFO and ADVERTISE frames and where they go.

use tracing::debug;

use super::ctx::Ctx;
use super::types::{DeviceAddr, GroupId, Output};
use crate::codec::Message;

/// The radius bits of the Ctrl octet (§5.5 Table 29).
const CTRL_RADIUS_MASK: u8 = 0b11;

/// The Ctrl octet for a broadcast of `radius` hops through a forwarder. Ctrl holds two bits: a
/// radius wider than 3 becomes 0 ("whole network"), since a narrower one could miss the
/// searcher.
pub(crate) fn ctrl_for_radius(radius: u8) -> u8 {
    if radius > CTRL_RADIUS_MASK {
        0
    } else {
        radius
    }
}

fn gwinfo(ctx: &Ctx) -> Message {
    Message::GwInfo {
        gw_id: ctx.settings.gateway_id,
        gw_add: None,
    }
}

/// Answers a SEARCHGW sent to the gateway's own address (directly or through a forwarder).
pub(crate) fn answer_unicast(ctx: &mut Ctx, from: &DeviceAddr, radius: u8) {
    let message = gwinfo(ctx);
    if let Some(frame) = ctx.encode_ctrl(from, message, ctrl_for_radius(radius)) {
        ctx.transmit_frame(from, frame);
    }
}

/// A frame heard on multicast group `group`. Only SEARCHGW is served there: everything else a
/// device says goes to the gateway's unicast address (ADVERTISE and GWINFO heard on the group
/// are other gateways', or our own looped back).
pub(crate) fn heard_on_group(ctx: &mut Ctx, group: GroupId, from: &DeviceAddr, message: Message) {
    match message {
        Message::SearchGw { radius } => {
            if let Ok(frame) = gwinfo(ctx).to_bytes() {
                ctx.out.push_back(Output::Multicast {
                    group,
                    radius,
                    frame,
                });
            }
        }
        Message::Advertise { .. } | Message::GwInfo { .. } => {}
        other => {
            ctx.stats.wrong_state += 1;
            debug!(peer = %ctx.peer(from), group = group.0, msg = ?other.msg_type(), "only SEARCHGW is served on a multicast group; dropped");
        }
    }
}

/// The ADVERTISE frame for a period of `interval_secs`.
pub(crate) fn advertise(ctx: &mut Ctx, interval_secs: u64) {
    let msg = Message::Advertise {
        gw_id: ctx.settings.gateway_id,
        duration: u16::try_from(interval_secs).unwrap_or(u16::MAX),
    };
    if let Ok(frame) = msg.to_bytes() {
        ctx.out.push_back(Output::Broadcast { frame });
    }
}
