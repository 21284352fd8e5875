//! Authenticated, encrypted links: the Noise handshake and transport
//! messages every overlay connection runs, as functions over buffers (no
//! I/O, so they can be tested and fuzzed alone). `proto/TRANSPORT.md` is
//! the specification; this module implements it.
//!
//! **Parameters: `Noise_XX_25519_ChaChaPoly_BLAKE2s`.** XX because neither
//! side knows the other's static key in advance (a leaf dials an address,
//! not a key; supernodes learn each other from try-lists), and XX transmits
//! both static keys encrypted, each authenticated by a DH with the other
//! side's ephemeral key. X25519 keys are 32 bytes and cheap to create.
//! ChaCha20-Poly1305 is fast in software on every CPU (no AES instructions
//! needed); BLAKE2s is the hash that fits it on 32-bit and 64-bit alike.
//! The prologue [`PROLOGUE`] names the protocol, so peers of another
//! version fail the handshake at its second message rather than later.
//!
//! **Framing.** Every Noise message, handshake or transport, goes on the
//! wire as a 2-byte big-endian length followed by that many bytes (as in
//! libp2p-noise). Handshake messages are at most
//! [`MAX_HANDSHAKE_MESSAGE_LEN`] (checked before anything is allocated);
//! transport messages at most 65,535 bytes, the 16-byte tag included. After
//! the handshake, the plaintext of the transport messages, concatenated, is
//! the ordinary frame stream (4-byte length + `Envelope`): a message may
//! hold several frames, and a frame may span several messages.
//!
//! **Identity.** A node's id is derived from its static public key
//! ([`PublicKey::node_id`]), so the key a peer proved it holds during the
//! handshake fixes the only node id it may claim in its Hello.

use std::sync::Arc;

use bytes::{Buf as _, BufMut as _, BytesMut};
use snow::params::NoiseParams;
use snow::resolvers::{CryptoResolver as _, DefaultResolver};

use crate::domain::NodeId;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// The handshake's prologue: both sides mix it into the handshake hash, so
/// a peer speaking another protocol or version fails the handshake.
pub const PROLOGUE: &[u8] = b"canopy/2";
/// Bytes of the big-endian length before every Noise message.
pub const LENGTH_PREFIX_LEN: usize = 2;
/// Largest Noise message (Noise's own limit), the tag included.
pub const MAX_NOISE_MESSAGE_LEN: usize = 65_535;
/// Bytes of the authentication tag in every transport message.
pub const TAG_LEN: usize = 16;
/// Most plaintext bytes in one transport message.
pub const MAX_PLAINTEXT_LEN: usize = MAX_NOISE_MESSAGE_LEN - TAG_LEN;
/// Largest handshake message accepted. Canopy's are 32, 96 and 64 bytes
/// (empty payloads); the rest is room for payloads a later version may add.
pub const MAX_HANDSHAKE_MESSAGE_LEN: usize = 1024;
/// Bytes of an X25519 key.
pub const KEY_LEN: usize = 32;
/// BLAKE3 key-derivation context for node ids (see [`PublicKey::node_id`]).
pub const NODE_ID_CONTEXT: &str = "canopy 2026-12-01 node id from X25519 static key";

/// Why a handshake or transport message failed. Every variant is fatal to
/// the connection.
#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    /// A handshake message's length prefix exceeds the limit; nothing was
    /// allocated for it.
    #[error("handshake message of {len} bytes exceeds the {max}-byte limit")]
    HandshakeTooLarge {
        /// The length it claimed.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A transport message too short to hold its tag.
    #[error("transport message of {0} bytes is shorter than its tag")]
    TooShort(usize),
    /// Plaintext over [`MAX_PLAINTEXT_LEN`] offered to one message.
    #[error("{0} bytes of plaintext do not fit one transport message")]
    PlaintextTooLarge(usize),
    /// The handshake finished without the peer's static key (cannot happen
    /// with XX; kept rather than trusted).
    #[error("the peer sent no static key")]
    NoRemoteKey,
    /// A message arrived when it was ours to send, or the reverse.
    #[error("handshake message out of turn")]
    OutOfTurn,
    /// A handshake message was cut short.
    #[error("handshake message cut short")]
    Incomplete,
    /// Noise refused a message: it did not decrypt or authenticate (a
    /// tampered stream, the wrong prologue or version, a wrong key), or a
    /// state error.
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
}

