//! The frame codec against split input, oversized frames, garbage and
//! invalid fields.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use canopy_proto::limits::MAX_FRAME_LEN;
use canopy_proto::*;
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn sample_messages() -> Vec<Message> {
    let file = SharedFile {
        content_id: ContentId([7; 32]),
        name: "Sommerlied – Ärger.flac".into(),
        size: 123_456,
        available: None,
    };
    let hello = Hello {
        protocol_version: 1,
        role: Role::Supernode,
        node_id: NodeId([1; 16]),
        listen_addr: Some(addr("127.0.0.1:4000")),
        user_agent: "canopy/test".into(),
        capabilities: vec![Capability::FileIndex],
    };
    vec![
        Message::Hello(hello.clone()),
        Message::HelloReply(HelloReply {
            free_leaf_slots: Some(12),
            hello: hello.clone(),
            outcome: HandshakeOutcome::Accepted {
                observed_addr: Some(addr("[::1]:5555")),
            },
        }),
        Message::HelloReply(HelloReply {
            free_leaf_slots: None,
            hello,
            outcome: HandshakeOutcome::Rejected {
                reason: RejectReason::Full,
                detail: "full".into(),
                try_supernodes: vec![addr("10.0.0.1:1"), addr("10.0.0.2:2")],
            },
        }),
        Message::Ping { nonce: 42 },
        Message::Pong {
            free_leaf_slots: Some(3),
            nonce: 42,
            supernodes: vec![addr("127.0.0.1:9")],
        },
        Message::FileList {
            replace: true,
            files: vec![file.clone(); 3],
        },
        Message::FileDelta {
            added: vec![
                file.clone(),
                SharedFile {
                    content_id: ContentId([8; 32]),
                    name: "half.iso".into(),
                    size: 10 << 20,
                    available: Some(5 << 20),
                },
            ],
            removed: vec![ContentId([9; 32])],
        },
        Message::Query(Query {
            message_id: MessageId([3; 16]),
            ttl: 4,
            hops: 1,
            keywords: vec!["sommerlied".into()],
            content_id: None,
            min_size: Some(1),
            max_size: Some(1 << 40),
        }),
        Message::QueryHit(QueryHit {
            message_id: MessageId([3; 16]),
            source_node_id: NodeId([2; 16]),
            source_addr: addr("127.0.0.1:7000"),
            files: vec![file],
            firewalled: true,
        }),
        Message::Push(Push {
            message_id: MessageId([4; 16]),
            target_node_id: NodeId([2; 16]),
            content_id: ContentId([7; 32]),
            callback_addr: addr("[2001:db8::1]:6346"),
            hops: 2,
            punch: false,
            relay: None,
        }),
        Message::Push(Push {
            message_id: MessageId([6; 16]),
            target_node_id: NodeId([2; 16]),
            content_id: ContentId([7; 32]),
            callback_addr: addr("198.51.100.7:40000"),
            hops: 0,
            punch: true,
            relay: Some(RelayCircuit {
                addr: addr("203.0.113.1:6346"),
                token: CircuitToken([9; 16]),
            }),
        }),
        Message::FilterPatch(FilterPatch {
            log2_slots: 12,
            reset: true,
            flips: vec![3, 1, 0x80, 0x01],
        }),
        Message::QueryStatus {
            message_id: MessageId([5; 16]),
            results: u32::MAX,
        },
        Message::Reachability {
            reachable: true,
            probed_addr: addr("203.0.113.9:6346"),
        },
        Message::Announce {
            listen_addr: addr("[2001:db8::9]:41000"),
        },
        Message::Bye {
            try_supernodes: vec![addr("10.0.0.3:3")],
            reason: ByeReason::Shutdown,
            detail: "bye".into(),
        },
    ]
}

fn encode_all(messages: &[Message]) -> BytesMut {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    for message in messages {
        codec.encode(message, &mut buf).unwrap();
    }
    buf
}

/// Feeds `chunks` one after the other, decoding whatever is complete.
fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Message> {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(message) = codec.decode(&mut buf).unwrap() {
            out.push(message);
        }
    }
    assert!(buf.is_empty(), "bytes left over");
    out
}

#[test]
fn every_message_round_trips() {
    let messages = sample_messages();
    let bytes = encode_all(&messages);
    assert_eq!(decode_chunks([&bytes[..]]), messages);
}

#[test]
fn a_stream_cut_at_every_byte_boundary_decodes_the_same() {
    let messages = sample_messages();
    let bytes = encode_all(&messages);
    for cut in 0..=bytes.len() {
        let (head, tail) = bytes.split_at(cut);
        assert_eq!(decode_chunks([head, tail]), messages, "cut at {cut}");
    }
    // And one byte at a time.
    assert_eq!(decode_chunks(bytes.chunks(1)), messages);
}

