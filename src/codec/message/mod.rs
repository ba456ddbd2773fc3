//! Messages (stub).
use super::{DecodeError, Frame, Message};
use bytes::Bytes;
pub fn decode(_frame: Bytes) -> Result<Frame, DecodeError> {
    Err(DecodeError::Truncated)
}
pub fn decode_message(_frame: Bytes) -> Result<Message, DecodeError> {
    Err(DecodeError::Truncated)
}
