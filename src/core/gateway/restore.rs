//! [`Gateway::restore`]: persistent sessions rebuilt from the store's records at start, before
//! any other input (a child of `gateway.rs`, split out to keep that file to routing).
//! Must never: do I/O; records come in as values.

use std::time::Instant;

use tracing::info;

use super::super::device::Device;
use super::super::persist::{self, DeviceRecord};
use super::super::rules::Verdict;
use super::super::types::Table;
use super::{Gateway, RestoreReport};

impl Gateway {
    /// Rebuilds persistent sessions from the store's records, before any other input. Devices
    /// that were active or asleep get their upstream session reopened (clean session 0); the
    /// timers restart from `now`. Records that do not parse are skipped and counted.
    pub fn restore(
        &mut self,
        now: Instant,
        records: impl IntoIterator<Item = (Table, Vec<u8>, Vec<u8>)>,
    ) -> RestoreReport {
        let mut report = RestoreReport::default();
        let mut rest = Vec::new();
        let mut refused = std::collections::HashSet::new();
        for (table, key, value) in records {
            if table != Table::Device {
                rest.push((table, key, value));
                continue;
            }
            let record: Option<DeviceRecord> = persist::decode(&value);
            let Some((record, addr)) = record.and_then(|r| {
                let a = r.addr.to_addr()?;
                Some((r, a))
            }) else {
                report.skipped += 1;
                continue;
            };
            if self.registry.by_client_id(&record.client_id).is_some()
                || self.registry.len() >= self.ctx.settings.max_devices
            {
                report.skipped += 1;
                continue;
            }
            // The rules changed across the restart: a session they no longer admit (from where
            // it was) ends as a refused CONNECT would have: not reopened, its rows deleted.
            if !matches!(
                self.ctx
                    .settings
                    .admission
                    .verdict(&record.client_id, &addr),
                Verdict::Admit(_)
            ) {
                info!(client_id = %record.client_id, peer = %self.ctx.peer(&addr),
                    "stored session not restored: the devices rules no longer admit it; its stored state is deleted");
                Device::forget_stored(&mut self.ctx, &record.client_id);
                report.refused += 1;
                refused.insert(record.client_id);
                continue;
            }
            let ctx = &mut self.ctx;
            self.registry.insert(|id| {
                let mut dev = Device::restore(id, record, addr, ctx, now);
                // It had a session before the restart: a real device, not a spoofed CONNECT.
                dev.proven = true;
                dev
            });
            report.devices += 1;
        }
        // Keys sort by device then sequence, so buffers come back in order.
        rest.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (table, key, value) in rest {
            if table == Table::Subscription {
                let sub = persist::split_subscription_key(&key).and_then(|(client_id, filter)| {
                    let r: persist::SubscriptionRecord = persist::decode(&value)?;
                    Some((self.registry.by_client_id(&client_id)?, filter, r.qos))
                });
                match sub.and_then(|(id, f, q)| Some((self.registry.get_mut(id)?, f, q))) {
                    Some((dev, filter, qos)) => {
                        dev.restore_subscription(filter, qos);
                        report.subscriptions += 1;
                    }
                    None if of_refused(&refused, &key) => {}
                    None => report.skipped += 1,
                }
                continue;
            }
            let dev = persist::split_numbered_key(&key)
                .and_then(|(client_id, n)| Some((self.registry.by_client_id(&client_id)?, n)));
            let Some((id, n)) = dev else {
                if !of_refused(&refused, &key) {
                    report.skipped += 1;
                }
                continue;
            };
            let Some(dev) = self.registry.get_mut(id) else {
                continue;
            };
            match table {
                Table::Buffer => match persist::decode(&value) {
                    Some(r) => {
                        dev.restore_buffered(&mut self.ctx, n, r);
                        report.buffered += 1;
                    }
                    None => report.skipped += 1,
                },
                Table::Uplink => match persist::decode(&value) {
                    Some(persist::UplinkRecord::Aggregated {
                        packet_id,
                        shared,
                        shared_packet_id,
                    }) => {
                        if let Some(agg) = &mut self.agg {
                            let flow = (packet_id, usize::from(shared), shared_packet_id);
                            agg.restore_flow(&dev.client_id, flow);
                        }
                        report.uplink += 1;
                    }
                    Some(r) => {
                        dev.restore_uplink(n, r);
                        report.uplink += 1;
                    }
                    None => report.skipped += 1,
                },
                Table::Device | Table::Subscription => {}
            }
        }
        let ids = self.registry.ids();
        if let Some(agg) = &mut self.agg {
            // Aggregating: a persistent device that was away keeps its filters, as its broker
            // session would have, so what arrives for it meanwhile is buffered.
            for &id in &ids {
                if let Some((client_id, filters)) = self
                    .registry
                    .get(id)
                    .and_then(|d| d.kept_filters(&self.ctx))
                {
                    let vs = self.ctx.new_session_id();
                    agg.restore_detached(vs, client_id, filters);
                }
            }
        }
        let tx_mark = self.ctx.tx_bytes;
        for id in ids {
            self.settle(id, tx_mark);
        }
        info!(?report, "restored persistent sessions");
        self.finish_input(now);
        report
    }
}

/// Whether a stored row's key belongs to one of the `refused` ClientIds.
fn of_refused(refused: &std::collections::HashSet<String>, key: &[u8]) -> bool {
    !refused.is_empty()
        && refused
            .iter()
            .any(|c| key.starts_with(&persist::device_prefix(c)))
}