/// A node's static X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// The node id this key owns: the first 16 bytes of
    /// `BLAKE3.derive_key(NODE_ID_CONTEXT, public_key)`. Anyone can check
    /// it from the key alone; finding a second key with a chosen id costs a
    /// 2^128 search.
    pub fn node_id(&self) -> NodeId {
        let derived = blake3::derive_key(NODE_ID_CONTEXT, &self.0);
        let mut id = [0u8; 16];
        id.copy_from_slice(&derived[..16]);
        NodeId(id)
    }

    /// The key from bytes a peer sent, if it has the right length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; KEY_LEN]>::try_from(bytes).ok().map(Self)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

/// A node's static X25519 key pair: who it is on the network.
#[derive(Clone)]
pub struct StaticKeypair {
    private: [u8; KEY_LEN],
    public: PublicKey,
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private half.
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl StaticKeypair {
    /// A fresh key pair from the system's random source.
    pub fn generate() -> Result<Self, SecureError> {
        let keypair = snow::Builder::new(params()).generate_keypair()?;
        let private = <[u8; KEY_LEN]>::try_from(keypair.private.as_slice())
            .map_err(|_| snow::Error::Input)?;
        Ok(Self::from_private(private))
    }

    /// The key pair of a stored private key (any 32 bytes are a valid
    /// X25519 private key; the public half is computed from it).
    pub fn from_private(private: [u8; KEY_LEN]) -> Self {
        let mut public = [0u8; KEY_LEN];
        if let Some(mut dh) = DefaultResolver.resolve_dh(&snow::params::DHChoice::Curve25519) {
            dh.set(&private);
            public.copy_from_slice(&dh.pubkey()[..KEY_LEN]);
        }
        Self {
            private,
            public: PublicKey(public),
        }
    }

    /// The private half, for saving to the key file.
    pub fn private_bytes(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The node id it owns.
    pub fn node_id(&self) -> NodeId {
        self.public.node_id()
    }
}

fn params() -> NoiseParams {
    // A constant name that parses; a failure here is a bug in this file,
    // caught by every test.
    NOISE_PARAMS
        .parse()
        .unwrap_or_else(|_| unreachable!("NOISE_PARAMS parses"))
}

/// The length of the length-prefixed message at the front of `buffer`, if
/// its prefix is there (prefix excluded).
fn prefixed_len(buffer: &[u8]) -> Option<usize> {
    match buffer {
        [high, low, ..] => Some(usize::from(u16::from_be_bytes([*high, *low]))),
        _ => None,
    }
}

/// The body length of the handshake message at the front of `buffer`, if
/// its prefix has arrived; an error if it claims more than
/// [`MAX_HANDSHAKE_MESSAGE_LEN`] (checked before anything is allocated).
pub fn handshake_message_len(buffer: &[u8]) -> Result<Option<usize>, SecureError> {
    match prefixed_len(buffer) {
        Some(len) if len > MAX_HANDSHAKE_MESSAGE_LEN => Err(SecureError::HandshakeTooLarge {
            len,
            max: MAX_HANDSHAKE_MESSAGE_LEN,
        }),
        other => Ok(other),
    }
}

/// The body length of the transport message at the front of `buffer`, if
/// its prefix has arrived; an error if it is too short to hold a tag. (At
/// most 65,535 by construction.)
pub fn transport_message_len(buffer: &[u8]) -> Result<Option<usize>, SecureError> {
    match prefixed_len(buffer) {
        Some(len) if len < TAG_LEN => Err(SecureError::TooShort(len)),
        other => Ok(other),
    }
}

/// One side of a handshake in progress.
pub struct Handshake {
    state: snow::HandshakeState,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.state.is_initiator())
            .field("finished", &self.state.is_handshake_finished())
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// The dialer's side: it sends the first message.
    pub fn initiator(key: &StaticKeypair) -> Result<Self, SecureError> {
        let state = Self::builder(key)?.build_initiator()?;
        Ok(Self { state })
    }

    /// The acceptor's side.
    pub fn responder(key: &StaticKeypair) -> Result<Self, SecureError> {
        let state = Self::builder(key)?.build_responder()?;
        Ok(Self { state })
    }

    fn builder(key: &StaticKeypair) -> Result<snow::Builder<'_>, SecureError> {
        Ok(snow::Builder::new(params())
            .prologue(PROLOGUE)?
            .local_private_key(&key.private)?)
    }

