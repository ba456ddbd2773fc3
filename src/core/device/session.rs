//! The device's upstream session across switches: will updates (§6.4, MQTT 3.1.1 can change a
//! will only by reconnecting), a sleeping device reconnecting with a new will (§6.3, §6.14),
//! and what a CONNACK's Session Present says about the subscriptions the broker still has.
//!
//! Rules kept here:
//! - A clean-session-0 CONNECT keeps everything, with or without a new will: the topic ids and
//!   the buffered messages (QoS 0 too) carry on; the new will goes upstream on a replacement
//!   session once no QoS flow is open on the old one, like WILLTOPICUPD.
//! - When the broker has no session (clean session, or Session Present 0 on a persistent one)
//!   the gateway subscribes again to every filter it knows for the device.
//! - Retained messages that arrive because the *gateway* re-subscribed while the device's
//!   subscription never lapsed (a will update's switch) are acknowledged to the broker and not
//!   delivered: the device made no new SUBSCRIBE (MQTT 3.1.1 §3.3.1.3 sets RETAIN=1 only for a
//!   new subscription; a new publish on a live subscription comes with RETAIN=0 and passes).
//!   After a real gap (restart, outage, the device away) they are delivered: they are how the
//!   device catches up with what the lost session missed.

use std::time::Instant;

use bytes::Bytes;
use tracing::info;

use super::{Device, DeviceState, DeviceTimer, WillUpdate};
use crate::codec::{Message, ReturnCode, WillTopic};
use crate::core::ctx::Ctx;
use crate::mqtt;

impl Device {
    // ---------------------------------------------------------------- CONNECT(clean 0, will 1) from sleep

    /// A sleeping device sends CONNECT with clean session 0 and Will=1: prompt for the will
    /// but keep the upstream session, the topic ids and the buffer.
    pub(super) fn prompt_keeping_session(&mut self, ctx: &mut Ctx, now: Instant) {
        self.rewill = true;
        self.set_state(ctx, DeviceState::AwaitWillTopic);
        self.timers
            .arm(DeviceTimer::WillPrompt, now + super::will_prompt_time(ctx));
        ctx.transmit(&self.addr, Message::WillTopicReq);
    }

    /// The will prompt of a kept session is done: Active on the same session, the buffer is
    /// delivered, and the new will goes upstream by a session switch.
    pub(super) fn resume_with_new_will(&mut self, ctx: &mut Ctx, now: Instant) {
        self.rewill = false;
        self.timers.clear_upstream_wait();
        self.set_state(ctx, DeviceState::Active);
        ctx.transmit(
            &self.addr,
            Message::Connack {
                return_code: ReturnCode::Accepted,
            },
        );
        info!(client_id = %self.client_id, "sleeping device reconnected with a new will; session kept");
        self.will_update.get_or_insert_with(Default::default);
        self.resume_inflight(ctx, now);
        self.pump(ctx, now);
    }

    /// The will prompt of a kept session failed or stalled: end the session as a fresh CONNECT
    /// would have (gracefully, so the old will does not fire).
    pub(super) fn abandon_kept_session(&mut self, ctx: &mut Ctx) -> bool {
        if !self.rewill {
            return false;
        }
        self.end_sessions(ctx, true, DeviceState::Disconnected);
        true
    }

    // ---------------------------------------------------------------- will update (§6.4)

    pub(super) fn on_will_topic_upd(&mut self, ctx: &mut Ctx, now: Instant, w: Option<WillTopic>) {
        match w {
            Some(w) if !mqtt::valid_topic_name(&w.topic) => {
                ctx.transmit(
                    &self.addr,
                    Message::WillTopicResp {
                        return_code: ReturnCode::NotSupported,
                    },
                );
                return;
            }
            Some(w) => self.will_topic = Some(w),
            None => {
                // An empty WILLTOPICUPD deletes topic and message (spec §6.4).
                self.will_topic = None;
                self.will_msg = Bytes::new();
            }
        }
        self.will_update
            .get_or_insert_with(Default::default)
            .respond_topic = true;
        self.request_will_update(ctx, now);
    }

    pub(super) fn on_will_msg_upd(&mut self, ctx: &mut Ctx, now: Instant, msg: Bytes) {
        self.will_msg = msg;
        self.will_update
            .get_or_insert_with(Default::default)
            .respond_msg = true;
        self.request_will_update(ctx, now);
    }

    fn request_will_update(&mut self, ctx: &mut Ctx, now: Instant) {
        if let Some(w) = self.will_update.as_mut() {
            if w.new_session.is_some() {
                w.again = true;
                return;
            }
        }
        self.try_will_update(ctx, now);
    }

    /// Replaces the upstream session to carry the new will, once no QoS flow is open on the
    /// old one (so nothing in flight is lost or doubled).
    pub(super) fn try_will_update(&mut self, ctx: &mut Ctx, now: Instant) {
        let idle = self.up.broker_idle()
            && self.subs.pending_len() == 0
            && !self.down.owes_broker()
            && !self.outage.resuming();
        let Some(w) = self.will_update.as_mut() else {
            return;
        };
        if w.new_session.is_some() || !idle || !self.state.is_live() {
            return;
        }
        if let Some(old) = self.session.take() {
            ctx.close(old, true);
        }
        let connect = ctx.connect_packet(&self.client_id, self.clean_session, self.last_will());
        let s = ctx.open(Some(self.id), connect);
        if let Some(w) = self.will_update.as_mut() {
            w.new_session = Some(s);
        }
        // Bounded like the first CONNECT: without it a silent broker leaves the device
        // Active with no upstream session for as long as it keeps pinging.
        self.timers.arm(
            DeviceTimer::SwitchConnack,
            now + ctx.settings.upstream_connect_timeout,
        );
    }

    pub(super) fn finish_will_update(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        code: mqtt::ConnectReturnCode,
        session_present: bool,
    ) {
        let Some(w) = self.will_update.take() else {
            return;
        };
        let Some(s) = w.new_session else { return };
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
        self.session_accepted(ctx, session_present, super::Gap::None);
        // The device hears the update applied once the new session carries its subscriptions
        // again, so nothing published after the response can miss it.
        let (t, m) = self.will_resp.unwrap_or_default();
        self.will_resp = Some((t || w.respond_topic, m || w.respond_msg));
        self.release_will_responses(ctx);
        let held: Vec<Message> = self.held.drain(..).collect();
        for m in held {
            self.on_active_message(ctx, now, m);
        }
        if w.again {
            self.will_update = Some(WillUpdate::default());
            self.try_will_update(ctx, now);
        }
        self.pump(ctx, now);
    }

    /// Sends the WILLTOPICRESP / WILLMSGRESP owed once no re-subscription is outstanding.
    pub(super) fn release_will_responses(&mut self, ctx: &mut Ctx) {
        if self.subs.remaking() {
            return;
        }
        let Some((topic, msg)) = self.will_resp.take() else {
            return;
        };
        let accepted = ReturnCode::Accepted;
        if topic {
            ctx.transmit(
                &self.addr,
                Message::WillTopicResp {
                    return_code: accepted,
                },
            );
        }
        if msg {
            ctx.transmit(
                &self.addr,
                Message::WillMsgResp {
                    return_code: accepted,
                },
            );
        }
    }
}
