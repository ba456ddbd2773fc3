//! The connect sequence and its end, as `impl Device`: sleep and wake (§6.14), CONNECT with
//! the will prompt (WILLTOPICREQ / WILLMSGREQ), opening the upstream session and the broker's
//! CONNACK, and every way the sessions end (DISCONNECT, loss, the broker closing them).
//!
//! Part of the orchestration layer (see `orchestrate/mod.rs`).
//! Owns: the connect and teardown sequences. Must never: hold state of its own, do I/O or read
//! the clock.

use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, info};

use super::super::connect::{will_prompt_time, Begin};
use super::super::subscriptions::Gap;
use super::super::timers::DeviceTimer;
use super::super::types::{DeviceState, HoldsPacketIds, Link};
use super::super::Device;
use crate::codec::{self, Message, ReturnCode, WillTopic};
use crate::core::bridge;
use crate::core::ctx::Ctx;
use crate::core::types::{OpenFor, SessionId};
use crate::mqtt;

impl Device {
    // ---------------------------------------------------------------- sleep (§6.14)

    /// DISCONNECT with a Duration from a live device: Asleep, upstream session kept.
    pub(in crate::core) fn on_sleep(&mut self, ctx: &mut Ctx, now: Instant, duration: u16) {
        self.sleep.start(duration);
        self.go_to_sleep(ctx, now);
        ctx.transmit(&self.addr, Message::Disconnect { duration: None });
        info!(client_id = %self.client_id, duration, "device asleep");
    }

    pub(in crate::core::device) fn go_to_sleep(&mut self, ctx: &mut Ctx, now: Instant) {
        self.set_state(ctx, DeviceState::Asleep);
        self.timers
            .arm(DeviceTimer::Sleep, self.sleep.deadline(now));
    }

    /// PINGREQ from an Asleep (or Awake) device: deliver the buffer, then PINGRESP.
    pub(in crate::core) fn on_wake(&mut self, ctx: &mut Ctx, now: Instant) {
        if self.state == DeviceState::Awake {
            return; // a re-sent PINGREQ: the flush goes on, PINGRESP comes last
        }
        info!(client_id = %self.client_id, buffered = self.down.depth().0, "device awake");
        self.set_state(ctx, DeviceState::Awake);
        self.resume_inflight(ctx, now);
        self.pump(ctx, now);
    }

    /// Sends what was in flight when the device fell asleep again at once (DUP), with a fresh
    /// retry budget.
    pub(in crate::core::device) fn resume_inflight(&mut self, ctx: &mut Ctx, now: Instant) {
        self.down.resume(ctx, &link!(self), now);
    }

    // ---------------------------------------------------------------- connect

    /// A CONNECT from this device (new, repeated, or taking over). The caller has bound `addr`.
    pub(in crate::core) fn on_connect(&mut self, ctx: &mut Ctx, now: Instant, c: &codec::Connect) {
        let sleeping = matches!(self.state, DeviceState::Asleep | DeviceState::Awake);
        let (has_session, resuming) = (self.session.is_some(), self.outage.resuming());
        let begin = self.conn.begin(c, sleeping, has_session, resuming);
        self.last_heard = now;
        match begin {
            // The new will needs a new upstream session; it is made once the device has its
            // buffer (see session_switch.rs), so nothing buffered is lost to the switch.
            Begin::PromptKeepingSession => self.prompt_keeping_session(ctx, now),
            Begin::KeepSession => {
                // Leaving sleep for Active (spec §6.14): the upstream session, the topic ids
                // and the buffered messages carry on; the buffer is delivered now.
                self.conn.rewill = false;
                self.timers.clear_upstream_wait();
                self.set_state(ctx, DeviceState::Active);
                ctx.transmit(
                    &self.addr,
                    Message::Connack {
                        return_code: ReturnCode::Accepted,
                    },
                );
                self.resume_inflight(ctx, now);
                self.pump(ctx, now);
            }
            Begin::AwaitResumed => {
                // Answer with the resumed session's CONNACK rather than open a second
                // connection with the same ClientId racing the first at the broker.
                self.outage.clear_resuming();
                self.topics.mark_all_unknown();
                self.set_state(ctx, DeviceState::AwaitBroker);
                self.timers.arm(
                    DeviceTimer::BrokerConnack,
                    now + ctx.settings.upstream_connect_timeout,
                );
            }
            Begin::Fresh { will } => {
                if let Some(old) = self.session.take() {
                    // The device restarted its connection: end the old session without its will.
                    ctx.close(old, true);
                }
                self.abandon_switch(ctx, true);
                self.reset_flows(ctx);
                self.conn.clean_session = c.clean_session;
                if c.clean_session {
                    // A clean session starts from nothing, in the store too.
                    self.forget(ctx);
                    self.down.clear_queue();
                    self.topics.clear();
                    self.subs.clear();
                    self.conn.set_will_topic(None);
                } else {
                    // Ids stay stable but the device is told them again before use (§6.10).
                    self.topics.mark_all_unknown();
                }
                if will {
                    self.set_state(ctx, DeviceState::AwaitWillTopic);
                    self.timers
                        .arm(DeviceTimer::WillPrompt, now + will_prompt_time(ctx));
                    ctx.transmit(&self.addr, Message::WillTopicReq);
                } else {
                    self.open_upstream(ctx, now);
                }
            }
        }
    }

