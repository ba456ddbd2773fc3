//! Protocol values built from fuzzer bytes: mostly from small sets of names and ids that make
//! the gateway's tables collide and match, sometimes fully arbitrary.

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;
use mqttsn_gateway::codec::{self, Message, QoS, ReturnCode, TopicFilter, TopicRef, WillTopic};
use mqttsn_gateway::mqtt;

/// Topic names and filters the devices and the broker share, so subscriptions match.
pub const TOPICS: &[&str] = &[
    "t",
    "t/1",
    "a/b",
    "pre/seven",
    "+",
    "#",
    "t/+",
    "a/#",
    "",
    "$SYS/x",
    "t//1",
];
pub const CLIENT_IDS: &[&str] = &["a", "b", "c", "dev-1", ""];

/// One of `items` (which must not be empty).
pub fn pick<T: Copy>(u: &mut Unstructured<'_>, items: &[T]) -> Result<T> {
    u.choose(items).copied()
}

/// Up to `max` octets, fewer when the input runs out.
pub fn bytes(u: &mut Unstructured<'_>, max: usize) -> Result<Bytes> {
    let n = u.int_in_range(0..=max)?.min(u.len());
    Ok(Bytes::copy_from_slice(u.bytes(n)?))
}

fn string(u: &mut Unstructured<'_>, common: &[&str]) -> Result<String> {
    if u.ratio(7, 8)? {
        Ok(pick(u, common)?.to_owned())
    } else {
        String::arbitrary(u)
    }
}

pub fn topic(u: &mut Unstructured<'_>) -> Result<String> {
    string(u, TOPICS)
}

pub fn client_id(u: &mut Unstructured<'_>) -> Result<String> {
    string(u, CLIENT_IDS)
}

/// `hint` most of the time (ids the gateway handed out), else any value.
pub fn id(u: &mut Unstructured<'_>, hints: &[u16]) -> Result<u16> {
    if !hints.is_empty() && u.ratio(3, 4)? {
        pick(u, hints)
    } else if u.ratio(1, 2)? {
        Ok(u.int_in_range(0..=8)?)
    } else {
        u16::arbitrary(u)
    }
}

pub fn sn_qos(u: &mut Unstructured<'_>) -> Result<QoS> {
    pick(
        u,
        &[
            QoS::AtMostOnce,
            QoS::AtLeastOnce,
            QoS::ExactlyOnce,
            QoS::MinusOne,
        ],
    )
}

pub fn return_code(u: &mut Unstructured<'_>) -> Result<ReturnCode> {
    if u.ratio(3, 4)? {
        return Ok(ReturnCode::Accepted);
    }
    pick(
        u,
        &[
            ReturnCode::Congestion,
            ReturnCode::InvalidTopicId,
            ReturnCode::NotSupported,
        ],
    )
}

fn will_topic(u: &mut Unstructured<'_>) -> Result<Option<WillTopic>> {
    if u.ratio(1, 6)? {
        return Ok(None);
    }
    Ok(Some(WillTopic {
        qos: sn_qos(u)?,
        retain: bool::arbitrary(u)?,
        topic: topic(u)?,
    }))
}

fn topic_ref(u: &mut Unstructured<'_>, ids: &[u16]) -> Result<TopicRef> {
    Ok(match u.int_in_range(0..=5)? {
        0..=3 => TopicRef::Id(id(u, ids)?),
        4 => TopicRef::Predefined(if u.ratio(3, 4)? {
            7
        } else {
            u16::arbitrary(u)?
        }),
        _ => TopicRef::Short(<[u8; 2]>::arbitrary(u)?),
    })
}

fn topic_filter(u: &mut Unstructured<'_>) -> Result<TopicFilter> {
    Ok(match u.int_in_range(0..=5)? {
        0..=3 => TopicFilter::Name(topic(u)?),
        4 => TopicFilter::Predefined(if u.ratio(3, 4)? {
            7
        } else {
            u16::arbitrary(u)?
        }),
        _ => TopicFilter::Short(<[u8; 2]>::arbitrary(u)?),
    })
}

/// Ids the gateway used toward one device, so that answers refer to real flows.
#[derive(Debug, Default, Clone)]
pub struct Hints {
    pub topic_ids: Vec<u16>,
    pub msg_ids: Vec<u16>,
}