    /// True once all three messages have gone.
    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// True if the next message is ours to send.
    pub fn is_my_turn(&self) -> bool {
        self.state.is_my_turn()
    }

    /// Appends our next message (prefix included, empty payload) to `out`.
    pub fn write_message(&mut self, out: &mut BytesMut) -> Result<(), SecureError> {
        if !self.is_my_turn() || self.is_finished() {
            return Err(SecureError::OutOfTurn);
        }
        let mut message = [0u8; MAX_HANDSHAKE_MESSAGE_LEN];
        let len = self.state.write_message(&[], &mut message)?;
        // `len` is below MAX_HANDSHAKE_MESSAGE_LEN, so it fits two bytes.
        out.put_u16(u16::try_from(len).map_err(|_| snow::Error::Input)?);
        out.put_slice(&message[..len]);
        Ok(())
    }

    /// Reads the peer's next message from the front of `buffer`, if it has
    /// all arrived (consuming it); `Ok(false)` if more bytes are needed.
    /// This is the whole parsing of a handshake's input, on arbitrary
    /// bytes: the function to fuzz. Any payload is ignored.
    pub fn read_message(&mut self, buffer: &mut BytesMut) -> Result<bool, SecureError> {
        let Some(len) = handshake_message_len(buffer)? else {
            return Ok(false);
        };
        if buffer.len() < LENGTH_PREFIX_LEN + len {
            return Ok(false);
        }
        if self.is_my_turn() || self.is_finished() {
            return Err(SecureError::OutOfTurn);
        }
        buffer.advance(LENGTH_PREFIX_LEN);
        let message = buffer.split_to(len);
        let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE_LEN];
        self.state.read_message(&message, &mut payload)?;
        Ok(true)
    }

    /// The finished handshake's ciphers, and the peer's authenticated
    /// static key.
    pub fn finish(self) -> Result<(SendCipher, ReceiveCipher, PublicKey), SecureError> {
        let remote = self
            .state
            .get_remote_static()
            .and_then(PublicKey::from_slice)
            .ok_or(SecureError::NoRemoteKey)?;
        let state = Arc::new(self.state.into_stateless_transport_mode()?);
        Ok((
            SendCipher {
                state: state.clone(),
                nonce: 0,
            },
            ReceiveCipher { state, nonce: 0 },
            remote,
        ))
    }
}

/// Runs a responder under `key` on `input` taken as everything an
/// initiator sent: reads message 1, answers (the answer is dropped), then
/// reads message 3 from the rest. Returns the initiator's key if the
/// handshake completed, `None` if `input` ran out first. A pure function
/// over arbitrary bytes, for fuzzing the handshake's parsing: it must
/// never panic nor allocate beyond the message limit.
pub fn respond_to(key: &StaticKeypair, input: &[u8]) -> Result<Option<PublicKey>, SecureError> {
    let mut responder = Handshake::responder(key)?;
    let mut input = BytesMut::from(input);
    let mut answer = BytesMut::new();
    while !responder.is_finished() {
        if responder.is_my_turn() {
            answer.clear();
            responder.write_message(&mut answer)?;
        } else if !responder.read_message(&mut input)? {
            return Ok(None);
        }
    }
    let (_, _, remote) = responder.finish()?;
    Ok(Some(remote))
}

