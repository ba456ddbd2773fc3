//! The device's durable record (persistent sessions with a store): when it is written, what
//! state it stores, and deleting every row of a ClientId.
//!
//! Owns [`Record`] (whether anything was ever written). Must never: decide what a session is
//! (the caller says whether it is durable) or read rows back (the gateway does, `Device`
//! rebuilds itself from them).

use std::time::Duration;

use super::types::DeviceState;
use crate::core::ctx::Ctx;
use crate::core::persist::{self, DeviceRecord, StoredState};
use crate::core::types::{PersistOp, Table};

#[derive(Debug, Default)]
pub(super) struct Record {
    /// Something was written to the store for this ClientId.
    stored: bool,
}

impl Record {
    /// A record read back from the store.
    pub(super) fn restored() -> Self {
        Record { stored: true }
    }

    /// A row for this ClientId was written elsewhere (a subscription's).
    pub(super) fn mark_stored(&mut self) {
        self.stored = true;
    }

    /// Writes the device record (the caller checks the session is durable).
    pub(super) fn save(&mut self, ctx: &mut Ctx, r: DeviceRecord) {
        self.stored = true;
        let key = persist::device_prefix(&r.client_id);
        ctx.persist(persist::put(Table::Device, key, &r));
    }

    /// Deletes everything stored for `client_id`.
    pub(super) fn forget(&mut self, ctx: &mut Ctx, client_id: &str) {
        if !std::mem::take(&mut self.stored) {
            return; // nothing was ever written for it
        }
        let prefix = persist::device_prefix(client_id);
        ctx.persist(PersistOp::Delete {
            table: Table::Device,
            key: prefix.clone(),
        });
        for table in [Table::Buffer, Table::Uplink, Table::Subscription] {
            ctx.persist(PersistOp::DeletePrefix {
                table,
                prefix: prefix.clone(),
            });
        }
    }
}

/// The state a record stores: only whether the device is active, asleep (and for how long),
/// or offline.
pub(super) fn stored_state(state: DeviceState, sleep_duration: Duration) -> StoredState {
    match state {
        DeviceState::Active => StoredState::Active,
        DeviceState::Asleep | DeviceState::Awake => {
            StoredState::Asleep(u16::try_from(sleep_duration.as_secs()).unwrap_or(u16::MAX))
        }
        _ => StoredState::Offline,
    }
}

/// The state a restored device resumes in, and its sleep Duration when asleep; None when it
/// was offline.
pub(super) fn resumed_state(s: StoredState) -> Option<(DeviceState, Duration)> {
    match s {
        StoredState::Offline => None,
        StoredState::Active => Some((DeviceState::Active, Duration::ZERO)),
        StoredState::Asleep(secs) => {
            Some((DeviceState::Asleep, Duration::from_secs(u64::from(secs))))
        }
    }
}
