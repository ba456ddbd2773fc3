//! What the device and the broker say on the upstream session, as `impl Device`: REGISTER,
//! uplink PUBLISH and its acks, the broker outage (parking, resume), SUBSCRIBE / UNSUBSCRIBE and
//! the subscriptions made again when a session is accepted. Ties uplink.rs, outage.rs and
//! subscriptions.rs to the session's packet-id space.
//!
//! Part of the orchestration layer (see `orchestrate/mod.rs`).
//! Owns: the upstream session's flows. Must never: hold state of its own, do I/O or read the
//! clock.

use std::time::Instant;

use tracing::info;

use super::super::subscriptions::{Gap, Subacked};
use super::super::types::puback_for;
use super::super::types::{HoldsPacketIds, IdSpace, Link};
use super::super::uplink::{self, Acked};
use super::super::Device;
use crate::codec::{
    Message, Publish, QoS, Regack, Register, ReturnCode, Suback, Subscribe, TopicFilter,
    Unsubscribe,
};
use crate::core::ctx::Ctx;
use crate::core::topics;
use crate::core::types::SessionId;
use crate::mqtt;

impl Device {
    pub(in crate::core::device) fn on_register(&mut self, ctx: &mut Ctx, r: Register) {
        // A device registers a topic to publish to it: outside its patterns it gets no id.
        if !self.may_publish(ctx, &r.topic_name, "REGISTER") {
            let regack = Regack {
                topic_id: 0,
                msg_id: r.msg_id,
                return_code: ReturnCode::NotSupported,
            };
            ctx.transmit(&self.addr, Message::Regack(regack));
            return;
        }
        let regack = uplink::register(ctx, &mut self.topics, r);
        if regack.return_code == ReturnCode::Accepted {
            self.save(ctx);
        }
        ctx.transmit(&self.addr, Message::Regack(regack));
    }

    /// The topic name of an uplink PUBLISH; answers PUBACK "invalid topic ID" when it has none,
    /// and PUBACK "rejected: not supported" when it is outside the device's `publish` patterns
    /// (at every QoS: spec §5.4.13 lets a PUBACK answer any PUBLISH in error); nothing goes
    /// upstream then.
    pub(in crate::core::device) fn uplink_topic(
        &self,
        ctx: &mut Ctx,
        p: &Publish,
    ) -> Option<String> {
        let topic = uplink::topic_name(ctx, &link!(self), &self.topics, p)?;
        if !self.may_publish(ctx, &topic, "PUBLISH") {
            ctx.transmit(&self.addr, puback_for(p, ReturnCode::NotSupported));
            return None;
        }
        Some(topic)
    }

    pub(in crate::core::device) fn on_publish(&mut self, ctx: &mut Ctx, p: Publish) {
        if self.session.is_none() || self.outage.resuming() {
            // The broker is away or the session not yet accepted again.
            self.park(ctx, p);
            return;
        }
        let Some(topic) = self.uplink_topic(ctx, &p) else {
            return;
        };
        let durable = self.durable(ctx);
        let ids = id_space!(self, ctx, [&self.subs, &self.outage]);
        self.up
            .on_publish(ctx, &link!(self), durable, topic, p, ids);
    }

    pub(in crate::core::device) fn on_pubrel(&mut self, ctx: &mut Ctx, msg_id: u16) {
        if self.outage.release(msg_id) {
            ctx.transmit(&self.addr, Message::Pubcomp { msg_id });
            return;
        }
        let durable = self.durable(ctx);
        self.up.on_pubrel(ctx, &link!(self), durable, msg_id);
    }

    pub(in crate::core::device) fn on_broker_puback(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        pkid: u16,
    ) {
        if self.outage.acked(ctx, &link!(self), pkid) {
            return;
        }
        let durable = self.durable(ctx);
        if self.up.on_broker_puback(ctx, &link!(self), durable, pkid) == Acked::Downgraded {
            self.note_downgrade(
                mqtt::QoS::ExactlyOnce,
                mqtt::QoS::AtLeastOnce,
                "PUBLISH answered with PUBACK",
            );
        }
        self.try_switch(ctx, now);
    }

    pub(in crate::core::device) fn on_broker_pubrec(&mut self, ctx: &mut Ctx, pkid: u16) {
        if self.outage.released(ctx, &link!(self), pkid) {
            return;
        }
        let durable = self.durable(ctx);
        self.up.on_broker_pubrec(ctx, &link!(self), durable, pkid);
    }

    pub(in crate::core::device) fn on_broker_pubcomp(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        pkid: u16,
    ) {
        if self.outage.acked(ctx, &link!(self), pkid) {
            return;
        }
        let durable = self.durable(ctx);
        self.up.on_broker_pubcomp(ctx, &link!(self), durable, pkid);
        self.try_switch(ctx, now);
    }

    // ---------------------------------------------------------------- outage (outage.rs)

    pub(in crate::core::device) fn reconnect(&mut self, ctx: &mut Ctx, _now: Instant) {
        self.outage.stop_waiting();
        if self.session.is_some() || !self.state.is_live() {
            return;
        }
        let connect = ctx.connect_packet(&self.client_id, false, self.last_will());
        self.session = Some(ctx.open(Some(self.id), connect, Some(self.open_for())));
        self.outage.set_resuming();
    }