/// One end of a link after its handshake: what it sends with, what it
/// receives with, and the other side's key.
pub type LinkEnd = (SendCipher, ReceiveCipher, PublicKey);

/// Runs a whole handshake between `initiator` and `responder` in memory:
/// the two ends of an honest link in one process, for tests, tools and the
/// fuzz targets.
pub fn connect_in_memory(
    initiator: &StaticKeypair,
    responder: &StaticKeypair,
) -> Result<(LinkEnd, LinkEnd), SecureError> {
    let mut i = Handshake::initiator(initiator)?;
    let mut r = Handshake::responder(responder)?;
    let mut wire = BytesMut::new();
    while !(i.is_finished() && r.is_finished()) {
        let (from, to) = if i.is_my_turn() {
            (&mut i, &mut r)
        } else {
            (&mut r, &mut i)
        };
        from.write_message(&mut wire)?;
        if !to.read_message(&mut wire)? {
            return Err(SecureError::Incomplete);
        }
    }
    Ok((i.finish()?, r.finish()?))
}

/// Encrypts transport messages in one direction. Each message uses the
/// next nonce, counted from 0, as Noise requires.
pub struct SendCipher {
    state: Arc<snow::StatelessTransportState>,
    nonce: u64,
}

impl std::fmt::Debug for SendCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendCipher")
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

impl SendCipher {
    /// Appends `plaintext` (at most [`MAX_PLAINTEXT_LEN`] bytes) to `out`
    /// as one transport message, prefix included.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut BytesMut) -> Result<(), SecureError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(SecureError::PlaintextTooLarge(plaintext.len()));
        }
        let len = plaintext.len() + TAG_LEN;
        let start = out.len();
        out.put_u16(u16::try_from(len).map_err(|_| snow::Error::Input)?);
        out.resize(start + LENGTH_PREFIX_LEN + len, 0);
        let written =
            self.state
                .write_message(self.nonce, plaintext, &mut out[start + LENGTH_PREFIX_LEN..]);
        match written {
            Ok(_) => {
                self.nonce += 1;
                Ok(())
            }
            Err(error) => {
                out.truncate(start);
                Err(error.into())
            }
        }
    }

    /// Appends all of `plaintext` to `out`, in as few transport messages as
    /// the size limit allows.
    pub fn seal_all(&mut self, plaintext: &[u8], out: &mut BytesMut) -> Result<(), SecureError> {
        for chunk in plaintext.chunks(MAX_PLAINTEXT_LEN) {
            self.seal(chunk, out)?;
        }
        Ok(())
    }
}

/// Decrypts transport messages in one direction, in order.
pub struct ReceiveCipher {
    state: Arc<snow::StatelessTransportState>,
    nonce: u64,
}

impl std::fmt::Debug for ReceiveCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiveCipher")
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