    pub(in crate::core) fn on_will_topic(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        w: Option<WillTopic>,
    ) {
        if self.state != DeviceState::AwaitWillTopic {
            ctx.stats.wrong_state += 1;
            return;
        }
        match w {
            Some(w)
                if mqtt::valid_topic_name(&w.topic)
                    && self.may_publish(ctx, &w.topic, "will topic") =>
            {
                self.conn.set_will_topic(Some(w));
                self.set_state(ctx, DeviceState::AwaitWillMsg);
                self.timers
                    .arm(DeviceTimer::WillPrompt, now + will_prompt_time(ctx));
                ctx.transmit(&self.addr, Message::WillMsgReq);
            }
            Some(w) => {
                // Invalid, or outside its publish patterns (counted and logged by may_publish).
                debug!(client_id = %self.client_id, topic = %w.topic, "will topic refused");
                if self.abandon_kept_session(ctx) {
                    ctx.transmit(
                        &self.addr,
                        Message::Connack {
                            return_code: ReturnCode::NotSupported,
                        },
                    );
                } else {
                    self.fail_connect(ctx, ReturnCode::NotSupported);
                }
            }
            None => {
                // The empty WILLTOPIC deletes the will (spec §6.3); no message follows.
                self.conn.set_will_topic(None);
                self.will_given(ctx, now);
            }
        }
    }

    pub(in crate::core) fn on_will_msg(&mut self, ctx: &mut Ctx, now: Instant, msg: Bytes) {
        if self.state != DeviceState::AwaitWillMsg {
            ctx.stats.wrong_state += 1;
            return;
        }
        self.conn.set_will_msg(msg);
        self.will_given(ctx, now);
    }

    /// The will prompt is complete: open the session carrying it, or carry on with the kept
    /// one of a sleeping device.
    pub(in crate::core::device) fn will_given(&mut self, ctx: &mut Ctx, now: Instant) {
        if self.conn.rewill {
            self.resume_with_new_will(ctx, now);
        } else {
            self.open_upstream(ctx, now);
        }
    }

    /// A sleeping device sends CONNECT with clean session 0 and Will=1: prompt for the will
    /// but keep the upstream session, the topic ids and the buffer.
    pub(in crate::core::device) fn prompt_keeping_session(&mut self, ctx: &mut Ctx, now: Instant) {
        self.conn.rewill = true;
        self.set_state(ctx, DeviceState::AwaitWillTopic);
        self.timers
            .arm(DeviceTimer::WillPrompt, now + will_prompt_time(ctx));
        ctx.transmit(&self.addr, Message::WillTopicReq);
    }

