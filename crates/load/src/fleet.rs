//! A fleet of leaves on real sockets: each connects (from one of several
//! loopback source addresses, round robin), says Hello as a leaf, publishes
//! its files once the supernode accepts it, then stays: it answers Pings
//! with Pongs (a supernode cuts silent connections), sends what it is given
//! and reports every QueryHit it receives.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use canopy_node::secure::SecureStream;
use canopy_proto::limits::MAX_FILES_PER_MESSAGE;
use canopy_proto::{Message, MessageId, Role};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::frames;
use crate::workload::Workload;

/// A hit some leaf received.
#[derive(Debug, Clone, Copy)]
pub struct HitEvent {
    /// The query it answers.
    pub message_id: MessageId,
    /// When it arrived.
    pub at: Instant,
    /// Files in it.
    pub files: usize,
}

/// One connected leaf.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Its number in the workload (which files it has).
    pub number: u64,
    /// Which of the targets it is attached to.
    pub target: usize,
    outgoing: mpsc::UnboundedSender<Message>,
}

impl Leaf {
    /// Sends `message` from this leaf; false if the leaf is gone.
    pub fn send(&self, message: Message) -> bool {
        self.outgoing.send(message).is_ok()
    }
}

/// Where and how many leaves to connect.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Supernodes; leaf `i` goes to `targets[i % len]`.
    pub targets: Vec<SocketAddr>,
    /// Leaves in all.
    pub count: usize,
    /// Source addresses, used round robin; none means the system's choice.
    pub sources: Vec<IpAddr>,
    /// Workload number of the first leaf (distinct fleets, distinct leaves).
    pub first_leaf: u64,
    /// Connections being opened at once.
    pub concurrency: usize,
}

/// The connected leaves and the hits they receive.
#[derive(Debug)]
pub struct Fleet {
    /// Every leaf, in workload order.
    pub leaves: Vec<Leaf>,
    /// Every QueryHit any leaf received.
    pub hits: mpsc::UnboundedReceiver<HitEvent>,
    /// From the first connect to the last FileList written.
    pub connect_time: Duration,
    closed: Arc<AtomicUsize>,
}

impl Fleet {
    /// Leaves whose connection has ended since they connected.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::Relaxed)
    }
}

/// Connects, handshakes and publishes every leaf; fails if any fails.
pub async fn connect(workload: Arc<Workload>, options: FleetOptions) -> anyhow::Result<Fleet> {
    anyhow::ensure!(!options.targets.is_empty(), "no target supernode");
    let (hits_tx, hits) = mpsc::unbounded_channel();
    let closed = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut leaves: Vec<Option<Leaf>> = vec![None; options.count];
    for i in 0..options.count {
        let permit = permits.clone().acquire_owned().await?;
        let target_index = i % options.targets.len();
        let target = options.targets[target_index];
        let source =
            (!options.sources.is_empty()).then(|| options.sources[i % options.sources.len()]);
        let number = options.first_leaf + i as u64;
        let workload = workload.clone();
        let hits_tx = hits_tx.clone();
        let closed = closed.clone();
        tasks.spawn(async move {
            let framed = join(&workload, number, target, source)
                .await
                .with_context(|| format!("leaf {number} from {source:?}"))?;
            drop(permit);
            let (outgoing, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(framed, rx, hits_tx, closed));
            anyhow::Ok((
                i,
                Leaf {
                    number,
                    target: target_index,
                    outgoing,
                },
            ))
        });
        // Reap finished connects as we go, so a failure stops us early.
        while let Some(done) = tasks.try_join_next() {
            let (i, leaf) = done??;
            leaves[i] = Some(leaf);
        }
    }
    while let Some(done) = tasks.join_next().await {
        let (i, leaf) = done??;
        leaves[i] = Some(leaf);
    }
    let connect_time = started.elapsed();
    Ok(Fleet {
        leaves: leaves.into_iter().flatten().collect(),
        hits,
        connect_time,
        closed,
    })
}

async fn join(
    workload: &Workload,
    number: u64,
    target: SocketAddr,
    source: Option<IpAddr>,
) -> anyhow::Result<SecureStream<TcpStream>> {
    let key = workload.leaf_key(number);
    let mut framed = frames::handshake(target, source, Role::Leaf, &key).await?;
    let files = workload.leaf_files(number);
    for (i, chunk) in files.chunks(MAX_FILES_PER_MESSAGE).enumerate() {
        framed
            .send(&Message::FileList {
                replace: i == 0,
                files: chunk.to_vec(),
            })
            .await?;
    }
    Ok(framed)
}

async fn run(
    mut framed: SecureStream<TcpStream>,
    mut outgoing: mpsc::UnboundedReceiver<Message>,
    hits: mpsc::UnboundedSender<HitEvent>,
    closed: Arc<AtomicUsize>,
) {
    loop {
        tokio::select! {
            // `recv` keeps what it read in the stream: cancel-safe.
            next = framed.recv() => match next {
                Some(Ok(Message::Ping { nonce })) => {
                    let pong = Message::Pong { nonce, supernodes: Vec::new(), free_leaf_slots: None };
                    if framed.send(&pong).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::QueryHit(hit))) => {
                    let _ = hits.send(HitEvent {
                        message_id: hit.message_id,
                        at: Instant::now(),
                        files: hit.files.len(),
                    });
                }
                Some(Ok(Message::Bye { .. }) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            message = outgoing.recv() => match message {
                Some(message) => {
                    if framed.send(&message).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    closed.fetch_add(1, Ordering::Relaxed);
}
