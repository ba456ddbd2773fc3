//! Brokers that do not do QoS 2. RabbitMQ answers a QoS 2 PUBLISH with PUBACK (it stores it
//! as QoS 1) and grants QoS 1 to QoS 2 subscriptions. The device's own exchange with the
//! gateway stays the one the spec gives it: its QoS 2 PUBLISH gets PUBREC, its PUBREL gets
//! PUBCOMP from the gateway, and nothing goes upstream twice (a re-sent PUBLISH is answered
//! from the flow, never forwarded again). The downgrade is logged once per session.

use tracing::info;

use super::{Device, UpStage};
use crate::codec::{self, Message};
use crate::core::ctx::Ctx;
use crate::core::types::Output;
use crate::mqtt;

impl Device {
    /// PUBACK on a flow the device sent at QoS 2. Returns false when `pkid` is no such flow.
    pub(super) fn on_qos2_acked_as_qos1(&mut self, ctx: &mut Ctx, pkid: u16) -> bool {
        let Some(f) = self.up.get_mut(&pkid) else {
            return false;
        };
        if f.qos != codec::QoS::ExactlyOnce {
            return false;
        }
        if f.stage != UpStage::AwaitBroker || f.broker_done {
            return true; // a repeated PUBACK
        }
        f.stage = UpStage::AwaitPubrel;
        f.broker_done = true;
        let msg_id = f.msg_id;
        self.note_downgrade(
            mqtt::QoS::ExactlyOnce,
            mqtt::QoS::AtLeastOnce,
            "PUBLISH answered with PUBACK",
        );
        let pubrec = Message::Pubrec { msg_id };
        if self.persistent(ctx) {
            // PUBREC promises the device one copy, across a restart too: durable first.
            self.save_qos2(ctx, pkid);
            if let Some(frame) = ctx.encode(&self.addr, pubrec) {
                ctx.after_persist(Output::Transmit {
                    to: self.addr.clone(),
                    frame,
                });
            }
        } else {
            ctx.transmit(&self.addr, pubrec);
        }
        true
    }

    /// The device's PUBREL for a flow the broker already took (as QoS 1): PUBCOMP from here.
    pub(super) fn complete_acked_qos2(&mut self, ctx: &mut Ctx, pkid: u16) -> bool {
        if !self.up.get(&pkid).is_some_and(|f| f.broker_done) {
            return false;
        }
        let Some(f) = self.finish_up(ctx, pkid) else {
            return true;
        };
        let pubcomp = Message::Pubcomp { msg_id: f.msg_id };
        if self.persistent(ctx) {
            // Only once the flow is gone from the store may the device reuse its MsgId.
            if let Some(frame) = ctx.encode(&self.addr, pubcomp) {
                ctx.after_persist(Output::Transmit {
                    to: self.addr.clone(),
                    frame,
                });
            }
        } else {
            ctx.transmit(&self.addr, pubcomp);
        }
        true
    }

    /// Logs, once per upstream session, that the broker gave less than the QoS asked for.
    pub(super) fn note_downgrade(&mut self, asked: mqtt::QoS, got: mqtt::QoS, what: &str) {
        if got >= asked || self.session.is_none() || self.downgrade_noted == self.session {
            return;
        }
        self.downgrade_noted = self.session;
        info!(
            client_id = %self.client_id,
            asked = asked as u8,
            got = got as u8,
            what,
            "broker downgrades QoS (logged once per session); the device's QoS 2 exchange with the gateway is completed as the spec has it"
        );
    }
}
