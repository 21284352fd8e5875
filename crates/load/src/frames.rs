//! Frames on the wire without the rest of Canopy: encoding messages,
//! handshakes (Noise, then Hello, through `canopy_node::secure`), and
//! cutting a byte stream into frames by their 4-byte big-endian length
//! prefix alone.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail};
use bytes::{Buf as _, Bytes, BytesMut};
use canopy_node::secure::{SecureStream, Side};
use canopy_proto::limits::{MAX_FRAME_LEN, PROTOCOL_VERSION};
use canopy_proto::secure::StaticKeypair;
use canopy_proto::{FrameCodec, HandshakeOutcome, Hello, Message, NodeId, Role};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Encoder as _;

/// How long the Noise handshake may take.
const NOISE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Bytes of the length prefix.
pub const PREFIX: usize = 4;

/// `message` as one frame, prefix included.
pub fn encode(message: &Message) -> anyhow::Result<Bytes> {
    let mut buffer = BytesMut::new();
    FrameCodec::default().encode(message, &mut buffer)?;
    Ok(buffer.freeze())
}

/// Our Hello, as a leaf or as a supernode, with no listening address (a
/// leaf without one is firewalled, so the supernode does not probe it).
pub fn hello(role: Role, node_id: NodeId) -> Message {
    Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        role,
        node_id,
        listen_addr: None,
        user_agent: concat!("canopy-load/", env!("CARGO_PKG_VERSION")).to_owned(),
        capabilities: Vec::new(),
    })
}

/// A TCP connection to `target` from `source` (any port), so that many
/// connections can come from several loopback addresses.
pub async fn connect(target: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding to {ip}"))?;
    }
    let stream = socket
        .connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects, runs the Noise handshake under `key` and says Hello as `role`
/// with the id `key` owns; returns the encrypted connection, ready for
/// business.
pub async fn handshake(
    target: SocketAddr,
    source: Option<IpAddr>,
    role: Role,
    key: &StaticKeypair,
) -> anyhow::Result<SecureStream<TcpStream>> {
    let stream = connect(target, source).await?;
    let mut secure = SecureStream::handshake(stream, key, Side::Initiator, NOISE_TIMEOUT)
        .await
        .with_context(|| format!("noise handshake with {target}"))?;
    secure.send(&hello(role, key.node_id())).await?;
    loop {
        match secure.recv().await {
            Some(Ok(Message::HelloReply(reply))) => match reply.outcome {
                HandshakeOutcome::Accepted { .. } => return Ok(secure),
                HandshakeOutcome::Rejected { reason, detail, .. } => {
                    bail!("{target} refused us: {reason:?}: {detail}")
                }
            },
            Some(Ok(Message::Bye { reason, detail, .. })) => {
                bail!("{target} said bye during the handshake: {reason:?}: {detail}")
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => bail!("{target}: {error}"),
            None => bail!("{target} closed the connection during the handshake"),
        }
    }
}

/// Cuts complete frames (prefix included) off the front of `buffer`. Fails
/// on a length over the protocol's limit: the stream is out of sync.
pub fn split_frame(buffer: &mut BytesMut) -> anyhow::Result<Option<BytesMut>> {
    let Some(len) = frame_len(buffer)? else {
        return Ok(None);
    };
    if buffer.len() < len {
        return Ok(None);
    }
    Ok(Some(buffer.split_to(len)))
}

/// The whole length (prefix included) of the frame at the start of
/// `bytes`, if its prefix is there.
pub fn frame_len(bytes: &[u8]) -> anyhow::Result<Option<usize>> {
    if bytes.len() < PREFIX {
        return Ok(None);
    }
    let len = (&bytes[..PREFIX]).get_u32() as usize;
    if len > MAX_FRAME_LEN {
        bail!("frame of {len} bytes: the stream is out of sync");
    }
    Ok(Some(PREFIX + len))
}

/// Counts frames in a byte stream read in arbitrary chunks, looking at
/// nothing but the length prefixes.
#[derive(Debug, Default)]
pub struct FrameCounter {
    /// Bytes of the current frame still to come.
    skip: usize,
    /// A length prefix split across reads.
    partial: Vec<u8>,
}

impl FrameCounter {
    /// Feeds `chunk`; returns the frames that ended in it, and for each the
    /// byte range it has in `chunk` if the whole frame is there.
    pub fn feed(&mut self, mut chunk: &[u8], mut whole: impl FnMut(&[u8])) -> anyhow::Result<u64> {
        let mut frames = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(chunk.len());
                self.skip -= n;
                chunk = &chunk[n..];
                if self.skip > 0 {
                    return Ok(frames);
                }
                frames += 1;
            }
            if !self.partial.is_empty() {
                let need = PREFIX - self.partial.len();
                let n = need.min(chunk.len());
                self.partial.extend_from_slice(&chunk[..n]);
                chunk = &chunk[n..];
                if self.partial.len() < PREFIX {
                    return Ok(frames);
                }
                let len = frame_len(&self.partial)?.unwrap_or(PREFIX);
                self.partial.clear();
                self.skip = len - PREFIX;
                if self.skip == 0 {
                    frames += 1;
                }
                continue;
            }
            if chunk.is_empty() {
                return Ok(frames);
            }
            match frame_len(chunk)? {
                Some(len) if len <= chunk.len() => {
                    whole(&chunk[..len]);
                    frames += 1;
                    chunk = &chunk[len..];
                }
                Some(len) => {
                    self.skip = len - chunk.len();
                    return Ok(frames);
                }
                None => {
                    self.partial.extend_from_slice(chunk);
                    return Ok(frames);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_frames_across_any_split() {
        let mut stream = Vec::new();
        for len in [0usize, 1, 5, 300, 2] {
            stream.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_be_bytes());
            stream.extend(std::iter::repeat_n(7u8, len));
        }
        for step in 1..stream.len() {
            let mut counter = FrameCounter::default();
            let mut total = 0;
            for chunk in stream.chunks(step) {
                total += counter.feed(chunk, |_| {}).unwrap_or(0);
            }
            assert_eq!(total, 5, "chunks of {step}");
        }
    }
}
