//! Who may hold a device slot, and who gives one up when the table is full.
//!
//! UDP has no handshake, so a CONNECT proves nothing about its source address. This module
//! keeps what one source can hold bounded — per IP address and per subnet (/24 for IPv4, /64
//! for IPv6), counting connected devices and, separately, *pending* ones (a CONNECT, a will
//! prompt or a CONNACK with nothing heard since) — and how fast one subnet may start sessions
//! (a token bucket). When the table is full it names the device to evict: the least recently
//! heard one that is not connected, else the least recently heard pending one. A device that
//! has spoken since its CONNACK is never evicted for a newcomer.
//!
//! Serial peers are wired and cannot be spoofed: they are never limited per source.
//!
//! Owns no clock and does no I/O; every operation is O(log n) in the number of devices
//! (the bucket table is pruned in bulk, amortised).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::types::DeviceId;
use super::types::{DeviceAddr, PeerAddr};

/// Per-source limits (`limits.per_source.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLimits {
    /// Connected devices one IP address may hold.
    pub devices_per_address: usize,
    /// Connected devices one subnet may hold.
    pub devices_per_subnet: usize,
    /// Pending devices (not heard from since CONNECT) one IP address may hold.
    pub pending_per_address: usize,
    /// Pending devices one subnet may hold.
    pub pending_per_subnet: usize,
    /// Sessions one subnet may start per second, sustained.
    pub connects_per_second: u32,
    /// Sessions one subnet may start at once.
    pub connect_burst: u32,
    /// Prefix length that makes an IPv4 subnet (0..=32).
    pub ipv4_prefix: u8,
    /// Prefix length that makes an IPv6 subnet (0..=128).
    pub ipv6_prefix: u8,
}

/// The defaults of `limits.per_source.*`, written only here: `config::PerSource` reads them.
impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            devices_per_address: 1000,
            devices_per_subnet: 5000,
            pending_per_address: 32,
            pending_per_subnet: 128,
            connects_per_second: 100,
            connect_burst: 200,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
        }
    }
}

/// How a device counts for eviction and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// Not connected (disconnected or lost): remembered, first to go.
    Idle,
    /// Connected but not heard from since its CONNECT: second to go.
    Pending,
    /// Connected and has spoken since its CONNACK: never evicted for a newcomer.
    Proven,
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    AddressFull,
    SubnetFull,
    AddressPending,
    SubnetPending,
    Rate,
}

impl Refusal {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Refusal::AddressFull => "limits.per_source.devices_per_address",
            Refusal::SubnetFull => "limits.per_source.devices_per_subnet",
            Refusal::AddressPending => "limits.per_source.pending_per_address",
            Refusal::SubnetPending => "limits.per_source.pending_per_subnet",
            Refusal::Rate => "limits.per_source.connects_per_second",
        }
    }
}

/// An IP address cut down to its subnet prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Subnet(IpAddr);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    ip: IpAddr,
    subnet: Subnet,
}

#[derive(Debug, Clone, Copy, Default)]
struct Count {
    connected: usize,
    pending: usize,
}

/// What the index holds for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    class: Class,
    source: Option<Source>,
    /// Last heard, for Idle and Pending (the eviction order); unused for Proven.
    heard: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before full ones are pruned; past it, new subnets share one bucket.
const MAX_BUCKETS: usize = 4096;

/// The admission index. The gateway calls [`Admission::update`] after every input a device
/// handled, and [`Admission::remove`] when it drops the device.
#[derive(Debug)]
pub(super) struct Admission {
    limits: SourceLimits,
    entries: HashMap<DeviceId, Entry>,
    idle: BTreeSet<(Instant, DeviceId)>,
    pending: BTreeSet<(Instant, DeviceId)>,
    per_ip: HashMap<IpAddr, Count>,
    per_subnet: HashMap<Subnet, Count>,
    buckets: HashMap<Subnet, Bucket>,
    /// Shared by new subnets while the bucket table is full.
    overflow: Option<Bucket>,
}

impl Admission {
    pub(super) fn new(limits: SourceLimits) -> Self {
        Admission {
            limits,
            entries: HashMap::new(),
            idle: BTreeSet::new(),
            pending: BTreeSet::new(),
            per_ip: HashMap::new(),
            per_subnet: HashMap::new(),
            buckets: HashMap::new(),
            overflow: None,
        }
    }

    fn source(&self, addr: &DeviceAddr) -> Option<Source> {
        let PeerAddr::Udp(sa) = &addr.peer else {
            return None;
        };
        let ip = sa.ip().to_canonical();
        let subnet = match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let keep = u32::from(self.limits.ipv4_prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - keep).unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let keep = u32::from(self.limits.ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        };
        Some(Source {
            ip,
            subnet: Subnet(subnet),
        })
    }

    /// Records what `id` is now. Cheap when nothing changed (the common case: a proven
    /// device that spoke again).
    pub(super) fn update(&mut self, id: DeviceId, class: Class, addr: &DeviceAddr, heard: Instant) {
        let source = self.source(addr);
        let entry = Entry {
            class,
            source,
            heard,
        };
        if let Some(old) = self.entries.get(&id) {
            let same = old.class == entry.class && old.source == entry.source;
            if same && (class == Class::Proven || old.heard == heard) {
                return;
            }
        }
        self.remove(id);
        self.add(id, entry);
    }

