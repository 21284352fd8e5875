//! The Noise layer every overlay link runs (proto/TRANSPORT.md): the
//! responder's handshake over arbitrary bytes, and the transport framing
//! and decryption over arbitrary ciphertext and over honest ciphertext cut
//! at arbitrary places.
//!
//! The first byte picks what the rest is:
//! - 0: everything an initiator sent a responder (`respond_to`): it must
//!   end in an error or an incomplete handshake, never a panic, and never
//!   complete (the bytes would have to authenticate under keys the fuzzer
//!   can't know).
//! - 1: ciphertext from a stranger, fed to a receiving cipher: every
//!   message must be refused (it can't authenticate), never a panic.
//! - 2: a plaintext stream, sealed by an honest sender and opened by its
//!   receiver from input delivered in pieces of fuzzer-chosen sizes: the
//!   receiver must get exactly the plaintext back, in order. One link
//!   serves the whole run, its nonces moving on as on a live connection.
#![no_main]

use std::sync::{Mutex, OnceLock};

use bytes::BytesMut;
use canopy_proto::secure::{
    ReceiveCipher, SendCipher, StaticKeypair, connect_in_memory, respond_to,
};
use libfuzzer_sys::fuzz_target;

/// One honest link for the whole run: a handshake costs more than
/// everything else an input does. Its nonces move on from input to input,
/// as on a long-lived connection (an input that fails ends the run).
fn link() -> &'static Mutex<(SendCipher, ReceiveCipher)> {
    static LINK: OnceLock<Mutex<(SendCipher, ReceiveCipher)>> = OnceLock::new();
    LINK.get_or_init(|| Mutex::new(pair()))
}

fn keys() -> (StaticKeypair, StaticKeypair) {
    (
        StaticKeypair::from_private([1; 32]),
        StaticKeypair::from_private([2; 32]),
    )
}

/// An honest initiator and responder, handshaken: (initiator's sender,
/// responder's receiver).
fn pair() -> (SendCipher, ReceiveCipher) {
    let (a, b) = keys();
    let ((send, _, _), (_, receive, _)) = connect_in_memory(&a, &b).expect("handshake");
    (send, receive)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let (_, responder) = keys();
            if let Ok(Some(_)) = respond_to(&responder, rest) {
                panic!("a handshake completed from bytes nobody could have sealed");
            }
        }
        1 => {
            // A stranger's message never opens, so the receiver's nonce
            // never moves: its own receiver can be shared too.
            static STRANGER: OnceLock<Mutex<ReceiveCipher>> = OnceLock::new();
            let mut receive = STRANGER
                .get_or_init(|| Mutex::new(pair().1))
                .lock()
                .expect("not poisoned");
            let mut input = BytesMut::from(rest);
            let mut plaintext = BytesMut::new();
            if let Ok(true) = receive.open(&mut input, &mut plaintext) {
                panic!("a stranger's ciphertext authenticated");
            }
        }
        _ => {
            // The first two bytes: the size of the pieces the receiver's
            // input arrives in; the rest: the plaintext.
            let Some((pieces, plaintext)) = rest.split_at_checked(2) else {
                return;
            };
            let piece = usize::from(u16::from_be_bytes([pieces[0], pieces[1]])).max(1);
            let mut link = link().lock().expect("not poisoned");
            let (send, receive) = &mut *link;
            let mut wire = BytesMut::new();
            send.seal_all(plaintext, &mut wire).expect("seal");
            let mut input = BytesMut::new();
            let mut opened = BytesMut::new();
            for chunk in wire.chunks(piece) {
                input.extend_from_slice(chunk);
                while receive
                    .open(&mut input, &mut opened)
                    .expect("honest bytes open")
                {}
            }
            assert!(input.is_empty(), "bytes left over");
            assert_eq!(&opened[..], plaintext);
        }
    }
});
