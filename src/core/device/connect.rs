//! What the device said when it connected: CleanSession, its Duration (keep-alive) and its
//! will (WILLTOPIC / WILLMSG, or their updates), and what a CONNECT means for a session the
//! device already has (spec §6.3, §6.14: a sleeping device's clean-session-0 CONNECT keeps
//! everything).
//!
//! Owns [`Connection`]. Must never: send, open or close sessions, or change the device's state;
//! `Device` runs the connect sequence (WILLTOPICREQ, WILLMSGREQ, the broker's CONNACK) on what
//! this decides.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::types::with_tolerance;
use crate::codec::{self, WillTopic};
use crate::core::bridge::{self, stored_sn_qos, to_mqtt_qos};
use crate::core::ctx::Ctx;
use crate::core::persist::WillRecord;
use crate::mqtt;

/// What a CONNECT does to the session the device has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Begin {
    /// A sleeping device (or one prompted on its kept session), clean session 0, Will=1: the
    /// will is prompted, the upstream session, topic ids and buffer carry on.
    PromptKeepingSession,
    /// The same without a will: straight back to Active on the kept session.
    KeepSession,
    /// The session is being resumed (restart, outage) and the device asks for it: it gets
    /// that session's CONNACK.
    AwaitResumed,
    /// Anything else: the old session ends, a new one starts (after the will prompt if
    /// `will`).
    Fresh { will: bool },
}

#[derive(Debug)]
pub(super) struct Connection {
    pub clean_session: bool,
    /// The CONNECT's Duration (0: no keep-alive supervision).
    keep_alive: Duration,
    will_topic: Option<WillTopic>,
    will_msg: Bytes,
    /// A sleeping device's CONNECT(clean 0, Will=1) is being prompted on its kept session.
    pub rewill: bool,
}

impl Default for Connection {
    fn default() -> Self {
        Connection {
            clean_session: true,
            keep_alive: Duration::ZERO,
            will_topic: None,
            will_msg: Bytes::new(),
            rewill: false,
        }
    }
}

impl Connection {
    /// A CONNECT: takes its Duration and says what it does to the current session.
    pub(super) fn begin(
        &mut self,
        c: &codec::Connect,
        sleeping: bool,
        has_session: bool,
        resuming: bool,
    ) -> Begin {
        self.keep_alive = Duration::from_secs(u64::from(c.duration));
        // Clean session 0 keeps all stored state (§6.3).
        let keep = (sleeping || self.rewill) && !c.clean_session && has_session;
        if keep && c.will {
            Begin::PromptKeepingSession
        } else if keep {
            Begin::KeepSession
        } else if resuming && has_session && !c.clean_session && !c.will {
            Begin::AwaitResumed
        } else {
            Begin::Fresh { will: c.will }
        }
    }

    /// When an Active device last heard at `last_heard` is lost (None without keep-alive).
    pub(super) fn keep_alive_deadline(&self, last_heard: Instant) -> Option<Instant> {
        (!self.keep_alive.is_zero()).then(|| last_heard + with_tolerance(self.keep_alive))
    }

    pub(super) fn keep_alive(&self) -> Duration {
        self.keep_alive
    }

    pub(super) fn will_topic(&self) -> Option<&str> {
        self.will_topic.as_ref().map(|w| w.topic.as_str())
    }

    pub(super) fn keep_alive_secs(&self) -> u16 {
        u16::try_from(self.keep_alive.as_secs()).unwrap_or(u16::MAX)
    }

    /// WILLTOPIC or WILLTOPICUPD; None (the empty one) deletes topic and message.
    pub(super) fn set_will_topic(&mut self, w: Option<WillTopic>) {
        if w.is_none() {
            self.will_msg = Bytes::new();
        }
        self.will_topic = w;
    }

    pub(super) fn set_will_msg(&mut self, msg: Bytes) {
        self.will_msg = msg;
    }

    /// The will the upstream CONNECT carries.
    pub(super) fn last_will(&self) -> Option<mqtt::LastWill> {
        self.will_topic
            .as_ref()
            .map(|w| bridge::last_will(w, &self.will_msg))
    }

    pub(super) fn will_record(&self) -> Option<WillRecord> {
        self.will_topic.as_ref().map(|w| WillRecord {
            topic: w.topic.clone(),
            qos: to_mqtt_qos(w.qos) as u8,
            retain: w.retain,
            msg: crate::core::persist::Hex(self.will_msg.to_vec()),
        })
    }

    /// A persistent session read back from the store.
    pub(super) fn restored(keep_alive: u16, will: Option<WillRecord>) -> Self {
        Connection {
            clean_session: false,
            keep_alive: Duration::from_secs(u64::from(keep_alive)),
            will_topic: will.as_ref().map(|w| WillTopic {
                qos: stored_sn_qos(w.qos),
                retain: w.retain,
                topic: w.topic.clone(),
            }),
            will_msg: will.map(|w| Bytes::from(w.msg.0)).unwrap_or_default(),
            rewill: false,
        }
    }
}

/// How long a will prompt waits for the device: what its own retries (N_RETRY × T_RETRY) allow.
pub(super) fn will_prompt_time(ctx: &Ctx) -> Duration {
    ctx.settings.retry_interval * (ctx.settings.max_retries + 1)
}
