//! Validated domain types: what the rest of Canopy sees of the protocol.

mod convert;
mod ids;
mod message;

pub use convert::{InvalidMessage, is_valid_file_name};
pub use ids::{ContentId, MessageId, NodeId, ParseIdError};
pub use message::*;
