//! Aggregating mode (`core/aggregate/`), as `impl Device`: what a durable device that is not
//! connected still does there — its filters stay in the aggregate's table (`kept_filters`, at
//! restore) and what they match is buffered for it (`buffer_detached`), as a broker keeps a
//! persistent session while its client is away.
//!
//! Part of the orchestration layer (see `orchestrate/mod.rs`).
//! Owns: those two entry points. Must never: hold state of its own, do I/O or read the clock.

use super::super::downlink::Receiver;
use super::super::types::{DeviceState, Link};
use super::super::Device;
use crate::core::ctx::Ctx;
use crate::core::types::SessionId;
use crate::mqtt;

impl Device {
    /// Aggregating mode, at restore: the ClientId and filters of a durable device that is not
    /// connected (its filters stay in the aggregate's table while it is away).
    pub(in crate::core) fn kept_filters(
        &self,
        ctx: &Ctx,
    ) -> Option<(String, Vec<(String, mqtt::QoS)>)> {
        if self.is_connected() || !self.durable(ctx) || self.subs.count() == 0 {
            return None;
        }
        let filters = self
            .subs
            .granted()
            .map(|(f, q)| (f.to_owned(), q))
            .collect();
        Some((self.client_id.clone(), filters))
    }

    /// Aggregating mode: a message for this durable device while it is not connected, on
    /// its ended (detached) session `vs`: buffered and stored as for a sleeper, acknowledged on
    /// `vs` once durable, delivered when it connects again. False when it is not taken.
    pub(in crate::core) fn buffer_detached(
        &mut self,
        ctx: &mut Ctx,
        vs: SessionId,
        p: mqtt::Publish,
    ) -> bool {
        if self.is_connected() || !self.durable(ctx) {
            return false;
        }
        let qos = self.subs.granted_qos(&p.topic, p.qos);
        let link = Link {
            addr: &self.addr,
            client_id: &self.client_id,
            session: Some(vs),
        };
        let to = Receiver {
            state: DeviceState::Asleep,
            clean_session: false,
            durable: true,
        };
        self.down.offer(ctx, &link, &mut self.topics, to, p, qos);
        true
    }
}