    /// The will prompt of a kept session is done: Active on the same session, the buffer is
    /// delivered, and the new will goes upstream by a session switch.
    pub(in crate::core::device) fn resume_with_new_will(&mut self, ctx: &mut Ctx, now: Instant) {
        self.conn.rewill = false;
        self.timers.clear_upstream_wait();
        self.set_state(ctx, DeviceState::Active);
        ctx.transmit(
            &self.addr,
            Message::Connack {
                return_code: ReturnCode::Accepted,
            },
        );
        info!(client_id = %self.client_id, "sleeping device reconnected with a new will; session kept");
        self.switch.want();
        self.resume_inflight(ctx, now);
        self.pump(ctx, now);
    }

    /// The will prompt of a kept session failed or stalled: end the session as a fresh CONNECT
    /// would have (gracefully, so the old will does not fire).
    pub(in crate::core::device) fn abandon_kept_session(&mut self, ctx: &mut Ctx) -> bool {
        if !self.conn.rewill {
            return false;
        }
        self.end_sessions(ctx, true, DeviceState::Disconnected);
        true
    }

    /// Whose session an `Output::Open` is, for the shell's credentials.
    pub(in crate::core::device) fn open_for(&self) -> OpenFor {
        OpenFor {
            client_id: self.client_id.clone(),
            transport: self.addr.transport,
            rule: self.rule,
        }
    }

    pub(in crate::core::device) fn last_will(&self) -> Option<mqtt::LastWill> {
        self.conn.last_will()
    }

    pub(in crate::core::device) fn open_upstream(&mut self, ctx: &mut Ctx, now: Instant) {
        let connect =
            ctx.connect_packet(&self.client_id, self.conn.clean_session, self.last_will());
        self.session = Some(ctx.open(Some(self.id), connect, Some(self.open_for())));
        self.set_state(ctx, DeviceState::AwaitBroker);
        self.timers.arm(
            DeviceTimer::BrokerConnack,
            now + ctx.settings.upstream_connect_timeout,
        );
    }

    pub(in crate::core::device) fn fail_connect(&mut self, ctx: &mut Ctx, rc: ReturnCode) {
        if let Some(s) = self.session.take() {
            ctx.close(s, true);
        }
        self.set_state(ctx, DeviceState::Disconnected);
        self.timers.clear_upstream_wait();
        ctx.transmit(&self.addr, Message::Connack { return_code: rc });
    }

    pub(in crate::core::device) fn on_connack(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        code: mqtt::ConnectReturnCode,
        session_present: bool,
    ) {
        if code != mqtt::ConnectReturnCode::Accepted {
            info!(client_id = %self.client_id, ?code, "broker refused the device's session");
            self.fail_connect(ctx, bridge::connack_code(code));
            return;
        }
        self.set_state(ctx, DeviceState::Active);
        self.timers.clear_upstream_wait();
        self.last_heard = now;
        info!(client_id = %self.client_id, peer = %ctx.peer(&self.addr), clean_session = self.conn.clean_session, will = self.conn.will_topic().is_some(), keep_alive = self.conn.keep_alive_secs(), "device connected");
        ctx.transmit(
            &self.addr,
            Message::Connack {
                return_code: ReturnCode::Accepted,
            },
        );
        self.session_accepted(ctx, session_present, Gap::Lapsed);
        self.pump(ctx, now);
    }

    // ---------------------------------------------------------------- teardown

    /// The device is gone without DISCONNECT: drop the upstream session ungracefully so the
    /// broker publishes the will.
    /// The device is gone without DISCONNECT: its will fires. One info line with `why` and
    /// what was still pending toward it and from it.
    pub(in crate::core) fn lose(&mut self, ctx: &mut Ctx, why: &'static str) {
        let (queued, queued_bytes) = self.down.depth();
        info!(
            client_id = %self.client_id,
            peer = %ctx.peer(&self.addr),
            why,
            queued,
            queued_bytes,
            inflight_down = self.down.has_inflight(),
            inflight_up = self.up.held() + self.outage.held(),
            "device lost"
        );
        self.end_sessions(ctx, false, DeviceState::Lost);
        ctx.stats.devices_lost += 1;
    }

