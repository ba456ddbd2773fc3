//! The device registry: every device the gateway holds state for, found by its handle, its
//! address, its ClientId or its upstream session, with the timer table and the admission index
//! that hold one entry per device. Inserting and removing keep all of them in step, so a
//! removed device leaves nothing behind.
//!
//! Must never: decide protocol behaviour (the gateway routes, the device acts) or read the clock.
//! Owns: `Registry` and its indexes.

use std::collections::HashMap;

use super::admission::{Admission, Class, SourceLimits};
use super::ctx::{Ctx, SessionChange};
use super::device::Device;
use super::timers::TimerQueue;
use super::types::DeviceId;
use super::types::{DeviceAddr, SessionId};

pub(super) struct Registry {
    devices: HashMap<DeviceId, Device>,
    by_addr: HashMap<DeviceAddr, DeviceId>,
    by_client_id: HashMap<String, DeviceId>,
    by_session: HashMap<SessionId, DeviceId>,
    next_device: u64,
    /// One deadline per device.
    pub timers: TimerQueue<DeviceId>,
    /// Per-source limits and the eviction order.
    pub admission: Admission,
}

impl Registry {
    pub(super) fn new(per_source: SourceLimits) -> Self {
        Registry {
            devices: HashMap::new(),
            by_addr: HashMap::new(),
            by_client_id: HashMap::new(),
            by_session: HashMap::new(),
            next_device: 1,
            timers: TimerQueue::default(),
            admission: Admission::new(per_source),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.devices.len()
    }

    pub(super) fn ids(&self) -> Vec<DeviceId> {
        self.devices.keys().copied().collect()
    }

    /// Every device, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Device> {
        self.devices.values()
    }

    pub(super) fn get(&self, id: DeviceId) -> Option<&Device> {
        self.devices.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: DeviceId) -> Option<&mut Device> {
        self.devices.get_mut(&id)
    }

    pub(super) fn by_client_id(&self, client_id: &str) -> Option<DeviceId> {
        self.by_client_id.get(client_id).copied()
    }

    pub(super) fn by_addr(&self, addr: &DeviceAddr) -> Option<DeviceId> {
        self.by_addr.get(addr).copied()
    }

    pub(super) fn by_session(&self, session: SessionId) -> Option<DeviceId> {
        self.by_session.get(&session).copied()
    }

    /// Forgets which device owns `session` (its connection ended); returns the owner.
    pub(super) fn unbind_session(&mut self, session: SessionId) -> Option<DeviceId> {
        self.by_session.remove(&session)
    }

    /// Applies the sessions devices opened and closed through `ctx` since the last call.
    pub(super) fn sync_sessions(&mut self, ctx: &mut Ctx) {
        for change in ctx.take_session_changes() {
            match change {
                SessionChange::Opened(session, owner) => {
                    self.by_session.insert(session, owner);
                }
                SessionChange::Closed(session) => {
                    self.by_session.remove(&session);
                }
            }
        }
    }

    /// Adds the device `make` builds with a fresh handle, under its ClientId and address.
    pub(super) fn insert(&mut self, make: impl FnOnce(DeviceId) -> Device) -> DeviceId {
        let id = DeviceId(self.next_device);
        self.next_device += 1;
        let dev = make(id);
        self.by_addr.insert(dev.addr.clone(), id);
        self.by_client_id.insert(dev.client_id.clone(), id);
        self.devices.insert(id, dev);
        id
    }

    /// `addr` no longer names any device.
    pub(super) fn unbind_addr(&mut self, addr: &DeviceAddr) {
        self.by_addr.remove(addr);
    }

    /// Device `id` is now at `to` (and `to` finds it). Its old address stops finding it unless
    /// it belongs to another device by now (NAT reuse). Returns the old address when it moved.
    pub(super) fn move_addr(&mut self, id: DeviceId, to: &DeviceAddr) -> Option<DeviceAddr> {
        let dev = self.devices.get_mut(&id)?;
        let moved = if dev.addr != *to {
            if self.by_addr.get(&dev.addr) == Some(&id) {
                self.by_addr.remove(&dev.addr);
            }
            Some(std::mem::replace(&mut dev.addr, to.clone()))
        } else {
            None
        };
        self.by_addr.insert(to.clone(), id);
        moved
    }

    /// Removes device `id` and every entry naming it; its durable rows are forgotten.
    pub(super) fn remove(&mut self, id: DeviceId, ctx: &mut Ctx) {
        self.timers.remove(id);
        self.admission.remove(id);
        if let Some(mut d) = self.devices.remove(&id) {
            d.forget(ctx);
            if self.by_addr.get(&d.addr) == Some(&id) {
                self.by_addr.remove(&d.addr);
            }
            self.by_client_id.remove(&d.client_id);
        }
    }

    /// Brings `id`'s admission entry (as `class`) and its timer entry up to date. Only an
    /// earlier deadline moves the timer entry; a later one is found when the current entry
    /// fires and the device settles again.
    pub(super) fn refresh(&mut self, id: DeviceId, class: Class) {
        let Some(dev) = self.devices.get(&id) else {
            return;
        };
        self.admission.update(id, class, &dev.addr, dev.last_heard);
        match dev.next_deadline() {
            Some(next) => {
                if self.timers.get(id).is_none_or(|s| next < s) {
                    self.timers.set(next, id);
                }
            }
            None => self.timers.remove(id),
        }
    }
}
