//! The MQTT-SN ↔ MQTT 3.1.1 mapping, defined once: QoS both ways (and as stored), the device's
//! CONNACK return code when the broker refuses a session, the will an upstream CONNECT carries,
//! and the QoS 0 PUBLISH a device's QoS 0 or -1 PUBLISH becomes.
//!
//! Owns no state. Must never: send, or decide when a mapping applies.

use bytes::Bytes;

use crate::codec::{self, ReturnCode, WillTopic};
use crate::mqtt;

/// The MQTT QoS of an MQTT-SN QoS (-1 is published at QoS 0, spec §6.8).
pub(crate) fn to_mqtt_qos(q: codec::QoS) -> mqtt::QoS {
    match q {
        codec::QoS::MinusOne | codec::QoS::AtMostOnce => mqtt::QoS::AtMostOnce,
        codec::QoS::AtLeastOnce => mqtt::QoS::AtLeastOnce,
        codec::QoS::ExactlyOnce => mqtt::QoS::ExactlyOnce,
    }
}

pub(crate) fn to_sn_qos(q: mqtt::QoS) -> codec::QoS {
    match q {
        mqtt::QoS::AtMostOnce => codec::QoS::AtMostOnce,
        mqtt::QoS::AtLeastOnce => codec::QoS::AtLeastOnce,
        mqtt::QoS::ExactlyOnce => codec::QoS::ExactlyOnce,
    }
}

/// The MQTT-SN QoS of an MQTT QoS as the store keeps it (a number); QoS 0 when it is none.
pub(crate) fn stored_sn_qos(q: u8) -> codec::QoS {
    to_sn_qos(mqtt::QoS::try_from(q).unwrap_or(mqtt::QoS::AtMostOnce))
}

/// The device's CONNACK return code when the broker refused its session.
pub(crate) fn connack_code(code: mqtt::ConnectReturnCode) -> ReturnCode {
    match code {
        mqtt::ConnectReturnCode::ServerUnavailable => ReturnCode::Congestion,
        _ => ReturnCode::NotSupported,
    }
}

/// The MQTT will of a device's WILLTOPIC and WILLMSG.
pub(crate) fn last_will(topic: &WillTopic, msg: &Bytes) -> mqtt::LastWill {
    mqtt::LastWill {
        topic: topic.topic.clone(),
        message: msg.clone(),
        qos: to_mqtt_qos(topic.qos),
        retain: topic.retain,
    }
}

/// An MQTT QoS 0 PUBLISH (device QoS 0 and -1 alike).
pub(crate) fn qos0_publish(topic: String, retain: bool, payload: Bytes) -> mqtt::Publish {
    mqtt::Publish {
        dup: false,
        qos: mqtt::QoS::AtMostOnce,
        retain,
        topic,
        packet_id: None,
        payload,
    }
}