    /// Ends the upstream session(s) — with DISCONNECT when `graceful`, so no will — voids the
    /// flows tied to them and moves to `state`.
    pub(in crate::core::device) fn end_sessions(
        &mut self,
        ctx: &mut Ctx,
        graceful: bool,
        state: DeviceState,
    ) {
        if let Some(s) = self.session.take() {
            ctx.close(s, graceful);
        }
        self.abandon_switch(ctx, graceful);
        self.reset_flows(ctx);
        self.set_state(ctx, state);
        self.timers.clear_upstream_wait();
    }

    /// DISCONNECT from the device: a clean MQTT DISCONNECT upstream (no will).
    pub(in crate::core) fn on_disconnect(&mut self, ctx: &mut Ctx) {
        info!(client_id = %self.client_id, "device disconnected");
        self.end_sessions(ctx, true, DeviceState::Disconnected);
        if self.conn.clean_session {
            self.topics.clear();
            self.subs.clear();
        }
        ctx.transmit(&self.addr, Message::Disconnect { duration: None });
    }

    /// Ends whatever upstream session a device that is not connected still holds (a sleeper's,
    /// one being resumed), with DISCONNECT so the broker discards its will; nothing is sent to
    /// the device.
    pub(in crate::core) fn end_quietly(&mut self, ctx: &mut Ctx) {
        self.end_sessions(ctx, true, DeviceState::Disconnected);
    }

    /// Evicted for a newcomer (not heard since its CONNECT): told to connect again, its
    /// session ended without its will, and lost to `status` (it did not say DISCONNECT).
    pub(in crate::core) fn on_evicted(&mut self, ctx: &mut Ctx) {
        self.end_sessions(ctx, true, DeviceState::Lost);
        ctx.transmit(&self.addr, Message::Disconnect { duration: None });
    }

    /// The broker closed the device's session (or could not be reached).
    pub(in crate::core) fn on_upstream_closed(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        session: SessionId,
    ) {
        if self.switch.opening() == Some(session) || self.session == Some(session) {
            match self.state {
                DeviceState::AwaitBroker => {
                    self.session = None;
                    info!(client_id = %self.client_id, "broker unreachable; CONNACK congestion");
                    self.fail_connect(ctx, ReturnCode::Congestion);
                }
                state if state.is_live() && self.durable(ctx) => {
                    // A persistent session with a store rides the outage out: the device stays
                    // connected, its QoS 1/2 messages are parked, the session is resumed.
                    self.session = None;
                    self.abandon_switch(ctx, false);
                    self.reset_flows(ctx);
                    self.outage.start(now, self.retry_interval, &self.client_id);
                }
                _ => {
                    self.session = None;
                    self.broker_ended_session(ctx);
                }
            }
        }
    }

    /// Abandons a session switch in progress, closing its replacement session.
    pub(in crate::core::device) fn abandon_switch(&mut self, ctx: &mut Ctx, graceful: bool) {
        if let Some(s) = self.switch.abandon() {
            ctx.close(s, graceful);
        }
    }

    /// The broker ended the device's session and it cannot be resumed: tell the device.
    pub(in crate::core::device) fn broker_ended_session(&mut self, ctx: &mut Ctx) {
        info!(client_id = %self.client_id, "broker closed the session; telling the device");
        // `session` is already gone (the broker ended it); only a switch's may be left.
        self.end_sessions(ctx, false, DeviceState::Disconnected);
        ctx.transmit(&self.addr, Message::Disconnect { duration: None });
    }

    /// The upstream session ends (reconnect, loss, disconnect): flows tied to it are void,
    /// except what a persistent session still owes: messages already acknowledged to the
    /// broker for the device, and uplink flows the broker may hold under their packet ids.
    pub(in crate::core::device) fn reset_flows(&mut self, ctx: &mut Ctx) {
        self.up
            .end_session(ctx, &link!(self), self.conn.clean_session);
        self.down.end_session();
        self.switch.end_session();
        self.conn.rewill = false;
        self.subs.end_session();
    }
}
