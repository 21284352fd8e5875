//! The Noise handshake on a live stream, and a simple encrypted message
//! stream for clients that are not nodes (tests, the load generator).
//!
//! The cryptography and the message formats are in
//! [`canopy_proto::secure`]; this module only moves their bytes. A node's
//! connections use [`handshake`] and then [`crate::connection`]'s reader
//! and writer, which batch and bound everything; [`SecureStream`] is the
//! plain one-message-at-a-time version of the same stream.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use canopy_proto::secure::{
    Handshake, LENGTH_PREFIX_LEN, MAX_HANDSHAKE_MESSAGE_LEN, PublicKey, ReceiveCipher, SecureError,
    SendCipher, StaticKeypair,
};
use canopy_proto::{FrameCodec, FrameError, Message};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_util::codec::{Decoder as _, Encoder as _};

/// Which side of the handshake we are: whoever opened the TCP connection
/// initiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// We dialed.
    Initiator,
    /// We accepted.
    Responder,
}

/// Why a handshake failed. No Bye is possible before keys exist: the
/// connection is simply closed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// It did not complete in time.
    #[error("the noise handshake did not complete in time")]
    TimedOut,
    /// The peer closed the connection.
    #[error("closed during the noise handshake")]
    Closed,
    /// The socket failed.
    #[error("i/o error during the noise handshake: {0}")]
    Io(#[from] io::Error),
    /// A message was too large, out of turn, or failed to authenticate.
    #[error(transparent)]
    Secure(#[from] SecureError),
}

/// A completed handshake.
#[derive(Debug)]
pub struct Secured {
    /// Encrypts what we send.
    pub send: SendCipher,
    /// Decrypts what we receive.
    pub receive: ReceiveCipher,
    /// The peer's static key, proved during the handshake.
    pub remote: PublicKey,
    /// Bytes read past the handshake: the start of the transport messages.
    pub leftover: BytesMut,
    /// Bytes read and written by the handshake, for traffic counters.
    pub bytes_in: usize,
    /// See `bytes_in`.
    pub bytes_out: usize,
}

/// Runs the Noise handshake as `side` with our static `key`, giving up
/// after `timeout`. Reads at most one handshake message's worth at a time
/// and refuses a length over the limit before allocating for it.
pub async fn handshake<S>(
    stream: &mut S,
    key: &StaticKeypair,
    side: Side,
    timeout: Duration,
) -> Result<Secured, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, exchange(stream, key, side))
        .await
        .map_err(|_| HandshakeError::TimedOut)?
}

async fn exchange<S>(
    stream: &mut S,
    key: &StaticKeypair,
    side: Side,
) -> Result<Secured, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut state = match side {
        Side::Initiator => Handshake::initiator(key)?,
        Side::Responder => Handshake::responder(key)?,
    };
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    let (mut bytes_in, mut bytes_out) = (0, 0);
    while !state.is_finished() {
        if state.is_my_turn() {
            output.clear();
            state.write_message(&mut output)?;
            stream.write_all(&output).await?;
            bytes_out += output.len();
            continue;
        }
        while !state.read_message(&mut input)? {
            // Room for one whole handshake message, no more.
            input.reserve(LENGTH_PREFIX_LEN + MAX_HANDSHAKE_MESSAGE_LEN);
            match stream.read_buf(&mut input).await? {
                0 => return Err(HandshakeError::Closed),
                read => bytes_in += read,
            }
        }
    }
    let (send, receive, remote) = state.finish()?;
    Ok(Secured {
        send,
        receive,
        remote,
        leftover: input,
        bytes_in,
        bytes_out,
    })
}

