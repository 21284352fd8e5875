//! Writes the committed seed corpora, `fuzz/corpus/<target>/`: a few small,
//! meaningful inputs per target, laid out as each target reads its input.
//! Run from `fuzz/` with `cargo run --example seeds` after a change to a
//! target's input layout or to the protocol.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use bytes::BytesMut;
use canopy_core::tree::{GROUP_LEN, tree_of};
use canopy_proto::{
    ByeReason, Capability, CircuitToken, ContentId, FilterPatch, FrameCodec, HandshakeOutcome,
    Hello, HelloReply, Message, MessageId, NodeId, Push, Query, QueryHit, RejectReason,
    RelayCircuit, Role, SharedFile,
};
use tokio_util::codec::Encoder;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn write(target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(name), bytes)?;
    Ok(())
}

fn addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 1)))
}

fn file(name: &str, seed: u8, size: u64) -> SharedFile {
    SharedFile {
        content_id: ContentId([seed; 32]),
        name: name.to_owned(),
        size,
        available: None,
    }
}

fn hello(role: Role) -> Hello {
    Hello {
        protocol_version: 1,
        role,
        node_id: NodeId([7; 16]),
        listen_addr: Some(addr("198.51.100.7:6346")),
        user_agent: "canopy/0.1.0".to_owned(),
        capabilities: match role {
            Role::Supernode => vec![Capability::FileIndex],
            Role::Leaf => Vec::new(),
        },
    }
}

fn frames(messages: &[Message]) -> Result<Vec<u8>> {
    let mut codec = FrameCodec::default();
    let mut buffer = BytesMut::new();
    for message in messages {
        codec.encode(message, &mut buffer)?;
    }
    Ok(buffer.to_vec())
}

fn frame_seeds() -> Result<()> {
    let query = Query {
        message_id: MessageId([1; 16]),
        ttl: 4,
        hops: 1,
        keywords: vec!["free".to_owned(), "software".to_owned()],
        content_id: None,
        min_size: Some(1024),
        max_size: Some(1 << 30),
    };
    let messages = [
        ("hello_leaf", Message::Hello(hello(Role::Leaf))),
        ("hello_supernode", Message::Hello(hello(Role::Supernode))),
        (
            "hello_reply_accepted",
            Message::HelloReply(HelloReply {
                free_leaf_slots: Some(29),
                hello: hello(Role::Supernode),
                outcome: HandshakeOutcome::Accepted {
                    observed_addr: Some(addr("203.0.113.5:40000")),
                },
            }),
        ),
        (
            "hello_reply_rejected",
            Message::HelloReply(HelloReply {
                free_leaf_slots: Some(0),
                hello: hello(Role::Supernode),
                outcome: HandshakeOutcome::Rejected {
                    reason: RejectReason::Full,
                    detail: "no room for leaves".to_owned(),
                    try_supernodes: vec![addr("198.51.100.8:6346"), addr("[2001:db8::1]:6346")],
                },
            }),
        ),
        ("ping", Message::Ping { nonce: 42 }),
        (
            "pong",
            Message::Pong {
                free_leaf_slots: Some(12),
                nonce: 42,
                supernodes: vec![addr("198.51.100.9:6346"), addr("[2001:db8::2]:6346")],
            },
        ),
        (
            "bye",
            Message::Bye {
                try_supernodes: Vec::new(),
                reason: ByeReason::LimitExceeded,
                detail: "too many queries".to_owned(),
            },
        ),
        (
            "file_list",
            Message::FileList {
                replace: true,
                files: vec![
                    file("Free Software Song.ogg", 2, 1_234_567),
                    file("notes.txt", 3, 0),
                ],
            },
        ),
        (
            "file_delta",
            Message::FileDelta {
                added: vec![file("new album.flac", 4, 300_000_000)],
                removed: vec![ContentId([2; 32])],
            },
        ),
        ("query", Message::Query(query.clone())),
        (
            "query_content_id",
            Message::Query(Query {
                keywords: Vec::new(),
                content_id: Some(ContentId([2; 32])),
                min_size: None,
                max_size: None,
                ..query.clone()
            }),
        ),
        (
            "query_hit",
            Message::QueryHit(QueryHit {
                message_id: MessageId([1; 16]),
                source_node_id: NodeId([9; 16]),
                source_addr: addr("203.0.113.9:6347"),
                files: vec![file("Free Software Song.ogg", 2, 1_234_567)],
                firewalled: true,
            }),
        ),
        (
            "push",
            Message::Push(Push {
                message_id: MessageId([5; 16]),
                target_node_id: NodeId([9; 16]),
                content_id: ContentId([2; 32]),
                callback_addr: addr("203.0.113.5:6347"),
                hops: 2,
                punch: true,
                relay: Some(RelayCircuit {
                    addr: addr("198.51.100.1:6346"),
                    token: CircuitToken([3; 16]),
                }),
            }),
        ),
        (
            "query_status",
            Message::QueryStatus {
                message_id: MessageId([1; 16]),
                results: 17,
            },
        ),
        (
            "filter_patch",
            Message::FilterPatch(FilterPatch {
                log2_slots: 12,
                reset: true,
                flips: vec![5, 0x81, 0x01, 3],
            }),
        ),
        (
            "reachability",
            Message::Reachability {
                reachable: false,
                probed_addr: addr("198.51.100.4:6346"),
            },
        ),
        (
            "announce",
            Message::Announce {
                listen_addr: addr("0.0.0.0:41000"),
            },
        ),
        (
            "bye_stepping_down",
            Message::Bye {
                try_supernodes: vec![addr("198.51.100.10:6346"), addr("[2001:db8::3]:6346")],
                reason: ByeReason::Shutdown,
                detail: "supernode stepping down".to_owned(),
            },
        ),
    ];
    for (index, (name, message)) in messages.iter().enumerate() {
        // The first byte cuts the stream into pieces of (byte % 64) + 1.
        let mut input = vec![u8::try_from(index * 5 % 64)?];
        input.extend(frames(std::slice::from_ref(message))?);
        write("frame", name, &input)?;
    }
    // A connection's first few frames, read three bytes at a time.
    let mut input = vec![2];
    input.extend(frames(&[
        Message::Hello(hello(Role::Leaf)),
        Message::Ping { nonce: 1 },
        Message::Query(query),
    ])?);
    write("frame", "stream", &input)?;
    // A length prefix over the 64 KiB limit, and a frame cut short.
    write("frame", "too_large", &[0, 0, 1, 0, 1, 0x0a, 0x00])?;
    write("frame", "truncated", &[0, 0, 0, 0, 40, 0x0a, 0x05])?;
    Ok(())
}