impl ReceiveCipher {
    /// Decrypts the transport message at the front of `input`, if it has
    /// all arrived (consuming it), appending its plaintext to `plaintext`;
    /// `Ok(false)` if more bytes are needed.
    pub fn open(
        &mut self,
        input: &mut BytesMut,
        plaintext: &mut BytesMut,
    ) -> Result<bool, SecureError> {
        let Some(len) = transport_message_len(input)? else {
            return Ok(false);
        };
        if input.len() < LENGTH_PREFIX_LEN + len {
            // Bounded: at most one message's worth.
            input.reserve(LENGTH_PREFIX_LEN + len - input.len());
            return Ok(false);
        }
        let message = &input[LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len];
        let start = plaintext.len();
        plaintext.resize(start + len - TAG_LEN, 0);
        match self
            .state
            .read_message(self.nonce, message, &mut plaintext[start..])
        {
            Ok(read) => {
                plaintext.truncate(start + read);
                self.nonce += 1;
                input.advance(LENGTH_PREFIX_LEN + len);
                Ok(true)
            }
            Err(error) => {
                plaintext.truncate(start);
                Err(error.into())
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Runs a handshake between the two sides in memory.
    fn handshake(
        initiator: &StaticKeypair,
        responder: &StaticKeypair,
    ) -> (
        (SendCipher, ReceiveCipher, PublicKey),
        (SendCipher, ReceiveCipher, PublicKey),
    ) {
        let mut i = Handshake::initiator(initiator).unwrap();
        let mut r = Handshake::responder(responder).unwrap();
        let mut wire = BytesMut::new();
        let mut sizes = Vec::new();
        while !(i.is_finished() && r.is_finished()) {
            let (from, to) = if i.is_my_turn() {
                (&mut i, &mut r)
            } else {
                (&mut r, &mut i)
            };
            from.write_message(&mut wire).unwrap();
            sizes.push(wire.len());
            assert!(to.read_message(&mut wire).unwrap());
            assert!(wire.is_empty());
        }
        // The sizes the specification gives (prefix included).
        assert_eq!(sizes, vec![2 + 32, 2 + 96, 2 + 64]);
        (i.finish().unwrap(), r.finish().unwrap())
    }

    #[test]
    fn both_sides_learn_each_others_key_and_talk() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let ((mut a_send, mut a_recv, a_saw), (mut b_send, mut b_recv, b_saw)) = handshake(&a, &b);
        assert_eq!(a_saw, b.public());
        assert_eq!(b_saw, a.public());

        let mut wire = BytesMut::new();
        a_send.seal(b"hello", &mut wire).unwrap();
        a_send.seal(b"", &mut wire).unwrap();
        a_send.seal(b"world", &mut wire).unwrap();
        let mut plain = BytesMut::new();
        while b_recv.open(&mut wire, &mut plain).unwrap() {}
        assert_eq!(&plain[..], b"helloworld");
        assert!(wire.is_empty());

        b_send.seal(b"back", &mut wire).unwrap();
        plain.clear();
        assert!(a_recv.open(&mut wire, &mut plain).unwrap());
        assert_eq!(&plain[..], b"back");
    }

    #[test]
    fn large_plaintext_spans_messages_and_arrives_in_pieces() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let ((mut send, _, _), (_, mut recv, _)) = handshake(&a, &b);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = BytesMut::new();
        send.seal_all(&data, &mut wire).unwrap();
        assert_eq!(wire.len(), data.len() + 4 * (LENGTH_PREFIX_LEN + TAG_LEN));
        // Fed a byte range at a time, as reads would bring it.
        let mut input = BytesMut::new();
        let mut plain = BytesMut::new();
        for chunk in wire.chunks(7_777) {
            input.extend_from_slice(chunk);
            while recv.open(&mut input, &mut plain).unwrap() {}
        }
        assert_eq!(&plain[..], &data[..]);
    }

    #[test]
    fn a_tampered_message_is_refused() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let ((mut send, _, _), (_, mut recv, _)) = handshake(&a, &b);
        let mut wire = BytesMut::new();
        send.seal(b"pay 10", &mut wire).unwrap();
        wire[4] ^= 1;
        let mut plain = BytesMut::new();
        assert!(matches!(
            recv.open(&mut wire, &mut plain),
            Err(SecureError::Noise(_))
        ));
        assert!(plain.is_empty());
    }

