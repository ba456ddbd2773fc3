//! The Flags octet of spec §5.3.4 and the small enums packed into it.
//!
//! Owns: bit positions, [`QoS`] <-> 2-bit value, [`TopicIdType`]. Must never: decide which bits a
//! message uses — each message module reads only its own bits and writes the others as 0.

use super::{DecodeError, QoS, TopicFilter, TopicRef};

/// A typed view of the Flags octet:
/// `DUP(7) | QoS(6,5) | Retain(4) | Will(3) | CleanSession(2) | TopicIdType(1,0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u8);

/// TopicIdType (bits 1-0 of Flags). 0b11 is reserved and has no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicIdType {
    /// 0b00: a normal topic id (PUBLISH) or a topic name (SUBSCRIBE / UNSUBSCRIBE).
    Normal,
    /// 0b01: a pre-defined topic id.
    Predefined,
    /// 0b10: a two-octet short topic name.
    Short,
}

impl Flags {
    pub const DUP: u8 = 0b1000_0000;
    pub const QOS_MASK: u8 = 0b0110_0000;
    pub const QOS_SHIFT: u32 = 5;
    pub const RETAIN: u8 = 0b0001_0000;
    pub const WILL: u8 = 0b0000_1000;
    pub const CLEAN_SESSION: u8 = 0b0000_0100;
    pub const TOPIC_ID_TYPE_MASK: u8 = 0b0000_0011;

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn dup(self) -> bool {
        self.0 & Self::DUP != 0
    }

    pub fn qos(self) -> QoS {
        QoS::from_bits((self.0 & Self::QOS_MASK) >> Self::QOS_SHIFT)
    }

    pub fn retain(self) -> bool {
        self.0 & Self::RETAIN != 0
    }

    pub fn will(self) -> bool {
        self.0 & Self::WILL != 0
    }

    pub fn clean_session(self) -> bool {
        self.0 & Self::CLEAN_SESSION != 0
    }

    /// Errors with [`DecodeError::ReservedTopicIdType`] for 0b11.
    pub fn topic_id_type(self) -> Result<TopicIdType, DecodeError> {
        match self.0 & Self::TOPIC_ID_TYPE_MASK {
            0b00 => Ok(TopicIdType::Normal),
            0b01 => Ok(TopicIdType::Predefined),
            0b10 => Ok(TopicIdType::Short),
            _ => Err(DecodeError::ReservedTopicIdType),
        }
    }

    fn with_bit(self, bit: u8, on: bool) -> Self {
        if on {
            Flags(self.0 | bit)
        } else {
            Flags(self.0 & !bit)
        }
    }

    pub fn with_dup(self, on: bool) -> Self {
        self.with_bit(Self::DUP, on)
    }

    pub fn with_qos(self, qos: QoS) -> Self {
        Flags((self.0 & !Self::QOS_MASK) | (qos.bits() << Self::QOS_SHIFT))
    }

    pub fn with_retain(self, on: bool) -> Self {
        self.with_bit(Self::RETAIN, on)
    }

    pub fn with_will(self, on: bool) -> Self {
        self.with_bit(Self::WILL, on)
    }

    pub fn with_clean_session(self, on: bool) -> Self {
        self.with_bit(Self::CLEAN_SESSION, on)
    }

    pub fn with_topic_id_type(self, t: TopicIdType) -> Self {
        Flags((self.0 & !Self::TOPIC_ID_TYPE_MASK) | t.bits())
    }
}

impl TopicIdType {
    pub fn bits(self) -> u8 {
        match self {
            TopicIdType::Normal => 0b00,
            TopicIdType::Predefined => 0b01,
            TopicIdType::Short => 0b10,
        }
    }
}

impl QoS {
    /// Maps the 2-bit Flags value (only the low 2 bits of `bits` are looked at): 0b11 is QoS -1.
    pub fn from_bits(bits: u8) -> QoS {
        match bits & 0b11 {
            0b00 => QoS::AtMostOnce,
            0b01 => QoS::AtLeastOnce,
            0b10 => QoS::ExactlyOnce,
            _ => QoS::MinusOne,
        }
    }

    /// The 2-bit Flags value (not shifted into position).
    pub fn bits(self) -> u8 {
        match self {
            QoS::AtMostOnce => 0b00,
            QoS::AtLeastOnce => 0b01,
            QoS::ExactlyOnce => 0b10,
            QoS::MinusOne => 0b11,
        }
    }
}

impl TopicRef {
    /// The TopicIdType a PUBLISH carrying this reference must have.
    pub fn topic_id_type(&self) -> TopicIdType {
        match self {
            TopicRef::Id(_) => TopicIdType::Normal,
            TopicRef::Predefined(_) => TopicIdType::Predefined,
            TopicRef::Short(_) => TopicIdType::Short,
        }
    }
}

impl TopicFilter {
    /// The TopicIdType a SUBSCRIBE / UNSUBSCRIBE carrying this filter must have.
    pub fn topic_id_type(&self) -> TopicIdType {
        match self {
            TopicFilter::Name(_) => TopicIdType::Normal,
            TopicFilter::Predefined(_) => TopicIdType::Predefined,
            TopicFilter::Short(_) => TopicIdType::Short,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_bits_round_trip() {
        for b in 0..4u8 {
            assert_eq!(QoS::from_bits(b).bits(), b);
        }
        assert_eq!(QoS::from_bits(0b11), QoS::MinusOne);
    }

    #[test]
    fn flag_bits_match_table_4() {
        let f = Flags(0)
            .with_dup(true)
            .with_qos(QoS::ExactlyOnce)
            .with_retain(true)
            .with_will(true)
            .with_clean_session(true)
            .with_topic_id_type(TopicIdType::Short);
        assert_eq!(f.bits(), 0b1101_1110);
        assert!(f.dup() && f.retain() && f.will() && f.clean_session());
        assert_eq!(f.qos(), QoS::ExactlyOnce);
        assert_eq!(f.topic_id_type(), Ok(TopicIdType::Short));
        assert_eq!(
            Flags(0b11).topic_id_type(),
            Err(DecodeError::ReservedTopicIdType)
        );
    }
}