    /// CONNACK on a session reopened after a restart or an outage.
    pub(in crate::core::device) fn on_resumed(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        session: SessionId,
        code: mqtt::ConnectReturnCode,
        session_present: bool,
    ) {
        self.outage.clear_resuming();
        match code {
            mqtt::ConnectReturnCode::Accepted => {
                self.outage.accepted();
                // The session was away: what the broker lost is subscribed again.
                self.session_accepted(ctx, session_present, Gap::Lapsed);
                let ids = id_space!(self, ctx, [&self.up, &self.subs]);
                self.outage.flush(ctx, &link!(self), session, ids);
                self.pump(ctx, now);
            }
            mqtt::ConnectReturnCode::ServerUnavailable => {
                // Still coming back: try again later.
                ctx.close(session, false);
                self.on_upstream_closed(ctx, now, session);
            }
            _ => {
                info!(client_id = %self.client_id, ?code, "broker refused the resumed session");
                ctx.close(session, false);
                self.outage.stop_waiting();
                self.session = None;
                self.broker_ended_session(ctx);
            }
        }
    }

    /// A PUBLISH while the broker is away. Returns after answering the device.
    pub(in crate::core::device) fn park(&mut self, ctx: &mut Ctx, p: Publish) {
        if !self.state.is_live() || self.conn.clean_session || !ctx.persistent() {
            return;
        }
        let Some(topic) = self.uplink_topic(ctx, &p) else {
            return;
        };
        self.outage.park(ctx, &link!(self), topic, p);
    }

    /// Logs, once per upstream session, that the broker gave less than the QoS asked for.
    pub(in crate::core::device) fn note_downgrade(
        &mut self,
        asked: mqtt::QoS,
        got: mqtt::QoS,
        what: &str,
    ) {
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

    // ---------------------------------------------------------------- subscriptions (subscriptions.rs)

    pub(in crate::core::device) fn on_subscribe(&mut self, ctx: &mut Ctx, s: Subscribe) {
        if self.session.is_some() && self.subscribe_restricted(ctx) {
            // The filter as the broker would see it; one that names nothing valid is refused
            // below as before.
            let filter = topics::unsubscribe_filter(&ctx.predefined, &s.topic);
            if filter.is_some_and(|f| !self.may_subscribe(ctx, &f)) {
                let topic_id = match s.topic {
                    TopicFilter::Predefined(id) => id,
                    _ => 0,
                };
                let suback = Suback {
                    qos: QoS::AtMostOnce,
                    topic_id,
                    msg_id: s.msg_id,
                    return_code: ReturnCode::NotSupported,
                };
                ctx.transmit(&self.addr, Message::Suback(suback));
                return;
            }
        }
        let ids = id_space!(self, ctx, [&self.up, &self.outage]);
        self.subs
            .on_subscribe(ctx, &link!(self), &mut self.topics, s, ids);
    }

    pub(in crate::core::device) fn on_broker_suback(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        pkid: u16,
        codes: &[mqtt::SubackCode],
    ) {
        let Some(acked) = self.subs.on_suback(&link!(self), pkid, codes.first()) else {
            return;
        };
        if let Subacked::Restored {
            changed: Some((asked, got)),
        } = acked
        {
            self.note_downgrade(asked, got, "subscription granted a lower QoS");
            self.save(ctx);
        }
        self.release_will_responses(ctx);
        if let Subacked::Device(reply) = acked {
            match reply.granted() {
                Some(qos) => {
                    info!(client_id = %self.client_id, filter = reply.filter(), qos = qos as u8, "device subscribed")
                }
                None => {
                    info!(client_id = %self.client_id, filter = reply.filter(), "broker refused the device's subscription")
                }
            }
            if let Some((asked, got)) = reply.downgraded() {
                self.note_downgrade(asked, got, "subscription granted a lower QoS");
            }
            let durable = self.durable(ctx);
            if self.subs.answer(ctx, &link!(self), durable, reply) {
                self.stored.mark_stored();
            }
        }
        self.try_switch(ctx, now);
    }

    pub(in crate::core::device) fn on_unsubscribe(&mut self, ctx: &mut Ctx, u: Unsubscribe) {
        let ids = id_space!(self, ctx, [&self.up, &self.outage]);
        self.subs.on_unsubscribe(ctx, &link!(self), u, ids);
    }

    pub(in crate::core::device) fn on_broker_unsuback(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        pkid: u16,
    ) {
        let durable = self.durable(ctx);
        self.subs.on_unsuback(ctx, &link!(self), durable, pkid);
        self.release_will_responses(ctx);
        self.try_switch(ctx, now);
    }

    /// The broker accepted the device's (new or resumed) session. Without a session at the
    /// broker, subscribe again to every filter the gateway knows for the device.
    pub(in crate::core::device) fn session_accepted(
        &mut self,
        ctx: &mut Ctx,
        session_present: bool,
        gap: Gap,
    ) {
        let remake = self.conn.clean_session || !session_present;
        // In aggregating mode a device's session never is at the broker: nothing was lost.
        if remake
            && self.session.is_some()
            && self.subs.count() > 0
            && !self.conn.clean_session
            && ctx.settings.aggregate.is_none()
        {
            info!(
                client_id = %self.client_id,
                subscriptions = self.subs.count(),
                "broker lost the device's session (CONNACK Session Present 0); subscribing again"
            );
            self.down.forget_left_with_broker(&self.client_id);
        }
        let ids = id_space!(self, ctx, [&self.up, &self.outage]);
        self.subs
            .session_accepted(ctx, &link!(self), remake, gap, ids);
    }
}