    #[test]
    fn a_replayed_or_reordered_message_is_refused() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let ((mut send, _, _), (_, mut recv, _)) = handshake(&a, &b);
        let mut first = BytesMut::new();
        send.seal(b"one", &mut first).unwrap();
        let mut second = BytesMut::new();
        send.seal(b"two", &mut second).unwrap();
        let mut plain = BytesMut::new();
        assert!(recv.open(&mut second, &mut plain).is_err());
    }

    #[test]
    fn another_prologue_fails_the_handshake() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let mut i = snow::Builder::new(params())
            .prologue(b"canopy/1")
            .unwrap()
            .local_private_key(a.private_bytes())
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut r = Handshake::responder(&b).unwrap();
        let mut message = [0u8; 1024];
        let len = i.write_message(&[], &mut message).unwrap();
        let mut wire = BytesMut::new();
        wire.put_u16(u16::try_from(len).unwrap());
        wire.put_slice(&message[..len]);
        // The first message is only an ephemeral key: it reads.
        assert!(r.read_message(&mut wire).unwrap());
        r.write_message(&mut wire).unwrap();
        wire.advance(LENGTH_PREFIX_LEN);
        let mut payload = [0u8; 1024];
        // The second carries an encrypted key bound to the prologue.
        assert!(i.read_message(&wire, &mut payload).is_err());
    }

    #[test]
    fn oversized_and_out_of_turn_handshake_messages_are_refused() {
        let key = StaticKeypair::generate().unwrap();
        let mut r = Handshake::responder(&key).unwrap();
        let mut huge = BytesMut::from(&[0xff, 0xff][..]);
        assert!(matches!(
            r.read_message(&mut huge),
            Err(SecureError::HandshakeTooLarge { len: 65_535, .. })
        ));
        let mut short = BytesMut::from(&[0x00, 0x20, 1, 2][..]);
        assert!(!r.read_message(&mut short).unwrap());
        let mut i = Handshake::initiator(&key).unwrap();
        let mut early = BytesMut::from(&[0x00, 0x01, 0][..]);
        assert!(matches!(
            i.read_message(&mut early),
            Err(SecureError::OutOfTurn)
        ));
        // Garbage where an ephemeral key belongs: 31 bytes are too few.
        let mut garbage = BytesMut::from(&[0x00, 0x1f][..]);
        garbage.extend_from_slice(&[7; 31]);
        assert!(r.read_message(&mut garbage).is_err());
    }

    #[test]
    fn respond_to_takes_any_bytes() {
        let key = StaticKeypair::generate().unwrap();
        assert!(respond_to(&key, b"").unwrap().is_none());
        assert!(respond_to(&key, &[0x00]).unwrap().is_none());
        assert!(respond_to(&key, &[0xff, 0xff, 1]).is_err());
        // A valid message 1 then garbage where message 3 belongs.
        let mut input = BytesMut::new();
        Handshake::initiator(&StaticKeypair::generate().unwrap())
            .unwrap()
            .write_message(&mut input)
            .unwrap();
        assert!(respond_to(&key, &input).unwrap().is_none());
        input.extend_from_slice(&[0, 64]);
        input.extend_from_slice(&[9; 64]);
        assert!(respond_to(&key, &input).is_err());
    }

    #[test]
    fn short_transport_messages_are_refused() {
        assert!(matches!(
            transport_message_len(&[0, 15]),
            Err(SecureError::TooShort(15))
        ));
        assert_eq!(transport_message_len(&[0]).unwrap(), None);
        assert_eq!(transport_message_len(&[1, 0]).unwrap(), Some(256));
    }

    #[test]
    fn node_ids_derive_from_public_keys() {
        let key = StaticKeypair::from_private([7; 32]);
        assert_eq!(StaticKeypair::from_private([7; 32]).public(), key.public());
        let expected = blake3::derive_key(NODE_ID_CONTEXT, &key.public().0);
        assert_eq!(key.node_id().0, expected[..16]);
        assert_ne!(
            StaticKeypair::from_private([8; 32]).node_id(),
            key.node_id()
        );
        // The debug form never shows the private key.
        assert!(!format!("{key:?}").contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn the_public_key_is_x25519_of_the_private_key() {
        // RFC 7748, section 6.1: Alice's key pair.
        let private: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap();
        assert_eq!(
            hex::encode(StaticKeypair::from_private(private).public().0),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod example {
    //! The byte-level example in proto/TRANSPORT.md, checked: if this
    //! test changes, so must the document.
    use super::*;

    fn side(private: u8, ephemeral: u8, initiator: bool) -> snow::HandshakeState {
        let (private, ephemeral) = ([private; 32], [ephemeral; 32]);
        let builder = snow::Builder::new(params())
            .prologue(PROLOGUE)
            .unwrap()
            .local_private_key(&private)
            .unwrap()
            .fixed_ephemeral_key_for_testing_only(&ephemeral);
        if initiator {
            builder.build_initiator().unwrap()
        } else {
            builder.build_responder().unwrap()
        }
    }

    #[test]
    fn the_transport_document_example_holds() {
        let initiator_key = StaticKeypair::from_private([0x11; 32]);
        let responder_key = StaticKeypair::from_private([0x33; 32]);
        assert_eq!(
            hex::encode(initiator_key.public().0),
            "7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13"
        );
        assert_eq!(
            hex::encode(responder_key.public().0),
            "7b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14"
        );
        assert_eq!(
            initiator_key.node_id().to_string(),
            "a92f5277ed133837f26892d40bff28bf"
        );
        assert_eq!(
            responder_key.node_id().to_string(),
            "cecd0b7ced5468836869d6d76cec0adb"
        );

        let mut i = side(0x11, 0x22, true);
        let mut r = side(0x33, 0x44, false);
        let mut buf = [0u8; 1024];
        let mut payload = [0u8; 1024];
        let n = i.write_message(&[], &mut buf).unwrap();
        assert_eq!(
            hex::encode(&buf[..n]),
            "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20"
        );
        r.read_message(&buf[..n], &mut payload).unwrap();
        let n = r.write_message(&[], &mut buf).unwrap();
        assert_eq!(
            hex::encode(&buf[..n]),
            "ff2ee45601ec1b67310c7790404585ae697331eee1c1f8cf2419731c1fff3e6b\
             34844ab378b06d2634652a1eb7d2b6c67c2082af188b41dd5e7da57cf64439f3\
             74be7807ed9fd27abbbdb761d36dd77bd3057f6ce32c4b7926b37a47b6c101f3"
        );
        i.read_message(&buf[..n], &mut payload).unwrap();
        let n = i.write_message(&[], &mut buf).unwrap();
        assert_eq!(
            hex::encode(&buf[..n]),
            "75537efbe989fb8406a0dcce52dbec0f832fd70f3c37a8f6efb0d8b74afcc1a5\
             38f6e3b556f36fea8dcaf6d360b9f47353d5ae40bee48cef7813159a8bdb305d"
        );
        r.read_message(&buf[..n], &mut payload).unwrap();
        assert_eq!(
            i.get_remote_static().map(hex::encode),
            Some(hex::encode(responder_key.public().0))
        );
        assert_eq!(
            r.get_remote_static().map(hex::encode),
            Some(hex::encode(initiator_key.public().0))
        );

        // The initiator's first transport message: one frame, a Ping.
        let mut frame = BytesMut::new();
        tokio_util::codec::Encoder::encode(
            &mut crate::FrameCodec::default(),
            &crate::Message::Ping { nonce: 1 },
            &mut frame,
        )
        .unwrap();
        assert_eq!(hex::encode(&frame), "000000041a020801");
        let mut t = i.into_transport_mode().unwrap();
        let n = t.write_message(&frame, &mut buf).unwrap();
        assert_eq!(
            hex::encode(&buf[..n]),
            "753e1a235f5a1bd6325f7442b575690d0890195cf65730f5"
        );
    }
}