fn http_seeds() -> Result<()> {
    let id = ContentId(*blake3::hash(b"a shared file").as_bytes()).to_hex();
    // Mode byte 0: the size is the next byte. Mode byte 1: the next eight.
    let small = |size: u8, path: &str, range: &str| {
        let mut input = vec![0, size];
        input.extend_from_slice(format!("{path}\n{range}").as_bytes());
        input
    };
    let wide = |size: u64, path: &str, range: &str| {
        let mut input = vec![1];
        input.extend_from_slice(&size.to_le_bytes());
        input.extend_from_slice(format!("{path}\n{range}").as_bytes());
        input
    };
    let seeds = [
        (
            "first_bytes",
            small(200, &format!("/content/{id}"), "bytes=0-99"),
        ),
        (
            "open_end",
            small(200, &format!("/content/{id}"), "bytes=100-"),
        ),
        ("suffix", small(200, &format!("/content/{id}"), "bytes=-50")),
        (
            "past_the_end",
            small(200, &format!("/content/{id}"), "bytes=150-999"),
        ),
        (
            "reversed",
            small(200, &format!("/content/{id}"), "bytes=90-10"),
        ),
        (
            "two_ranges",
            small(200, &format!("/content/{id}"), "bytes=0-9,20-29"),
        ),
        (
            "bad_unit",
            small(200, &format!("/content/{id}"), "items=0-9"),
        ),
        (
            "tree_upper_hex",
            small(200, &format!("/tree/{}", id.to_uppercase()), ""),
        ),
        (
            "query_string",
            small(9, &format!("/content/{id}?x=1"), "bytes=0-0"),
        ),
        ("short_id", small(9, "/content/abc", "bytes=0-0")),
        ("other_path", small(9, "/etc/passwd", "bytes=1-1")),
        (
            "terabyte",
            wide(1 << 40, &format!("/content/{id}"), "bytes=1099511627000-"),
        ),
        (
            "whitespace",
            wide(5000, &format!("/tree/{id}"), "bytes= 0-1"),
        ),
        // Found by this target: served as 0..=0 before the fix.
        (
            "empty_file",
            small(0, &format!("/content/{id}"), "bytes=0-"),
        ),
    ];
    for (name, input) in seeds {
        write("http_request", name, &input)?;
    }
    Ok(())
}

