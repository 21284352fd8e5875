//! The protocol's hard limits, in one place. Every one bounds something a
//! peer controls.

/// The protocol version this code speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest frame body accepted or sent, in bytes (the 4-byte length excluded).
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Largest file name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Most files in one FileList, FileDelta or QueryHit. A file is at most
/// ~310 bytes on the wire, so this keeps every such message under the frame
/// limit.
pub const MAX_FILES_PER_MESSAGE: usize = 200;
/// Most keywords in one query.
pub const MAX_KEYWORDS: usize = 16;
/// Longest keyword, in bytes.
pub const MAX_KEYWORD_LEN: usize = 64;
/// Hard ceiling on TTL and on hops: no query travels further than this.
pub const HARD_MAX_TTL: u8 = 7;
/// Longest user agent string, in bytes.
pub const MAX_USER_AGENT_LEN: usize = 128;
/// Longest free-text detail in a Bye or a rejection, in bytes.
pub const MAX_DETAIL_LEN: usize = 256;
/// Most addresses in a try-list or a Pong.
pub const MAX_ADDRESSES: usize = 32;
/// Most free leaf slots a supernode may advertise (gtk-gnutella's
/// maximum leaves is 5,000; this leaves room).
pub const MAX_FREE_LEAF_SLOTS: u32 = 100_000;
/// Most capabilities announced in one Hello.
pub const MAX_CAPABILITIES: usize = 32;
/// Smallest routing filter table: 2^10 bits.
pub const MIN_FILTER_LOG2_SLOTS: u8 = 10;
/// Largest routing filter table: 2^20 bits (128 KiB).
pub const MAX_FILTER_LOG2_SLOTS: u8 = 20;
/// Most bytes of flips in one routing filter patch.
pub const MAX_FILTER_PATCH_BYTES: usize = 48 * 1024;
