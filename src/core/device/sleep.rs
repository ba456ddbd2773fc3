//! A sleeping device (spec §6.14): the Duration of its DISCONNECT and the deadline by which
//! an Asleep device must be heard (§7.2 tolerance). What it is owed while asleep is the
//! downlink queue's (the sleep-buffer bounds are in downlink.rs).
//!
//! Owns [`Sleep`]. Must never: change the device's state or send (the PINGRESP that ends an
//! Awake transfer is `Device::pump`'s).

use std::time::{Duration, Instant};

use super::types::with_tolerance;

#[derive(Debug, Default)]
pub(super) struct Sleep {
    /// The Duration of the last DISCONNECT(Duration), while Asleep/Awake.
    duration: Duration,
}

impl Sleep {
    /// DISCONNECT with a Duration (seconds).
    pub(super) fn start(&mut self, secs: u16) {
        self.duration = Duration::from_secs(u64::from(secs));
    }

    /// A restored sleeper's Duration.
    pub(super) fn restored(duration: Duration) -> Self {
        Sleep { duration }
    }

    pub(super) fn duration(&self) -> Duration {
        self.duration
    }

    /// When a device falling asleep at `now` is lost unless heard from.
    pub(super) fn deadline(&self, now: Instant) -> Instant {
        now + with_tolerance(self.duration)
    }
}