#[test]
fn an_over_limit_length_is_refused_before_allocating() {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::with_capacity(16);
    buf.put_u32(u32::MAX);
    buf.put_slice(b"abc");
    let capacity_before = buf.capacity();
    match codec.decode(&mut buf) {
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!(len, u32::MAX as usize);
            assert_eq!(max, MAX_FRAME_LEN);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(buf.capacity(), capacity_before, "the buffer grew");

    // One byte over the limit is refused just the same.
    let mut buf = BytesMut::new();
    buf.put_u32((MAX_FRAME_LEN + 1) as u32);
    assert!(matches!(
        FrameCodec::default().decode(&mut buf),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn garbage_is_malformed_not_a_panic() {
    let mut buf = BytesMut::new();
    buf.put_u32(5);
    buf.put_slice(&[0xff, 0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(
        FrameCodec::default().decode(&mut buf),
        Err(FrameError::Malformed(_))
    ));
}

fn decode_envelope(envelope: wire::Envelope) -> Result<Option<Message>, FrameError> {
    let body = envelope.encode_to_vec();
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.put_slice(&body);
    FrameCodec::default().decode(&mut buf)
}

fn query_with(edit: impl FnOnce(&mut wire::Query)) -> wire::Envelope {
    let mut query = wire::Query {
        message_id: vec![1; 16],
        ttl: 3,
        hops: 0,
        keywords: vec!["a".into()],
        ..Default::default()
    };
    edit(&mut query);
    wire::Envelope {
        body: Some(wire::envelope::Body::Query(query)),
    }
}

fn invalid_field(envelope: wire::Envelope) -> &'static str {
    match decode_envelope(envelope) {
        Err(FrameError::Invalid(e)) => e.field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[test]
fn out_of_range_fields_are_named() {
    assert!(decode_envelope(query_with(|_| {})).unwrap().is_some());
    assert_eq!(invalid_field(query_with(|q| q.ttl = 0)), "query.ttl");
    assert_eq!(invalid_field(query_with(|q| q.hops = 8)), "query.hops");
    assert_eq!(
        invalid_field(query_with(|q| q.message_id = vec![1; 3])),
        "query.message_id"
    );
    assert_eq!(
        invalid_field(query_with(|q| q.keywords.clear())),
        "query.keywords"
    );
    assert_eq!(
        invalid_field(query_with(|q| q.keywords = vec!["x".into(); 17])),
        "query.keywords"
    );
    assert_eq!(
        invalid_field(query_with(|q| q.content_id = vec![0; 31])),
        "query.content_id"
    );
    assert_eq!(
        invalid_field(query_with(|q| {
            q.min_size = Some(10);
            q.max_size = Some(9);
        })),
        "query.min_size"
    );
    assert_eq!(
        invalid_field(wire::Envelope { body: None }),
        "envelope.body"
    );
    let hello = wire::Hello {
        protocol_version: 1,
        role: wire::Role::Leaf as i32,
        node_id: vec![0; 16],
        ..Default::default()
    };
    assert_eq!(
        invalid_field(wire::Envelope {
            body: Some(wire::envelope::Body::Hello(hello)),
        }),
        "hello.node_id"
    );
    let patch = |log2_slots, len| wire::Envelope {
        body: Some(wire::envelope::Body::RoutingFilterPatch(
            wire::RoutingFilterPatch {
                log2_slots,
                reset: true,
                flips: vec![1; len],
            },
        )),
    };
    assert!(decode_envelope(patch(20, 48 * 1024)).unwrap().is_some());
    for log2 in [9, 21, u32::MAX] {
        assert_eq!(
            invalid_field(patch(log2, 1)),
            "routing_filter_patch.log2_slots"
        );
    }
    assert_eq!(
        invalid_field(patch(10, 48 * 1024 + 1)),
        "routing_filter_patch.flips"
    );
}

#[test]
fn reachability_and_announce_need_their_address() {
    use wire::envelope::Body;
    let port_zero = wire::SocketAddress {
        ip: vec![192, 0, 2, 1],
        port: 0,
    };
    let cases = [
        (
            Body::Reachability(wire::Reachability {
                reachable: true,
                probed_addr: None,
            }),
            "reachability.probed_addr",
        ),
        (
            Body::Reachability(wire::Reachability {
                reachable: false,
                probed_addr: Some(port_zero.clone()),
            }),
            "reachability.probed_addr",
        ),
        (
            Body::Announce(wire::Announce { listen_addr: None }),
            "announce.listen_addr",
        ),
        (
            Body::Announce(wire::Announce {
                listen_addr: Some(wire::SocketAddress {
                    ip: vec![1, 2, 3],
                    port: 6346,
                }),
            }),
            "announce.listen_addr",
        ),
        (
            Body::Announce(wire::Announce {
                listen_addr: Some(port_zero),
            }),
            "announce.listen_addr",
        ),
    ];
    for (body, field) in cases {
        assert_eq!(invalid_field(wire::Envelope { body: Some(body) }), field);
    }
}

#[test]
fn path_like_file_names_are_refused() {
    for name in [
        "",
        ".",
        "..",
        "a/b",
        "..\\x",
        "a\0b",
        "line\nbreak",
        &"x".repeat(256),
    ] {
        let list = wire::FileList {
            replace: true,
            files: vec![wire::SharedFile {
                content_id: vec![1; 32],
                name: name.to_string(),
                size: 1,
                available: None,
            }],
        };
        let envelope = wire::Envelope {
            body: Some(wire::envelope::Body::FileList(list)),
        };
        assert_eq!(invalid_field(envelope), "file_list.files", "name {name:?}");
    }
}

#[test]
fn available_above_the_size_is_refused_and_named() {
    let file = |available| wire::SharedFile {
        content_id: vec![1; 32],
        name: "half.iso".into(),
        size: 100,
        available,
    };
    let delta = |available| wire::Envelope {
        body: Some(wire::envelope::Body::FileDelta(wire::FileDelta {
            added: vec![file(available)],
            removed: Vec::new(),
        })),
    };
    assert_eq!(
        invalid_field(delta(Some(101))),
        "file_delta.added.available"
    );
    for available in [None, Some(0), Some(100)] {
        match decode_envelope(delta(available)).unwrap() {
            Some(Message::FileDelta { added, .. }) => assert_eq!(added[0].available, available),
            other => panic!("expected a delta, got {other:?}"),
        }
    }
    let list = wire::Envelope {
        body: Some(wire::envelope::Body::FileList(wire::FileList {
            replace: true,
            files: vec![file(Some(u64::MAX))],
        })),
    };
    assert_eq!(invalid_field(list), "file_list.files.available");
}

#[test]
fn a_ttl_above_255_saturates_instead_of_wrapping() {
    let message = decode_envelope(query_with(|q| q.ttl = 256 + 2)).unwrap();
    match message {
        Some(Message::Query(q)) => assert_eq!(q.ttl, 255),
        other => panic!("expected a query, got {other:?}"),
    }
}

#[test]
fn ipv4_mapped_addresses_decode_and_encode_as_ipv4() {
    let mapped = std::net::Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped();
    let pong = wire::Envelope {
        body: Some(wire::envelope::Body::Pong(wire::Pong {
            nonce: 1,
            supernodes: vec![
                wire::SocketAddress {
                    ip: mapped.octets().to_vec(),
                    port: 6346,
                },
                wire::SocketAddress {
                    ip: "2001:db8::1"
                        .parse::<std::net::Ipv6Addr>()
                        .unwrap()
                        .octets()
                        .to_vec(),
                    port: 6346,
                },
            ],
            free_leaf_slots: None,
        })),
    };
    match decode_envelope(pong).unwrap() {
        Some(Message::Pong { supernodes, .. }) => assert_eq!(
            supernodes,
            vec![addr("192.0.2.7:6346"), addr("[2001:db8::1]:6346")]
        ),
        other => panic!("expected a pong, got {other:?}"),
    }
    // Encoding a mapped address sends 4 bytes.
    let message = Message::Pong {
        free_leaf_slots: None,
        nonce: 1,
        supernodes: vec![addr("[::ffff:192.0.2.7]:6346")],
    };
    let mut buf = BytesMut::new();
    FrameCodec::default().encode(message, &mut buf).unwrap();
    match FrameCodec::default().decode(&mut buf).unwrap() {
        Some(Message::Pong { supernodes, .. }) => {
            assert_eq!(supernodes, vec![addr("192.0.2.7:6346")]);
        }
        other => panic!("expected a pong, got {other:?}"),
    }
}

#[test]
fn free_leaf_slots_are_optional_and_bounded() {
    // An older peer's Pong and HelloReply carry no free slots: None.
    let old = wire::Envelope {
        body: Some(wire::envelope::Body::Pong(wire::Pong {
            nonce: 1,
            supernodes: vec![],
            free_leaf_slots: None,
        })),
    };
    match decode_envelope(old).unwrap() {
        Some(Message::Pong {
            free_leaf_slots, ..
        }) => assert_eq!(free_leaf_slots, None),
        other => panic!("expected a pong, got {other:?}"),
    }
    let boastful = wire::Envelope {
        body: Some(wire::envelope::Body::Pong(wire::Pong {
            nonce: 1,
            supernodes: vec![],
            free_leaf_slots: Some(canopy_proto::limits::MAX_FREE_LEAF_SLOTS + 1),
        })),
    };
    let error = decode_envelope(boastful).unwrap_err().to_string();
    assert!(error.contains("pong.free_leaf_slots"), "{error}");
    let bye = wire::Envelope {
        body: Some(wire::envelope::Body::Bye(wire::Bye {
            reason: 1,
            detail: String::new(),
            try_supernodes: vec![
                wire::SocketAddress {
                    ip: vec![10, 0, 0, 1],
                    port: 1,
                };
                33
            ],
        })),
    };
    let error = decode_envelope(bye).unwrap_err().to_string();
    assert!(error.contains("bye.try_supernodes"), "{error}");
}
