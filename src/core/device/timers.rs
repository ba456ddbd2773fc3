//! Every timer a device has, as one enum, and the deadlines that are armed by hand.
//!
//! Owns: [`DeviceTimer`] (the list, in the order `Device::on_timeout` fires them) and
//! [`Timers`] (the armed deadlines: the one upstream wait, the sleep supervision). The other
//! timers are derived from the state they supervise (last heard, the message in flight, the
//! outage back-off), so they cannot drift from it. `Device::next_deadline` and
//! `Device::on_timeout` both walk [`DeviceTimer::ALL`], so the two cannot get out of step.
//!
//! Must never: read the clock, send anything, or know what firing a timer does (that is
//! `Device::fire`, in `mod.rs`).
//!
//! | timer             | deadline                                   | when it fires                    |
//! |-------------------|--------------------------------------------|----------------------------------|
//! | `OutageReconnect` | the outage back-off (outage.rs)            | reopen the parked session        |
//! | `WillPrompt`      | armed with WILLTOPICREQ / WILLMSGREQ       | give up the CONNECT              |
//! | `BrokerConnack`   | armed when the device's session opens      | CONNACK congestion to the device |
//! | `SwitchConnack`   | armed when a replacement session opens     | the switch failed: session ends  |
//! | `KeepAlive`       | last heard + Duration with tolerance       | device lost                      |
//! | `Sleep`           | armed on DISCONNECT(Duration), while Asleep| device lost                      |
//! | `Retransmit`      | in-flight sent + T_RETRY, Active or Awake  | re-send, or lost after N_RETRY   |

use std::time::Instant;

/// One of a device's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceTimer {
    /// A broker outage is being ridden out: time to try the session again.
    OutageReconnect,
    /// The device was asked for its will (WILLTOPICREQ / WILLMSGREQ) and must answer.
    WillPrompt,
    /// The device's upstream session is opening: the broker's CONNACK must come.
    BrokerConnack,
    /// A replacement session (a session switch) is opening: its CONNACK must come.
    SwitchConnack,
    /// An Active device must be heard within its Duration (spec §7.2 tolerance).
    KeepAlive,
    /// An Asleep device must be heard within its sleep Duration (spec §6.14).
    Sleep,
    /// The QoS 1/2 PUBLISH or REGISTER in flight to the device waits T_RETRY.
    Retransmit,
}

impl DeviceTimer {
    /// Every timer, in the order they fire when several are due at once.
    pub(super) const ALL: [DeviceTimer; 7] = [
        DeviceTimer::OutageReconnect,
        DeviceTimer::WillPrompt,
        DeviceTimer::BrokerConnack,
        DeviceTimer::SwitchConnack,
        DeviceTimer::KeepAlive,
        DeviceTimer::Sleep,
        DeviceTimer::Retransmit,
    ];

    /// Whether this is one of the waits for the device or the broker during a connect; at
    /// most one of them is armed at a time.
    fn is_upstream_wait(self) -> bool {
        matches!(
            self,
            DeviceTimer::WillPrompt | DeviceTimer::BrokerConnack | DeviceTimer::SwitchConnack
        )
    }
}

/// What `on_timeout` does after a timer fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterFire {
    /// Look at the next timer.
    Next,
    /// The device's state changed for good (lost, asleep again, session ended): the remaining
    /// timers are left for the next call.
    Stop,
}

/// The deadlines armed by hand.
#[derive(Debug, Default)]
pub(super) struct Timers {
    /// The one wait of the connect sequence or of a session switch: a will prompt, the
    /// device's CONNACK from the broker, or a replacement session's CONNACK. Arming one
    /// replaces another.
    upstream: Option<(DeviceTimer, Instant)>,
    /// When an Asleep device is lost unless it is heard from.
    sleep: Option<Instant>,
}

impl Timers {
    /// Arms `timer` (an upstream wait or `Sleep`) at `at`.
    pub(super) fn arm(&mut self, timer: DeviceTimer, at: Instant) {
        if timer.is_upstream_wait() {
            self.upstream = Some((timer, at));
        } else if timer == DeviceTimer::Sleep {
            self.sleep = Some(at);
        }
    }

    /// Ends whichever upstream wait is armed.
    pub(super) fn clear_upstream_wait(&mut self) {
        self.upstream = None;
    }

    pub(super) fn clear_sleep(&mut self) {
        self.sleep = None;
    }

    /// Disarms `timer` (one that fired).
    pub(super) fn disarm(&mut self, timer: DeviceTimer) {
        if timer.is_upstream_wait() {
            if self.upstream.is_some_and(|(t, _)| t == timer) {
                self.upstream = None;
            }
        } else if timer == DeviceTimer::Sleep {
            self.sleep = None;
        }
    }

    /// The armed deadline of `timer`; None for the derived timers.
    pub(super) fn armed(&self, timer: DeviceTimer) -> Option<Instant> {
        match timer {
            DeviceTimer::Sleep => self.sleep,
            t if t.is_upstream_wait() => self.upstream.filter(|(u, _)| *u == t).map(|(_, at)| at),
            _ => None,
        }
    }
}

/// The earliest of `deadlines`.
pub(super) fn earliest(deadlines: impl Iterator<Item = Option<Instant>>) -> Option<Instant> {
    deadlines.flatten().min()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_upstream_waits_are_one_slot_and_sleep_is_its_own() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.arm(DeviceTimer::WillPrompt, t0);
        t.arm(DeviceTimer::Sleep, t0 + Duration::from_secs(9));
        t.arm(DeviceTimer::BrokerConnack, t0 + Duration::from_secs(1));
        // Arming the broker's CONNACK wait replaced the will prompt.
        assert_eq!(t.armed(DeviceTimer::WillPrompt), None);
        assert_eq!(
            t.armed(DeviceTimer::BrokerConnack),
            Some(t0 + Duration::from_secs(1))
        );
        // Disarming a wait that is not the armed one leaves the armed one.
        t.disarm(DeviceTimer::SwitchConnack);
        assert!(t.armed(DeviceTimer::BrokerConnack).is_some());
        t.clear_upstream_wait();
        assert_eq!(t.armed(DeviceTimer::BrokerConnack), None);
        assert_eq!(
            t.armed(DeviceTimer::Sleep),
            Some(t0 + Duration::from_secs(9))
        );
        // Derived timers are never armed here.
        assert_eq!(t.armed(DeviceTimer::KeepAlive), None);
        assert_eq!(t.armed(DeviceTimer::Retransmit), None);
    }

    #[test]
    fn every_timer_is_listed_once() {
        for (i, a) in DeviceTimer::ALL.iter().enumerate() {
            assert!(!DeviceTimer::ALL[i + 1..].contains(a), "{a:?} twice");
        }
        let t0 = Instant::now();
        assert_eq!(
            earliest([None, Some(t0 + Duration::from_secs(2)), Some(t0)].into_iter()),
            Some(t0)
        );
        assert_eq!(earliest([None, None].into_iter()), None);
    }
}