    fn add(&mut self, id: DeviceId, e: Entry) {
        match e.class {
            Class::Idle => {
                self.idle.insert((e.heard, id));
            }
            Class::Pending => {
                self.pending.insert((e.heard, id));
            }
            Class::Proven => {}
        }
        if let Some(s) = e.source {
            if e.class != Class::Idle {
                let pending = usize::from(e.class == Class::Pending);
                for c in [
                    self.per_ip.entry(s.ip).or_default(),
                    self.per_subnet.entry(s.subnet).or_default(),
                ] {
                    c.connected += 1;
                    c.pending += pending;
                }
            }
        }
        self.entries.insert(id, e);
    }

    /// Forgets `id` (the device was removed, or is about to be re-added).
    pub(super) fn remove(&mut self, id: DeviceId) {
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        match e.class {
            Class::Idle => {
                self.idle.remove(&(e.heard, id));
            }
            Class::Pending => {
                self.pending.remove(&(e.heard, id));
            }
            Class::Proven => {}
        }
        if let (Some(s), true) = (e.source, e.class != Class::Idle) {
            let pending = usize::from(e.class == Class::Pending);
            let drop_ip = self.per_ip.get_mut(&s.ip).is_some_and(|c| {
                c.connected = c.connected.saturating_sub(1);
                c.pending = c.pending.saturating_sub(pending);
                c.connected == 0
            });
            if drop_ip {
                self.per_ip.remove(&s.ip);
            }
            let drop_net = self.per_subnet.get_mut(&s.subnet).is_some_and(|c| {
                c.connected = c.connected.saturating_sub(1);
                c.pending = c.pending.saturating_sub(pending);
                c.connected == 0
            });
            if drop_net {
                self.per_subnet.remove(&s.subnet);
            }
        }
    }

    /// The device to evict for a newcomer when the table is full: the least recently heard
    /// idle one, else the least recently heard pending one. Never `keep`.
    pub(super) fn victim(&self, keep: Option<DeviceId>) -> Option<(DeviceId, Class)> {
        let pick = |set: &BTreeSet<(Instant, DeviceId)>| {
            set.iter().map(|(_, id)| *id).find(|id| Some(*id) != keep)
        };
        pick(&self.idle)
            .map(|id| (id, Class::Idle))
            .or_else(|| pick(&self.pending).map(|id| (id, Class::Pending)))
    }

    /// May a CONNECT from `addr` start a session now? `existing` is the device it belongs to,
    /// if known: its own place does not count against it. Takes a token from the subnet's
    /// bucket when it may.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        addr: &DeviceAddr,
        existing: Option<DeviceId>,
    ) -> Result<(), Refusal> {
        let Some(src) = self.source(addr) else {
            return Ok(());
        };
        let own = existing
            .and_then(|id| self.entries.get(&id))
            .filter(|e| e.class != Class::Idle);
        let mine = |same: bool, e: Option<&Entry>| -> (usize, usize) {
            match e {
                Some(e) if same => (1, usize::from(e.class == Class::Pending)),
                _ => (0, 0),
            }
        };
        let ip = self.per_ip.get(&src.ip).copied().unwrap_or_default();
        let (c, p) = mine(
            own.and_then(|e| e.source).is_some_and(|s| s.ip == src.ip),
            own,
        );
        let l = &self.limits;
        if ip.connected - c >= l.devices_per_address {
            return Err(Refusal::AddressFull);
        }
        if ip.pending - p >= l.pending_per_address {
            return Err(Refusal::AddressPending);
        }
        let net = self
            .per_subnet
            .get(&src.subnet)
            .copied()
            .unwrap_or_default();
        let (c, p) = mine(
            own.and_then(|e| e.source)
                .is_some_and(|s| s.subnet == src.subnet),
            own,
        );
        if net.connected - c >= l.devices_per_subnet {
            return Err(Refusal::SubnetFull);
        }
        if net.pending - p >= l.pending_per_subnet {
            return Err(Refusal::SubnetPending);
        }
        self.take_token(now, src.subnet)
    }

    fn take_token(&mut self, now: Instant, subnet: Subnet) -> Result<(), Refusal> {
        let rate = f64::from(self.limits.connects_per_second);
        let burst = f64::from(self.limits.connect_burst.max(1));
        if !self.buckets.contains_key(&subnet) && self.buckets.len() >= MAX_BUCKETS {
            // A full bucket is the same as none: drop those.
            self.buckets
                .retain(|_, b| refill(b, now, rate, burst) < burst);
        }
        let bucket = if self.buckets.len() < MAX_BUCKETS || self.buckets.contains_key(&subnet) {
            self.buckets.entry(subnet).or_insert(Bucket {
                tokens: burst,
                at: now,
            })
        } else {
            self.overflow.get_or_insert(Bucket {
                tokens: burst,
                at: now,
            })
        };
        let tokens = refill(bucket, now, rate, burst);
        if tokens < 1.0 {
            return Err(Refusal::Rate);
        }
        bucket.tokens = tokens - 1.0;
        Ok(())
    }

    /// Devices indexed (every device the gateway holds).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Brings `b` up to `now` and returns its tokens.
fn refill(b: &mut Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(b.at);
    b.tokens = (b.tokens + elapsed.as_secs_f64() * rate).min(burst);
    b.at = now;
    b.tokens
}

/// Rate-limits a log line about refusals: the first one at once, then at most one summary
/// every [`LOG_EVERY`] with how many were not logged.
#[derive(Debug, Default)]
pub(super) struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

pub(super) const LOG_EVERY: Duration = Duration::from_secs(10);

impl LogLimiter {
    /// `Some(n)` when a line may be logged now, with `n` events not logged since the last.
    pub(super) fn tick(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}
