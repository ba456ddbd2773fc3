//! Replacing the upstream session while the device stays, as `impl Device`: will updates
//! (WILLTOPICUPD / WILLMSGUPD), opening the replacement once no QoS flow is open, its CONNACK,
//! and the WILLTOPICRESP / WILLMSGRESP released once subscriptions are back.
//!
//! Part of the orchestration layer (see `orchestrate/mod.rs`).
//! Owns: the session-switch sequence. Must never: hold state of its own, do I/O or read the
//! clock.

use std::time::Instant;

use bytes::Bytes;
use tracing::info;

use super::super::subscriptions::Gap;
use super::super::timers::DeviceTimer;
use super::super::types::Link;
use super::super::Device;
use crate::codec::{Message, ReturnCode, WillTopic};
use crate::core::ctx::Ctx;
use crate::mqtt;

impl Device {
    // ---------------------------------------------------------------- session switch (session_switch.rs)

    pub(in crate::core::device) fn on_will_topic_upd(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        w: Option<WillTopic>,
    ) {
        match w {
            Some(w)
                if !mqtt::valid_topic_name(&w.topic)
                    || !self.may_publish(ctx, &w.topic, "will topic") =>
            {
                ctx.transmit(
                    &self.addr,
                    Message::WillTopicResp {
                        return_code: ReturnCode::NotSupported,
                    },
                );
                return;
            }
            // An empty WILLTOPICUPD deletes topic and message (spec §6.4).
            w => self.conn.set_will_topic(w),
        }
        if self.switch.want_for_will(true) {
            self.try_switch(ctx, now);
        }
    }

    pub(in crate::core::device) fn on_will_msg_upd(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        msg: Bytes,
    ) {
        self.conn.set_will_msg(msg);
        if self.switch.want_for_will(false) {
            self.try_switch(ctx, now);
        }
    }

    /// Opens the replacement session a switch wants, once no QoS flow is open on the old one
    /// (so nothing in flight is lost or doubled).
    pub(in crate::core::device) fn try_switch(&mut self, ctx: &mut Ctx, now: Instant) {
        let idle = self.up.broker_idle()
            && self.subs.pending_len() == 0
            && !self.down.owes_broker()
            && !self.outage.resuming();
        if !self.switch.waiting() || !idle || !self.state.is_live() {
            return;
        }
        if let Some(old) = self.session.take() {
            ctx.close(old, true);
        }
        let connect =
            ctx.connect_packet(&self.client_id, self.conn.clean_session, self.last_will());
        let device = Some(self.open_for());
        self.switch.opened(ctx.open(Some(self.id), connect, device));
        // Bounded like the first CONNECT: without it a silent broker leaves the device
        // Active with no upstream session for as long as it keeps pinging.
        self.timers.arm(
            DeviceTimer::SwitchConnack,
            now + ctx.settings.upstream_connect_timeout,
        );
    }

    pub(in crate::core::device) fn finish_switch(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        code: mqtt::ConnectReturnCode,
        session_present: bool,
    ) {
        let Some(done) = self.switch.answered() else {
            return;
        };
        let s = done.session;
        if code != mqtt::ConnectReturnCode::Accepted {
            info!(client_id = %self.client_id, ?code, "broker refused the session carrying the new will");
            ctx.close(s, false);
            // The old session is already gone: treat the refusal like the broker closing the
            // device's only session, so the device is told to CONNECT again.
            self.session = Some(s);
            self.on_upstream_closed(ctx, now, s);
            return;
        }
        self.session = Some(s);
        self.timers.clear_upstream_wait();
        self.save(ctx);
        // A clean session ended with the old connection (and a persistent one may have been
        // lost): subscribe again, without re-delivering retained messages.
        self.session_accepted(ctx, session_present, Gap::None);
        self.switch.owe_will_responses(&done);
        self.release_will_responses(ctx);
        for m in self.switch.take_held() {
            self.on_active_message(ctx, now, m);
        }
        if done.again {
            self.switch.want();
            self.try_switch(ctx, now);
        }
        self.pump(ctx, now);
    }

    pub(in crate::core::device) fn release_will_responses(&mut self, ctx: &mut Ctx) {
        let remaking = self.subs.remaking();
        self.switch
            .release_will_responses(ctx, &link!(self), remaking);
    }
}