/// A Noise-encrypted frame stream, one message at a time: for clients and
/// tests. (Nodes use [`crate::connection`], which batches.)
#[derive(Debug)]
pub struct SecureStream<S> {
    stream: S,
    send: SendCipher,
    receive: ReceiveCipher,
    remote: PublicKey,
    /// Ciphertext read but not yet decrypted.
    input: BytesMut,
    /// Plaintext decrypted but not yet decoded into frames.
    plain: BytesMut,
    codec: FrameCodec,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SecureStream<S> {
    /// Runs the handshake on `stream` as `side`.
    pub async fn handshake(
        mut stream: S,
        key: &StaticKeypair,
        side: Side,
        timeout: Duration,
    ) -> Result<Self, HandshakeError> {
        let secured = handshake(&mut stream, key, side, timeout).await?;
        Ok(Self {
            stream,
            send: secured.send,
            receive: secured.receive,
            remote: secured.remote,
            input: secured.leftover,
            plain: BytesMut::new(),
            codec: FrameCodec::default(),
        })
    }

    /// The peer's authenticated static key.
    pub fn remote(&self) -> PublicKey {
        self.remote
    }

    /// Sends `message` as one frame.
    pub async fn send(&mut self, message: &Message) -> Result<(), FrameError> {
        let mut frame = BytesMut::new();
        self.codec.encode(message, &mut frame)?;
        Ok(self.send_plaintext(&frame).await?)
    }

    /// Sends `bytes` as the next bytes of the plaintext frame stream,
    /// whatever they are (a hostile client's tool).
    pub async fn send_plaintext(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut sealed = BytesMut::new();
        self.send
            .seal_all(bytes, &mut sealed)
            .map_err(io::Error::other)?;
        self.stream.write_all(&sealed).await
    }

    /// The next message; `None` when the stream ends cleanly.
    pub async fn recv(&mut self) -> Option<Result<Message, FrameError>> {
        loop {
            match self.codec.decode(&mut self.plain) {
                Ok(Some(message)) => return Some(Ok(message)),
                Ok(None) => {}
                Err(error) => return Some(Err(error)),
            }
            match self.receive.open(&mut self.input, &mut self.plain) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => return Some(Err(FrameError::Io(io::Error::other(error)))),
            }
            self.input.reserve(4096);
            match self.stream.read_buf(&mut self.input).await {
                Ok(0) if self.input.is_empty() && self.plain.is_empty() => return None,
                Ok(0) => {
                    return Some(Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())));
                }
                Ok(_) => {}
                Err(error) => return Some(Err(FrameError::Io(error))),
            }
        }
    }

    /// The stream and both ciphers, with the ciphertext and plaintext
    /// already read but not yet taken, for a caller that drives the
    /// stream itself.
    pub fn into_parts(self) -> SecureParts<S> {
        SecureParts {
            stream: self.stream,
            send: self.send,
            receive: self.receive,
            input: self.input,
            plain: self.plain,
        }
    }
}

/// A [`SecureStream`] taken apart.
#[derive(Debug)]
pub struct SecureParts<S> {
    /// The underlying stream.
    pub stream: S,
    /// Encrypts what we send.
    pub send: SendCipher,
    /// Decrypts what we receive.
    pub receive: ReceiveCipher,
    /// Ciphertext read but not yet decrypted.
    pub input: BytesMut,
    /// Plaintext decrypted but not yet decoded.
    pub plain: BytesMut,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use canopy_proto::ByeReason;

    const PATIENCE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn both_ends_exchange_messages_and_learn_keys() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (ka, kb) = (
            StaticKeypair::generate().unwrap(),
            StaticKeypair::generate().unwrap(),
        );
        let kb2 = kb.clone();
        let responder = tokio::spawn(async move {
            let mut stream = SecureStream::handshake(b, &kb2, Side::Responder, PATIENCE)
                .await
                .unwrap();
            let got = stream.recv().await.unwrap().unwrap();
            stream.send(&got).await.unwrap();
            stream.remote()
        });
        let mut stream = SecureStream::handshake(a, &ka, Side::Initiator, PATIENCE)
            .await
            .unwrap();
        assert_eq!(stream.remote(), kb.public());
        let bye = Message::Bye {
            try_supernodes: Vec::new(),
            reason: ByeReason::Shutdown,
            detail: "x".repeat(200),
        };
        stream.send(&bye).await.unwrap();
        assert_eq!(stream.recv().await.unwrap().unwrap(), bye);
        assert_eq!(responder.await.unwrap(), ka.public());
    }

    #[tokio::test]
    async fn a_silent_peer_times_out_and_an_oversized_message_is_refused() {
        let key = StaticKeypair::generate().unwrap();
        let (mut a, _b) = tokio::io::duplex(1024);
        let silent = handshake(&mut a, &key, Side::Responder, Duration::from_millis(50)).await;
        assert!(matches!(silent, Err(HandshakeError::TimedOut)));

        let (mut a, mut b) = tokio::io::duplex(1024);
        b.write_all(&[0xff, 0xff]).await.unwrap();
        let huge = handshake(&mut a, &key, Side::Responder, PATIENCE).await;
        assert!(matches!(
            huge,
            Err(HandshakeError::Secure(
                SecureError::HandshakeTooLarge { .. }
            ))
        ));
    }
}
