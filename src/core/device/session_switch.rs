//! Replacing the device's upstream session while the device stays connected. MQTT 3.1.1 can
//! change a will only by reconnecting, and re-sends messages left unacknowledged at the
//! broker only when a session resumes (§4.4), so three things switch sessions: a will update
//! (WILLTOPICUPD / WILLMSGUPD, spec §6.4), a sleeping device's CONNECT(clean session 0,
//! Will=1) whose new will goes upstream, and the resync of messages left at the broker for
//! want of buffer room.
//!
//! Rules kept here:
//! - The switch waits until no QoS flow is open on the old session (so nothing in flight is
//!   lost or doubled); the caller says when the old session is idle.
//! - Uplink messages that arrive while the new session opens are held (bounded) and handled,
//!   in order, once it is accepted.
//! - WILLTOPICRESP / WILLMSGRESP go to the device only once the new session carries its
//!   subscriptions again, so nothing published after the response can miss it.
//!
//! Owns [`SessionSwitch`]. Must never: open or close sessions or change the device's state
//! (it says what is due, `Device` does it).

use std::collections::VecDeque;

use super::types::Link;
use crate::codec::{Message, ReturnCode};
use crate::core::ctx::Ctx;
use crate::core::types::SessionId;

/// A switch that is wanted or under way.
#[derive(Debug, Clone, Default)]
struct Switch {
    /// WILLTOPICRESP owed when it is done.
    respond_topic: bool,
    /// WILLMSGRESP owed when it is done.
    respond_msg: bool,
    /// The replacement session, once opened.
    new_session: Option<SessionId>,
    /// Another switch was asked for while `new_session` was opening.
    again: bool,
}

/// A replacement session the broker answered.
#[derive(Debug)]
pub(super) struct Switched {
    pub session: SessionId,
    /// Another switch was asked for meanwhile.
    pub again: bool,
    respond_topic: bool,
    respond_msg: bool,
}

#[derive(Debug, Default)]
pub(super) struct SessionSwitch {
    switch: Option<Switch>,
    /// WILLTOPICRESP / WILLMSGRESP owed once the new session's re-subscriptions are acked.
    will_responses: Option<(bool, bool)>,
    /// Uplink messages held while the replacement session opens.
    held_uplink: VecDeque<Message>,
}

impl SessionSwitch {
    /// A switch is wanted (if none is already).
    pub(super) fn want(&mut self) {
        self.switch.get_or_insert_with(Default::default);
    }

    /// The device changed its will (topic or message). Returns true when the caller should try
    /// the switch now; false when one is opening (this one follows it).
    pub(super) fn want_for_will(&mut self, topic: bool) -> bool {
        let w = self.switch.get_or_insert_with(Default::default);
        if topic {
            w.respond_topic = true;
        } else {
            w.respond_msg = true;
        }
        if w.new_session.is_some() {
            w.again = true;
            return false;
        }
        true
    }

    /// A switch is wanted and its session not yet opened.
    pub(super) fn waiting(&self) -> bool {
        self.switch
            .as_ref()
            .is_some_and(|w| w.new_session.is_none())
    }

    /// The replacement session being opened.
    pub(super) fn opening(&self) -> Option<SessionId> {
        self.switch.as_ref().and_then(|w| w.new_session)
    }

    /// The replacement session was opened.
    pub(super) fn opened(&mut self, session: SessionId) {
        if let Some(w) = self.switch.as_mut() {
            w.new_session = Some(session);
        }
    }

    /// The broker answered the replacement session: the switch is over. None when none was
    /// opening.
    pub(super) fn answered(&mut self) -> Option<Switched> {
        let w = self.switch.take()?;
        Some(Switched {
            session: w.new_session?,
            again: w.again,
            respond_topic: w.respond_topic,
            respond_msg: w.respond_msg,
        })
    }

    /// The switch was accepted: the will responses it owes are due once no re-subscription
    /// is outstanding ([`SessionSwitch::release_will_responses`]).
    pub(super) fn owe_will_responses(&mut self, done: &Switched) {
        let (t, m) = self.will_responses.unwrap_or_default();
        self.will_responses = Some((t || done.respond_topic, m || done.respond_msg));
    }

    /// Abandons the switch; returns the replacement session to close, if it was opened.
    pub(super) fn abandon(&mut self) -> Option<SessionId> {
        self.switch.take().and_then(|w| w.new_session)
    }

    /// The device's session ended: nothing to switch, nothing held.
    pub(super) fn end_session(&mut self) {
        self.held_uplink.clear();
        self.switch = None;
    }

    /// Holds an uplink message while the replacement session opens. False when the hold is
    /// full (the message is dropped).
    pub(super) fn hold(&mut self, msg: Message, limit: usize) -> bool {
        if self.held_uplink.len() >= limit {
            return false;
        }
        self.held_uplink.push_back(msg);
        true
    }

    /// The held uplink messages, in order.
    pub(super) fn take_held(&mut self) -> Vec<Message> {
        self.held_uplink.drain(..).collect()
    }

    /// Sends the WILLTOPICRESP / WILLMSGRESP owed, unless re-subscriptions are outstanding
    /// (`remaking`).
    pub(super) fn release_will_responses(&mut self, ctx: &mut Ctx, link: &Link, remaking: bool) {
        if remaking {
            return;
        }
        let Some((topic, msg)) = self.will_responses.take() else {
            return;
        };
        let accepted = ReturnCode::Accepted;
        if topic {
            ctx.transmit(
                link.addr,
                Message::WillTopicResp {
                    return_code: accepted,
                },
            );
        }
        if msg {
            ctx.transmit(
                link.addr,
                Message::WillMsgResp {
                    return_code: accepted,
                },
            );
        }
    }
}
