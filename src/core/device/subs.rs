//! A device's granted subscriptions: the bound on how many it may hold
//! (`limits.max_subscriptions_per_device`) and their durable rows (one row per subscription in
//! `Table::Subscription`, so one SUBSCRIBE writes one row, never the whole list).
//!
//! Must never: send anything (the caller answers the device), or write the device record.

use tracing::debug;

use super::{Device, PendingSub};
use crate::core::ctx::Ctx;
use crate::core::persist::{self, SubscriptionRecord};
use crate::core::types::{PersistOp, Table};
use crate::mqtt;

impl Device {
    /// Whether a SUBSCRIBE to `filter` stays within the limit. Re-subscribing to a filter the
    /// device holds (to change its QoS) always fits.
    pub(super) fn subscription_fits(&self, ctx: &mut Ctx, filter: &str) -> bool {
        if self.subs.iter().any(|(f, _)| f == filter) {
            return true;
        }
        let pending = self
            .pending_subs
            .values()
            .filter(|p| matches!(p, PendingSub::Subscribe { filter: f, .. } if f != filter))
            .count();
        if self.subs.len() + pending < ctx.settings.max_subscriptions_per_device {
            return true;
        }
        ctx.stats.subscriptions_refused += 1;
        debug!(client_id = %self.client_id, %filter, "SUBSCRIBE refused: limits.max_subscriptions_per_device");
        false
    }

    /// The broker granted `filter` at `qos`.
    pub(super) fn granted_subscription(&mut self, ctx: &mut Ctx, filter: String, qos: mqtt::QoS) {
        match self.subs.iter_mut().find(|(f, _)| *f == filter) {
            Some(entry) if entry.1 == qos => return,
            Some(entry) => entry.1 = qos,
            None => self.subs.push((filter.clone(), qos)),
        }
        self.store_subscription(ctx, &filter, qos);
    }

    /// The broker confirmed the UNSUBSCRIBE from `filter`.
    pub(super) fn removed_subscription(&mut self, ctx: &mut Ctx, filter: &str) {
        let before = self.subs.len();
        self.subs.retain(|(f, _)| f != filter);
        if self.subs.len() != before && self.persistent(ctx) {
            ctx.persist(PersistOp::Delete {
                table: Table::Subscription,
                key: persist::subscription_key(&self.client_id, filter),
            });
        }
    }

    pub(super) fn store_subscription(&mut self, ctx: &mut Ctx, filter: &str, qos: mqtt::QoS) {
        if self.persistent(ctx) {
            self.stored = true;
            ctx.persist(persist::put(
                Table::Subscription,
                persist::subscription_key(&self.client_id, filter),
                &SubscriptionRecord { qos: qos as u8 },
            ));
        }
    }

    /// Puts back a stored subscription (at restore).
    pub fn restore_subscription(&mut self, filter: String, qos: u8) {
        let Ok(qos) = mqtt::QoS::try_from(qos) else {
            return;
        };
        match self.subs.iter_mut().find(|(f, _)| *f == filter) {
            Some(entry) => entry.1 = qos,
            None => self.subs.push((filter, qos)),
        }
    }
}
