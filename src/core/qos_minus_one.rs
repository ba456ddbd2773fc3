//! QoS -1 (spec §6.8, §7.1): PUBLISHes from any address, connected or not, on a predefined
//! topic id or a short topic name, carried upstream on one session the gateway owns, as
//! `qos_minus_one` allows ([`QosMinusOnePolicy`]: all, off, or listed topics and sources; a
//! QoS -1 publish carries no ClientId, so no device rule applies).
//!
//! Owns the policy check and that session's life (open on demand, hold what arrives while it opens, bounded; retry
//! after T_RETRY when refused or closed). Must never: accept a normal topic id (only the
//! device that registered it knows what it means), hold more than
//! `limits.max_queued_per_device` messages, do I/O or read the clock.

use std::collections::VecDeque;
use std::time::Instant;

use tracing::{debug, info};

use super::bridge::qos0_publish;
use super::ctx::Ctx;
use super::rules::QosMinusOnePolicy;
use super::topics;
use super::types::{DeviceAddr, SessionId};
use crate::codec::{self, TopicRef};
use crate::mqtt;

/// The gateway's own upstream session for QoS -1 publishes.
#[derive(Debug, Default)]
pub(crate) struct QosMinusOne {
    session: Option<SessionId>,
    connected: bool,
    waiting: VecDeque<mqtt::Publish>,
    /// No new attempt before this, after a failed one.
    retry_at: Option<Instant>,
    /// The opening session must be accepted by then.
    connect_deadline: Option<Instant>,
}

impl QosMinusOne {
    /// Whether `session` is this path's session (packets on it are for [`Self::on_upstream`]).
    pub(super) fn owns(&self, session: SessionId) -> bool {
        self.session == Some(session)
    }

    /// When [`Self::on_timeout`] must next run.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [self.retry_at, self.connect_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// A QoS -1 PUBLISH from `from`.
    pub(super) fn on_publish(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        from: &DeviceAddr,
        p: codec::Publish,
    ) {
        if !allowed(&ctx.settings.qos_minus_one, from, p.topic) {
            ctx.stats.qos_minus_one_denied += 1;
            debug!(peer = %ctx.peer(from), topic = ?p.topic, "QoS -1 PUBLISH dropped by qos_minus_one");
            return;
        }
        // QoS -1 allows only predefined ids and short names: no table.
        let topic = topics::publish_name(&ctx.predefined, None, p.topic);
        let Some(topic) = topic else {
            ctx.stats.wrong_state += 1;
            debug!(peer = %ctx.peer(from), topic = ?p.topic, "QoS -1 PUBLISH on an unusable topic dropped");
            return;
        };
        ctx.stats.uplink_publishes += 1;
        let publish = qos0_publish(topic, p.retain, p.data);
        match (self.session, self.connected) {
            (Some(s), true) => ctx.send(s, mqtt::Packet::Publish(publish)),
            _ => {
                if self.waiting.len() < ctx.settings.max_queued_per_device {
                    self.waiting.push_back(publish);
                } else {
                    ctx.stats.downlink_dropped += 1;
                }
                self.open(ctx, now);
            }
        }
    }

    fn open(&mut self, ctx: &mut Ctx, now: Instant) {
        if self.session.is_some() || self.retry_at.is_some_and(|t| t > now) {
            return;
        }
        self.retry_at = None;
        self.connect_deadline = Some(now + ctx.settings.upstream_connect_timeout);
        let client_id = format!("mqttsn-gw-{}-qos-1", ctx.settings.gateway_id);
        let connect = ctx.connect_packet(&client_id, true, None);
        self.session = Some(ctx.open(None, connect, None));
    }

    /// A packet on this path's session: only its CONNACK matters.
    pub(super) fn on_upstream(&mut self, ctx: &mut Ctx, now: Instant, packet: mqtt::Packet) {
        let (Some(session), mqtt::Packet::ConnAck { code, .. }) = (self.session, packet) else {
            return;
        };
        self.connect_deadline = None;
        if code == mqtt::ConnectReturnCode::Accepted {
            self.connected = true;
            for p in std::mem::take(&mut self.waiting) {
                ctx.send(session, mqtt::Packet::Publish(p));
            }
        } else {
            info!(?code, "broker refused the gateway's QoS -1 session");
            ctx.close(session, true);
            self.failed(ctx, now);
        }
    }

    /// This path's session ended.
    pub(super) fn on_closed(&mut self, ctx: &Ctx, now: Instant) {
        self.failed(ctx, now);
    }

    fn failed(&mut self, ctx: &Ctx, now: Instant) {
        self.session = None;
        self.connected = false;
        self.connect_deadline = None;
        if !self.waiting.is_empty() {
            self.retry_at = Some(now + ctx.settings.retry_interval);
        }
    }

    /// The connect deadline and the retry.
    pub(super) fn on_timeout(&mut self, ctx: &mut Ctx, now: Instant) {
        if self.connect_deadline.is_some_and(|t| t <= now) {
            info!("the broker did not accept the gateway's QoS -1 session in time");
            if let Some(s) = self.session {
                ctx.close(s, false);
            }
            self.failed(ctx, now);
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            if !self.waiting.is_empty() {
                self.open(ctx, now);
            }
        }
    }
}

/// Whether `policy` lets `from` publish at QoS -1 to `topic`. `Listed`: when `predefined` or
/// `short` lists anything, the topic must be one of them (either list); when `sources` lists
/// anything, the sender's address must match one.
pub(crate) fn allowed(policy: &QosMinusOnePolicy, from: &DeviceAddr, topic: TopicRef) -> bool {
    match policy {
        QosMinusOnePolicy::All => true,
        QosMinusOnePolicy::Off => false,
        QosMinusOnePolicy::Listed {
            predefined,
            short,
            sources,
        } => {
            let topic_ok = (predefined.is_empty() && short.is_empty())
                || match topic {
                    TopicRef::Predefined(id) => predefined.contains(&id),
                    TopicRef::Short(s) => short.contains(&s),
                    TopicRef::Id(_) => false,
                };
            topic_ok && (sources.is_empty() || sources.iter().any(|s| s.matches(&from.peer)))
        }
    }
}
