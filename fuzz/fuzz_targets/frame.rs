//! Bytes off a connection, as a peer sends them: `FrameCodec` decoding
//! (length prefix, protobuf `Envelope`) and the conversion to a domain
//! `Message`, which is where every field is validated.
//!
//! The first input byte picks how the rest arrives (in chunks of 1 to 64
//! bytes); the stream must decode to the same messages and the same error
//! whichever way it is cut. Every decoded message must hold the domain's
//! invariants, and must encode and decode back to itself.
#![no_main]

use bytes::BytesMut;
use canopy_proto::limits::{
    HARD_MAX_TTL, MAX_ADDRESSES, MAX_CAPABILITIES, MAX_DETAIL_LEN, MAX_FILES_PER_MESSAGE,
    MAX_FILTER_LOG2_SLOTS, MAX_FILTER_PATCH_BYTES, MAX_FREE_LEAF_SLOTS, MAX_KEYWORD_LEN,
    MAX_KEYWORDS, MAX_USER_AGENT_LEN, MIN_FILTER_LOG2_SLOTS,
};
use canopy_proto::{
    FrameCodec, HandshakeOutcome, Hello, Message, NodeId, SharedFile, is_valid_file_name,
};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

/// What a connection reading `stream` sees: the messages, then the error
/// that closes it (if any), else how many bytes wait for the rest of a frame.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Message>,
    error: Option<String>,
    buffered: usize,
}

fn read_stream(stream: &[u8], chunk: usize) -> Outcome {
    let mut codec = FrameCodec::default();
    let mut buffer = BytesMut::new();
    let mut messages = Vec::new();
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(error) => {
                    // The connection closes: what is left unread is moot.
                    return Outcome {
                        messages,
                        error: Some(error.to_string()),
                        buffered: 0,
                    };
                }
            }
        }
    }
    Outcome {
        messages,
        error: None,
        buffered: buffer.len(),
    }
}

fn check_node_id(id: &NodeId) {
    assert_ne!(id.0, [0; 16], "an all-zero node id passed validation");
}

fn check_files(files: &[SharedFile]) {
    assert!(files.len() <= MAX_FILES_PER_MESSAGE);
    for file in files {
        assert!(is_valid_file_name(&file.name), "bad name {:?}", file.name);
        assert!(
            file.available
                .is_none_or(|available| available <= file.size),
            "available above size"
        );
    }
}

fn check_hello(hello: &Hello) {
    check_node_id(&hello.node_id);
    assert!(hello.user_agent.len() <= MAX_USER_AGENT_LEN);
    assert!(hello.capabilities.len() <= MAX_CAPABILITIES);
    if let Some(addr) = hello.listen_addr {
        assert_ne!(addr.port(), 0);
    }
}

/// What the domain types promise to the rest of Canopy.
fn check_invariants(message: &Message) {
    match message {
        Message::Hello(hello) => check_hello(hello),
        Message::HelloReply(reply) => {
            check_hello(&reply.hello);
            assert!(
                reply
                    .free_leaf_slots
                    .is_none_or(|free| free <= MAX_FREE_LEAF_SLOTS)
            );
            match &reply.outcome {
                HandshakeOutcome::Accepted { observed_addr } => {
                    assert!(observed_addr.is_none_or(|a| a.port() != 0));
                }
                HandshakeOutcome::Rejected {
                    detail,
                    try_supernodes,
                    ..
                } => {
                    assert!(detail.len() <= MAX_DETAIL_LEN);
                    assert!(try_supernodes.len() <= MAX_ADDRESSES);
                    assert!(try_supernodes.iter().all(|a| a.port() != 0));
                }
            }
        }
        Message::Ping { .. } | Message::QueryStatus { .. } => {}
        Message::Reachability { probed_addr, .. } => assert_ne!(probed_addr.port(), 0),
        Message::Announce { listen_addr } => assert_ne!(listen_addr.port(), 0),
        Message::Pong {
            supernodes,
            free_leaf_slots,
            ..
        } => {
            assert!(supernodes.len() <= MAX_ADDRESSES);
            assert!(supernodes.iter().all(|a| a.port() != 0));
            assert!(free_leaf_slots.is_none_or(|free| free <= MAX_FREE_LEAF_SLOTS));
        }
        Message::Bye {
            detail,
            try_supernodes,
            ..
        } => {
            assert!(detail.len() <= MAX_DETAIL_LEN);
            assert!(try_supernodes.len() <= MAX_ADDRESSES);
            assert!(try_supernodes.iter().all(|a| a.port() != 0));
        }
        Message::FileList { files, .. } => check_files(files),
        Message::FileDelta { added, removed } => {
            check_files(added);
            assert!(removed.len() <= MAX_FILES_PER_MESSAGE);
        }
        Message::Query(query) => {
            assert!(query.ttl >= 1);
            assert!(query.hops <= HARD_MAX_TTL);
            assert!(query.keywords.len() <= MAX_KEYWORDS);
            assert!(
                query
                    .keywords
                    .iter()
                    .all(|k| !k.is_empty() && k.len() <= MAX_KEYWORD_LEN)
            );
            assert!(!query.keywords.is_empty() || query.content_id.is_some());
            if let (Some(min), Some(max)) = (query.min_size, query.max_size) {
                assert!(min <= max);
            }
        }
        Message::QueryHit(hit) => {
            check_node_id(&hit.source_node_id);
            assert!(!hit.files.is_empty());
            check_files(&hit.files);
            assert_ne!(hit.source_addr.port(), 0);
        }
        Message::Push(push) => {
            check_node_id(&push.target_node_id);
            assert!(push.hops <= HARD_MAX_TTL);
            assert_ne!(push.callback_addr.port(), 0);
            if let Some(relay) = &push.relay {
                assert_ne!(relay.token.0, [0; 16]);
            }
        }
        Message::FilterPatch(patch) => {
            assert!((MIN_FILTER_LOG2_SLOTS..=MAX_FILTER_LOG2_SLOTS).contains(&patch.log2_slots));
            assert!(patch.flips.len() <= MAX_FILTER_PATCH_BYTES);
        }
    }
}

/// A decoded message, sent again, is read back as itself and nothing more.
fn check_round_trip(message: &Message) {
    let mut codec = FrameCodec::default();
    let mut buffer = BytesMut::new();
    if let Err(error) = codec.encode(message, &mut buffer) {
        panic!("a message that was received cannot be sent: {error}");
    }
    match codec.decode(&mut buffer) {
        Ok(Some(again)) => assert_eq!(&again, message),
        other => panic!("re-encoded {message:?} decodes to {other:?}"),
    }
    assert!(buffer.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = read_stream(stream, stream.len().max(1));
    let pieces = read_stream(stream, usize::from(cut % 64) + 1);
    assert_eq!(whole, pieces, "the stream decodes differently in pieces");
    for message in &whole.messages {
        let _ = message.kind();
        check_invariants(message);
        check_round_trip(message);
    }
});
