//! Keep-alive supervision (§6.11): the tolerance on the Duration, PINGREQ restarting the timer,
//! a device not heard in time lost.

use std::time::Duration;

use super::super::DeviceState;
use super::*;

#[test]
fn keep_alive_short_period_has_fifty_percent_tolerance() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect_with(&a, "dev1", true, None, 10);
    w.advance(Duration::from_millis(14_900));
    assert_eq!(w.gw.device_state("dev1"), Some(DeviceState::Active));
    w.assert_quiet();
    w.advance(Duration::from_millis(100));
    assert_eq!(w.gw.device_state("dev1"), Some(DeviceState::Lost));
    // No DISCONNECT upstream: the broker publishes the will.
    assert_eq!(w.take_all(), vec![Output::Close { session: s }]);
    assert_eq!(w.gw.stats().devices_lost, 1);
}

#[test]
fn keep_alive_long_period_has_ten_percent_tolerance() {
    let mut w = World::new();
    let a = addr(1);
    let s = w.connect_with(&a, "dev1", true, None, 100);
    w.advance(Duration::from_millis(109_999));
    assert_eq!(w.gw.device_state("dev1"), Some(DeviceState::Active));
    w.advance(Duration::from_millis(1));
    assert_eq!(w.gw.device_state("dev1"), Some(DeviceState::Lost));
    assert_eq!(w.take_all(), vec![Output::Close { session: s }]);
}

#[test]
fn pingreq_gets_pingresp_and_resets_keep_alive() {
    let mut w = World::new();
    let a = addr(1);
    w.connect_with(&a, "dev1", true, None, 10);
    for _ in 0..5 {
        w.advance(Duration::from_secs(14));
        w.device_send(&a, Message::PingReq { client_id: None });
        assert_eq!(w.take_to_device(&a), vec![Message::PingResp]);
    }
    assert_eq!(w.gw.device_state("dev1"), Some(DeviceState::Active));
    w.advance(Duration::from_millis(14_999));
    assert_eq!(w.gw.device_state("dev1"), Some(DeviceState::Active));
    w.advance(Duration::from_millis(1));
    assert_eq!(w.gw.device_state("dev1"), Some(DeviceState::Lost));
}