/// A message a device (or something pretending to be one) could send: every kind of §5.4,
/// weighted toward the ones a client sends.
pub fn sn_message(u: &mut Unstructured<'_>, h: &Hints) -> Result<Message> {
    let msg_id = |u: &mut Unstructured<'_>| id(u, &h.msg_ids);
    Ok(match u.int_in_range(0..=29)? {
        0..=3 => Message::Connect(codec::Connect {
            will: bool::arbitrary(u)?,
            clean_session: bool::arbitrary(u)?,
            protocol_id: if u.ratio(15, 16)? {
                codec::PROTOCOL_ID_V1_2
            } else {
                u8::arbitrary(u)?
            },
            duration: pick(u, &[0, 1, 10, 60, 600, u16::MAX])?,
            client_id: client_id(u)?,
        }),
        4 => Message::WillTopic(will_topic(u)?),
        5 => Message::WillMsg { msg: bytes(u, 32)? },
        6..=7 => Message::Register(codec::Register {
            topic_id: if u.ratio(7, 8)? {
                0
            } else {
                u16::arbitrary(u)?
            },
            msg_id: msg_id(u)?,
            topic_name: topic(u)?,
        }),
        8 => Message::Regack(codec::Regack {
            topic_id: id(u, &h.topic_ids)?,
            msg_id: msg_id(u)?,
            return_code: return_code(u)?,
        }),
        9..=13 => {
            let qos = sn_qos(u)?;
            Message::Publish(codec::Publish {
                dup: bool::arbitrary(u)?,
                qos,
                retain: bool::arbitrary(u)?,
                topic: topic_ref(u, &h.topic_ids)?,
                msg_id: match qos {
                    QoS::AtMostOnce | QoS::MinusOne if u.ratio(7, 8)? => 0,
                    _ => msg_id(u)?,
                },
                data: bytes(u, 64)?,
            })
        }
        14 => Message::Puback(codec::Puback {
            topic_id: id(u, &h.topic_ids)?,
            msg_id: msg_id(u)?,
            return_code: return_code(u)?,
        }),
        15 => Message::Pubrec { msg_id: msg_id(u)? },
        16 => Message::Pubrel { msg_id: msg_id(u)? },
        17 => Message::Pubcomp { msg_id: msg_id(u)? },
        18..=19 => Message::Subscribe(codec::Subscribe {
            dup: bool::arbitrary(u)?,
            qos: sn_qos(u)?,
            msg_id: msg_id(u)?,
            topic: topic_filter(u)?,
        }),
        20 => Message::Unsubscribe(codec::Unsubscribe {
            msg_id: msg_id(u)?,
            topic: topic_filter(u)?,
        }),
        21..=22 => Message::PingReq {
            client_id: if u.ratio(1, 2)? {
                Some(client_id(u)?)
            } else {
                None
            },
        },
        23..=24 => Message::Disconnect {
            duration: if u.ratio(1, 2)? {
                Some(pick(u, &[0, 1, 5, 60, 3600])?)
            } else {
                None
            },
        },
        25 => Message::WillTopicUpd(will_topic(u)?),
        26 => Message::WillMsgUpd { msg: bytes(u, 32)? },
        27 => Message::SearchGw {
            radius: u8::arbitrary(u)?,
        },
        28 => Message::PingResp,
        _ => match u.int_in_range(0..=9)? {
            0 => Message::Advertise {
                gw_id: u8::arbitrary(u)?,
                duration: u16::arbitrary(u)?,
            },
            1 => Message::GwInfo {
                gw_id: u8::arbitrary(u)?,
                gw_add: if u.ratio(1, 2)? {
                    Some(bytes(u, 8)?)
                } else {
                    None
                },
            },
            2 => Message::Connack {
                return_code: return_code(u)?,
            },
            3 => Message::WillTopicReq,
            4 => Message::WillMsgReq,
            5 => Message::Suback(codec::Suback {
                qos: sn_qos(u)?,
                topic_id: id(u, &h.topic_ids)?,
                msg_id: msg_id(u)?,
                return_code: return_code(u)?,
            }),
            6 => Message::Unsuback { msg_id: msg_id(u)? },
            7 => Message::WillTopicResp {
                return_code: return_code(u)?,
            },
            _ => Message::WillMsgResp {
                return_code: return_code(u)?,
            },
        },
    })
}

pub fn mqtt_qos(u: &mut Unstructured<'_>) -> Result<mqtt::QoS> {
    pick(
        u,
        &[
            mqtt::QoS::AtMostOnce,
            mqtt::QoS::AtLeastOnce,
            mqtt::QoS::ExactlyOnce,
        ],
    )
}