fn tree_seeds() -> Result<()> {
    let last = b"the last group of a file: only these bytes come from the input";
    // Honest mode (1): the next byte picks 2 to 9 groups.
    for shape in [0u8, 1, 2, 6] {
        let mut input = vec![1, shape];
        input.extend_from_slice(last);
        write("tree", &format!("honest_{}_groups", 2 + shape % 8), &input)?;
    }
    // Single-group mode (2): the input is the file.
    let mut input = vec![2];
    input.extend_from_slice(b"a small file, checked against its id alone");
    write("tree", "single_group", &input)?;
    // Hostile mode (0): a real two-group tree with its size and id, as a
    // source would serve it; the size is written doubled (even: a small size).
    let group = usize::try_from(GROUP_LEN)?;
    let mut data: Vec<u8> = (0..group + 100).map(|i| (i % 251) as u8).collect();
    data[group..].copy_from_slice(&[b'z'; 100]);
    let size = data.len() as u64;
    let mut input = vec![0];
    input.extend_from_slice(&(size << 1).to_le_bytes());
    input.extend_from_slice(blake3::hash(&data).as_bytes());
    input.extend_from_slice(&tree_of(&data));
    write("tree", "hostile_real_tree", &input)?;
    let mut input = vec![0];
    input.extend_from_slice(&(10u64 << 1).to_le_bytes());
    input.extend_from_slice(blake3::hash(b"0123456789").as_bytes());
    write("tree", "hostile_single_group", &input)?;
    Ok(())
}

fn config_seeds() -> Result<()> {
    for name in ["supernode", "leaf"] {
        let text = fs::read(format!("../deploy/{name}.example.toml"))?;
        write("config", &format!("{name}.example.toml"), &text)?;
    }
    let seeds: [(&str, &str); 4] = [
        ("unknown_key", "max_leafs = 3\n"),
        (
            "wrong_type",
            "listen = \"nowhere\"\nmax_leaves = \"many\"\n",
        ),
        (
            "syntax_error",
            "# comment\npeers = [\"198.51.100.7:6346\",\nttl_cap = \n",
        ),
        (
            "tables_and_unicode",
            "shares = [\"/home/me/Musik \u{e9}\u{301}\"]\n[extra]\nkey = 1979-05-27T07:32:00Z\n",
        ),
    ];
    for (name, text) in seeds {
        write("config", &format!("{name}.toml"), text.as_bytes())?;
    }
    Ok(())
}

/// LAN discovery datagrams (`lan`): the source byte (0: a private
/// address), then whole datagrams.
fn lan_seeds() -> Result<()> {
    use canopy_core::lan::{Announce, Kind};
    let announce = |kind, role, overlay_port, node: u8| {
        Announce {
            kind,
            role,
            overlay_port,
            http_port: 7000,
            nonce: u64::from(node),
            node_id: NodeId([node; 16]),
        }
        .encode()
    };
    let hello = announce(Kind::Hello, Role::Leaf, 0, 2);
    let alive = announce(Kind::Alive, Role::Supernode, 6346, 3);
    let bye = announce(Kind::Bye, Role::Supernode, 6346, 3);
    let mut input = vec![0];
    input.extend_from_slice(&hello);
    write("lan", "hello", &input)?;
    let mut input = vec![0];
    for datagram in [&alive, &hello, &bye] {
        input.extend_from_slice(datagram);
    }
    write("lan", "alive_hello_bye", &input)?;
    let mut input = vec![1];
    input.extend_from_slice(&alive[..20]);
    write("lan", "truncated", &input)?;
    Ok(())
}

fn main() -> Result<()> {
    frame_seeds()?;
    http_seeds()?;
    tree_seeds()?;
    config_seeds()?;
    lan_seeds()?;
    Ok(())
}
