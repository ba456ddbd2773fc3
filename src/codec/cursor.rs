//! A checked reader over one message's variable part.
//!
//! Owns: every read of wire data in the message modules. Must never: index without a bounds
//! check or copy more than it was given; each read either succeeds or names the missing field.

use bytes::Bytes;

use super::{DecodeError, MsgType};

/// Consumes a [`Bytes`] from the front; slices it out are zero-copy.
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes exactly `n` octets, or fails without consuming anything.
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        Ok(self.buf.split_to(n))
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let b = *self.buf.first().ok_or(DecodeError::Truncated { field })?;
        let _ = self.buf.split_to(1);
        Ok(b)
    }

    pub(crate) fn array2(&mut self, field: &'static str) -> Result<[u8; 2], DecodeError> {
        let two = self.take(2, field)?;
        match (two.first(), two.get(1)) {
            (Some(a), Some(b)) => Ok([*a, *b]),
            _ => Err(DecodeError::Truncated { field }),
        }
    }

    /// Big-endian, as every multi-octet field of the spec.
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array2(field).map(u16::from_be_bytes)
    }

    /// Everything left (possibly empty).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Everything left as UTF-8 text. Copies at most the frame's own size.
    pub(crate) fn rest_utf8(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.rest();
        std::str::from_utf8(&raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// Fails if any octet is left: for messages whose size is fixed by their type.
    pub(crate) fn finish(self, msg_type: MsgType) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes { msg_type })
        }
    }
}