pub fn connect_code(u: &mut Unstructured<'_>) -> Result<mqtt::ConnectReturnCode> {
    use mqtt::ConnectReturnCode as C;
    pick(
        u,
        &[
            C::UnacceptableProtocolVersion,
            C::IdentifierRejected,
            C::ServerUnavailable,
            C::BadUserNameOrPassword,
            C::NotAuthorized,
        ],
    )
}

pub fn suback_code(u: &mut Unstructured<'_>) -> Result<mqtt::SubackCode> {
    Ok(if u.ratio(7, 8)? {
        mqtt::SubackCode::Granted(mqtt_qos(u)?)
    } else {
        mqtt::SubackCode::Failure
    })
}

/// A packet id: `hints` (ids in flight) most of the time, sometimes 0 or anything.
pub fn packet_id(u: &mut Unstructured<'_>, hints: &[u16]) -> Result<u16> {
    id(u, hints)
}

/// A PUBLISH as the broker would deliver it.
pub fn mqtt_publish(u: &mut Unstructured<'_>, pkids: &[u16]) -> Result<mqtt::Publish> {
    let qos = mqtt_qos(u)?;
    Ok(mqtt::Publish {
        dup: qos != mqtt::QoS::AtMostOnce && bool::arbitrary(u)?,
        qos,
        retain: bool::arbitrary(u)?,
        topic: topic(u)?,
        packet_id: match qos {
            mqtt::QoS::AtMostOnce => None,
            _ => Some(packet_id(u, pkids)?.max(1)),
        },
        payload: bytes(u, 96)?,
    })
}

/// Any MQTT 3.1.1 packet, either direction. Some encode to nothing (invalid field
/// combinations); callers check `to_bytes`.
pub fn mqtt_packet(u: &mut Unstructured<'_>, pkids: &[u16]) -> Result<mqtt::Packet> {
    use mqtt::Packet as P;
    let pid = |u: &mut Unstructured<'_>| packet_id(u, pkids);
    Ok(match u.int_in_range(0..=13)? {
        0 => P::Connect(Box::new(mqtt::Connect {
            client_id: client_id(u)?,
            clean_session: bool::arbitrary(u)?,
            keep_alive: u16::arbitrary(u)?,
            will: if u.ratio(1, 2)? {
                Some(mqtt::LastWill {
                    topic: topic(u)?,
                    message: bytes(u, 32)?,
                    qos: mqtt_qos(u)?,
                    retain: bool::arbitrary(u)?,
                })
            } else {
                None
            },
            username: Option::<String>::arbitrary(u)?,
            password: if u.ratio(1, 2)? {
                Some(bytes(u, 16)?)
            } else {
                None
            },
        })),
        1 => P::ConnAck {
            session_present: bool::arbitrary(u)?,
            code: if u.ratio(3, 4)? {
                mqtt::ConnectReturnCode::Accepted
            } else {
                connect_code(u)?
            },
        },
        2 => P::Publish(mqtt_publish(u, pkids)?),
        3 => P::PubAck { packet_id: pid(u)? },
        4 => P::PubRec { packet_id: pid(u)? },
        5 => P::PubRel { packet_id: pid(u)? },
        6 => P::PubComp { packet_id: pid(u)? },
        7 => {
            let n = u.int_in_range(0..=3)?;
            let mut filters = Vec::with_capacity(n);
            for _ in 0..n {
                filters.push((topic(u)?, mqtt_qos(u)?));
            }
            P::Subscribe {
                packet_id: pid(u)?,
                filters,
            }
        }
        8 => {
            let n = u.int_in_range(0..=3)?;
            let mut codes = Vec::with_capacity(n);
            for _ in 0..n {
                codes.push(suback_code(u)?);
            }
            P::SubAck {
                packet_id: pid(u)?,
                codes,
            }
        }
        9 => {
            let n = u.int_in_range(0..=3)?;
            let mut filters = Vec::with_capacity(n);
            for _ in 0..n {
                filters.push(topic(u)?);
            }
            P::Unsubscribe {
                packet_id: pid(u)?,
                filters,
            }
        }
        10 => P::UnsubAck { packet_id: pid(u)? },
        11 => P::PingReq,
        12 => P::PingResp,
        _ => P::Disconnect,
    })
}
