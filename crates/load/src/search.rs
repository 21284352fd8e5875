//! Timed searches: queries sent from leaves of a [`Fleet`] at a steady
//! rate, each timed from the moment it is handed to its leaf's connection
//! to the first and to the last hit that arrives within a window.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use canopy_proto::{Message, MessageId, Query};

use crate::fleet::Fleet;
use crate::stats::Percentiles;

/// What the timed searches found.
#[derive(Debug, Clone, Copy)]
pub struct SearchReport {
    /// Queries sent.
    pub sent: usize,
    /// Queries that got at least one hit within the window.
    pub answered: usize,
    /// Query to first hit, over the answered ones.
    pub first_hit: Percentiles,
    /// Query to last hit within the window, over the answered ones.
    pub last_hit: Percentiles,
    /// Mean hits (QueryHit messages) per answered query.
    pub hits_per_query: f64,
}

impl SearchReport {
    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "sent": self.sent,
            "answered": self.answered,
            "first_hit": self.first_hit.json(),
            "last_hit": self.last_hit.json(),
            "hits_per_query": crate::stats::round3(self.hits_per_query),
        })
    }
}

#[derive(Debug)]
struct Pending {
    sent: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    hits: usize,
}

/// A query with `keywords` and `ttl`, with a fresh id from `rng`.
pub fn query(rng: &mut crate::workload::Rng, keywords: Vec<String>, ttl: u8) -> Query {
    Query {
        message_id: rng.message_id(),
        ttl,
        hops: 0,
        keywords,
        content_id: None,
        min_size: None,
        max_size: None,
    }
}

/// Sends `queries` (leaf index in the fleet, query) at `rate` a second,
/// then waits `window` after the last; hits arriving later than `window`
/// after their own query are not counted.
pub async fn timed(
    fleet: &mut Fleet,
    queries: Vec<(usize, Query)>,
    rate: f64,
    window: Duration,
) -> SearchReport {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut pending: HashMap<MessageId, Pending> = HashMap::with_capacity(queries.len());
    let sent = queries.len();
    let start = tokio::time::Instant::now();
    let mut next = queries.into_iter().enumerate().peekable();
    loop {
        let due = next
            .peek()
            .map(|(i, _)| start + interval.mul_f64(*i as f64));
        let deadline = match due {
            Some(due) => due,
            None => {
                let last = pending.values().map(|p| p.sent).max();
                match last {
                    Some(last) => tokio::time::Instant::from_std(last + window),
                    None => break,
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                match next.next() {
                    Some((_, (leaf, query))) => {
                        let id = query.message_id;
                        if let Some(leaf) = fleet.leaves.get(leaf) {
                            pending.insert(id, Pending { sent: Instant::now(), first: None, last: None, hits: 0 });
                            leaf.send(Message::Query(query));
                        }
                    }
                    None => break,
                }
            }
            hit = fleet.hits.recv() => {
                let Some(hit) = hit else { break };
                if let Some(p) = pending.get_mut(&hit.message_id) {
                    if hit.at.duration_since(p.sent) <= window {
                        p.first.get_or_insert(hit.at);
                        p.last = Some(hit.at);
                        p.hits += 1;
                    }
                }
            }
        }
    }
    let mut first = Vec::new();
    let mut last = Vec::new();
    let mut hits = 0;
    for p in pending.values() {
        if let (Some(f), Some(l)) = (p.first, p.last) {
            first.push(f.duration_since(p.sent));
            last.push(l.duration_since(p.sent));
            hits += p.hits;
        }
    }
    let answered = first.len();
    SearchReport {
        sent,
        answered,
        first_hit: Percentiles::of(&mut first),
        last_hit: Percentiles::of(&mut last),
        hits_per_query: if answered == 0 {
            0.0
        } else {
            hits as f64 / answered as f64
        },
    }
}
