//! Framing: a 4-byte big-endian length, then one protobuf `Envelope`.
//!
//! A tokio-util `Decoder`/`Encoder` pair. Decoding is check-then-parse and
//! keeps no state between calls: the declared length is read without
//! consuming it and checked against the limit before the buffer is grown, so
//! a peer announcing a 4 GiB frame costs us four bytes; only a complete frame
//! is consumed. A decoded frame is then validated into a domain [`Message`].

use bytes::{Buf, BufMut, BytesMut};
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

use crate::domain::{InvalidMessage, Message};
use crate::limits::MAX_FRAME_LEN;
use crate::wire;

const LENGTH_FIELD_LEN: usize = 4;

/// Why a frame could not be read or written. Every variant is fatal to the
/// connection: the stream may be out of sync or the peer misbehaving.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds the limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The length the frame claimed (or had, when sending).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame's bytes are not a protobuf `Envelope`.
    #[error("frame does not decode: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The frame decoded but a field is missing or out of range.
    #[error("invalid message: {0}")]
    Invalid(#[from] InvalidMessage),
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes and decodes Canopy frames.
#[derive(Debug)]
pub struct FrameCodec {
    max_frame_len: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::with_max_frame_len(MAX_FRAME_LEN)
    }
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame_len` in both directions.
    pub fn with_max_frame_len(max_frame_len: usize) -> Self {
        Self { max_frame_len }
    }
}

impl Decoder for FrameCodec {
    type Item = Message;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        if src.len() < LENGTH_FIELD_LEN {
            return Ok(None);
        }
        let len = (&src[..LENGTH_FIELD_LEN]).get_u32() as usize;
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let frame_len = LENGTH_FIELD_LEN + len;
        if src.len() < frame_len {
            // Bounded by the check above: at most one frame's worth.
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_FIELD_LEN);
        let frame = src.split_to(len);
        let envelope = wire::Envelope::decode(frame.freeze())?;
        Ok(Some(Message::try_from(envelope)?))
    }
}

impl Encoder<&Message> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, message: &Message, dst: &mut BytesMut) -> Result<(), FrameError> {
        let envelope = wire::Envelope::from(message);
        let len = envelope.encoded_len();
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        dst.reserve(LENGTH_FIELD_LEN + len);
        // `len` fits: it is at most `max_frame_len`, itself far below 4 GiB.
        dst.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        envelope.encode(dst).map_err(|e| {
            std::io::Error::other(format!("protobuf encoding failed after sizing: {e}"))
        })?;
        Ok(())
    }
}

impl Encoder<Message> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, message: Message, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&message, dst)
    }
}
