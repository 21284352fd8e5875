//! A hostile leaf publishes past the index's byte budget: it is refused
//! with a Bye naming the budget, the index stays within it, and an honest
//! leaf with a small share still publishes and is found, even when the
//! hostile one got in first and filled the budget.

use std::time::Duration;

use canopy_core::index::{FILE_BYTES, WORD_BYTES};
use canopy_node::supernode::{self, SupernodeHandle, SupernodeOptions};
use canopy_proto::{ByeReason, ContentId, Message, Role, SharedFile};
use canopy_testkit::overlay::*;

use crate::peer_flood::RawPeer;

/// Bytes the index is charged for a file `name` of `words` words.
fn charge(name: &str, words: u64) -> u64 {
    FILE_BYTES + name.len() as u64 + words * WORD_BYTES
}

/// `count` files named "bulk NNNNNN" (two words, 11 bytes).
fn bulk(first: u32, count: u32) -> Vec<SharedFile> {
    (first..first + count)
        .map(|n| {
            let mut id = [0x99; 32];
            id[..4].copy_from_slice(&n.to_be_bytes());
            SharedFile {
                content_id: ContentId(id),
                name: format!("bulk {n:06}"),
                size: 1,
                available: None,
            }
        })
        .collect()
}

/// Publishes `files` as a raw leaf, 200 to a message.
async fn publish(peer: &mut RawPeer, files: Vec<SharedFile>) {
    for (i, chunk) in files.chunks(200).enumerate() {
        let message = if i == 0 {
            Message::FileList {
                replace: true,
                files: chunk.to_vec(),
            }
        } else {
            Message::FileDelta {
                added: chunk.to_vec(),
                removed: Vec::new(),
            }
        };
        peer.send(message).await;
    }
}

/// The Bye `peer` gets: its reason and sentence.
async fn bye(peer: &mut RawPeer) -> (ByeReason, String) {
    peer.next_where(
        |m| match m {
            Message::Bye { reason, detail, .. } => Some((*reason, detail.clone())),
            _ => None,
        },
        |_| {},
    )
    .await
}

async fn node_with_budget(budget: u64) -> SupernodeHandle {
    let mut options = SupernodeOptions::new(localhost());
    options.peers_wanted = 0;
    options.protocol.index_budget_bytes = budget;
    supernode::start(options).await.unwrap()
}

/// Room for 1,000 bulk files.
const BUDGET_FILES: u32 = 1_000;

#[tokio::test(flavor = "multi_thread")]
async fn publishing_past_the_budget_is_refused_and_a_small_leaf_is_still_found() {
    init_logs();
    let per_file = charge("bulk 000000", 2);
    let budget = u64::from(BUDGET_FILES) * per_file;
    let node = node_with_budget(budget).await;
    let target = node.local_addr();

    // Alone past the budget: refused, with the budget in the sentence.
    let mut greedy = RawPeer::connect(target, Role::Leaf).await;
    publish(&mut greedy, bulk(0, 2 * BUDGET_FILES)).await;
    let (reason, detail) = bye(&mut greedy).await;
    assert_eq!(reason, ByeReason::LimitExceeded);
    assert!(
        detail.contains(&format!("budget of {budget} bytes")),
        "{detail}"
    );
    node.wait_for(PATIENCE, |s| s.leaves == 0).await.unwrap();
    let stats = node.stats();
    assert_eq!((stats.index_files, stats.index_bytes), (0, 0));
    assert_eq!(stats.publishers_refused, 1);

    // Another fills the budget exactly and stays...
    let mut filler = RawPeer::connect(target, Role::Leaf).await;
    publish(&mut filler, bulk(0, BUDGET_FILES)).await;
    node.wait_for(PATIENCE, |s| s.index_files == BUDGET_FILES as usize)
        .await
        .unwrap();
    assert_eq!(node.stats().index_bytes, budget);

    // ...until an honest leaf publishes one file: the largest publisher
    // goes, the honest file is indexed.
    let folder = shared_folder(&["honest song.txt"]);
    let honest = leaf(&node, Some(folder.path())).await;
    let (reason, detail) = bye(&mut filler).await;
    assert_eq!(reason, ByeReason::LimitExceeded);
    assert!(
        detail.contains("largest publishers are refused first"),
        "{detail}"
    );
    node.wait_for(PATIENCE, |s| s.index_files == 1)
        .await
        .unwrap();
    let stats = node.stats();
    assert_eq!(stats.index_bytes, charge("honest song.txt", 3));
    assert_eq!(stats.publishers_refused, 2);

    // And it is found.
    let searcher = leaf(&node, None).await;
    let found = searcher
        .search(request(&["honest", "song"], 4, Duration::from_secs(2), 1))
        .await
        .unwrap();
    assert_eq!(found.results.len(), 1);
    assert_eq!(found.results[0].name, "honest song.txt");
    drop(honest);
}
