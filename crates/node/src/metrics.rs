//! Prometheus metrics: `GET /metrics` on the address given with
//! `--metrics`, for a supernode or a leaf, in the Prometheus text format
//! (what `promtool check metrics` reads). Each scrape reads the node's own
//! counters as they are at that moment and brings the exported metrics up
//! to them: gauges are set, counters advanced by the difference. There is
//! no second set of counters to keep in step on the hot path.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder as _, IntCounter, IntGauge, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::NodeError;
use crate::leaf::LeafHandle;
use crate::supernode::SupernodeHandle;
use crate::traffic::Traffic;
use canopy_core::reachability::{NatKind, Reachable};
use canopy_core::relay::{Refusal, RelayStats};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric's value at scrape time.
#[derive(Debug)]
struct Sample {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    value: u64,
}

/// A counter; exported as `<name>_total`.
fn counter(name: &'static str, help: &'static str, value: u64) -> Sample {
    Sample {
        name,
        help,
        kind: Kind::Counter,
        value,
    }
}

fn gauge(name: &'static str, help: &'static str, value: usize) -> Sample {
    Sample {
        name,
        help,
        kind: Kind::Gauge,
        value: value as u64,
    }
}

type Snapshot = Box<dyn Fn() -> Vec<Sample> + Send + Sync>;

/// Turns snapshots into Prometheus text.
pub struct Exporter {
    snapshot: Snapshot,
    state: Mutex<Exported>,
}

#[derive(Default)]
struct Exported {
    registry: Registry,
    counters: HashMap<&'static str, IntCounter>,
    gauges: HashMap<&'static str, IntGauge>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

impl Exporter {
    fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot,
            state: Mutex::new(Exported::default()),
        }
    }

    /// The metrics as they are now, in the Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let samples = (self.snapshot)();
        let mut state = self
            .state
            .lock()
            .map_err(|_| prometheus::Error::Msg("metrics lock poisoned".into()))?;
        for sample in samples {
            let clamped = i64::try_from(sample.value).unwrap_or(i64::MAX);
            match sample.kind {
                Kind::Counter => {
                    let metric = match state.counters.get(sample.name) {
                        Some(metric) => metric.clone(),
                        None => {
                            let metric =
                                IntCounter::new(format!("{}_total", sample.name), sample.help)?;
                            state.registry.register(Box::new(metric.clone()))?;
                            state.counters.insert(sample.name, metric.clone());
                            metric
                        }
                    };
                    // The node's counters only grow; catch up with them.
                    let behind = sample.value.saturating_sub(metric.get());
                    metric.inc_by(behind);
                }
                Kind::Gauge => {
                    let metric = match state.gauges.get(sample.name) {
                        Some(metric) => metric.clone(),
                        None => {
                            let metric = IntGauge::new(sample.name, sample.help)?;
                            state.registry.register(Box::new(metric.clone()))?;
                            state.gauges.insert(sample.name, metric.clone());
                            metric
                        }
                    };
                    metric.set(clamped);
                }
            }
        }
        let mut text = Vec::new();
        TextEncoder::new().encode(&state.registry.gather(), &mut text)?;
        String::from_utf8(text).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

fn traffic_samples(traffic: &Traffic) -> [Sample; 3] {
    [
        counter(
            "canopy_received_bytes",
            "Bytes read from overlay peers.",
            Traffic::get(&traffic.bytes_in),
        ),
        counter(
            "canopy_sent_bytes",
            "Bytes written to overlay peers.",
            Traffic::get(&traffic.bytes_out),
        ),
        counter(
            "canopy_messages_dropped",
            "Messages dropped because a peer's send queue was full.",
            Traffic::get(&traffic.messages_dropped),
        ),
    ]
}

/// The metrics of a supernode.
pub fn supernode_metrics(node: &SupernodeHandle) -> Exporter {
    let stats = node.watch_stats();
    let traffic = node.traffic().clone();
    let refused = node.connections_refused_counter();
    let relay = node.relay_service();
    let snapshot: Snapshot = Box::new(move || {
        let s = stats.borrow().clone();
        let mut samples = vec![
            gauge("canopy_leaves", "Leaves attached.", s.leaves),
            gauge(
                "canopy_supernode_peers",
                "Supernode peers connected.",
                s.supernode_peers,
            ),
            gauge(
                "canopy_handshaking_connections",
                "Connections still in their handshake.",
                s.handshaking,
            ),
            gauge("canopy_index_files", "Files in the index.", s.index_files),
            Sample {
                name: "canopy_index_bytes",
                help: "Bytes charged to the index (its budget's measure).",
                kind: Kind::Gauge,
                value: s.index_bytes,
            },
            counter(
                "canopy_queries_received",
                "Queries received, duplicates included.",
                s.queries_received,
            ),
            counter(
                "canopy_queries_forwarded",
                "Query copies sent on to other supernodes.",
                s.queries_forwarded,
            ),
            counter(
                "canopy_queries_dropped",
                "Queries dropped: seen before, or a full send queue.",
                s.queries_duplicate + Traffic::get(&traffic.queries_dropped),
            ),
            counter(
                "canopy_queries_rate_limited",
                "Leaf queries dropped for going over the leaf's query rate.",
                s.queries_rate_limited,
            ),
            counter(
                "canopy_peer_queries_rate_limited",
                "Supernode peers' queries dropped for going over the peer's query rate.",
                s.peer_queries_rate_limited,
            ),
            counter(
                "canopy_queries_scan_exhausted",
                "Queries whose index scan stopped at the scan budget.",
                s.queries_scan_exhausted,
            ),
            counter(
                "canopy_scan_candidates",
                "Index candidates examined by queries.",
                s.scan_candidates,
            ),
            counter(
                "canopy_hits_rate_limited",
                "Hits dropped for going over the sending peer's hit rate.",
                s.hits_rate_limited,
            ),
            counter(
                "canopy_hits_invalid",
                "Hits dropped for an invalid source address or node id.",
                s.hits_invalid,
            ),
            counter(
                "canopy_hits_mismatched",
                "Hits dropped because none of their files matched their query.",
                s.hits_mismatched,
            ),
            counter(
                "canopy_hit_files_mismatched",
                "Files dropped from hits for not matching their query.",
                s.hit_files_mismatched,
            ),
            counter(
                "canopy_dynamic_hits_uncounted",
                "Routed hits not counted toward a dynamic query (repeat source or past the peer's share).",
                s.dynamic_hits_uncounted,
            ),
            counter(
                "canopy_publishers_refused",
                "Leaves disconnected to keep the index within its byte budget.",
                s.publishers_refused,
            ),
            counter(
                "canopy_peers_too_slow",
                "Peers disconnected for reading too slowly.",
                s.peers_too_slow,
            ),
            counter(
                "canopy_pongs_unsolicited",
                "Pongs that answered no Ping of ours: ignored.",
                s.pongs_unsolicited,
            ),
            counter(
                "canopy_hits_answered",
                "Hits sent from this supernode's index.",
                s.hits_answered,
            ),
            counter(
                "canopy_hits_routed",
                "Hits passed on along a reverse path.",
                s.hits_routed,
            ),
            counter(
                "canopy_hits_unroutable",
                "Hits dropped for want of a route.",
                s.hits_unroutable,
            ),
            counter(
                "canopy_pushes_routed",
                "Pushes delivered or passed on.",
                s.pushes_routed,
            ),
            counter(
                "canopy_protocol_errors",
                "Connections closed for breaking the protocol.",
                s.protocol_errors,
            ),
            counter(
                "canopy_handshakes_rejected",
                "Handshakes refused.",
                s.handshakes_rejected,
            ),
            counter(
                "canopy_handshakes_address_limited",
                "Handshakes refused for the address's or network's share of slots.",
                s.handshakes_address_limited,
            ),
            counter(
                "canopy_leaves_refused_full",
                "Leaves refused because every leaf slot was taken (the supernode election's need).",
                s.leaves_refused_full,
            ),
            counter(
                "canopy_connections_refused_address_limit",
                "Connections closed on accept: their address held its share of handshakes.",
                refused.load(std::sync::atomic::Ordering::Relaxed),
            ),
            counter(
                "canopy_pushes_rate_limited",
                "Pushes dropped for going over their source connection's rate.",
                s.pushes_rate_limited,
            ),
            counter(
                "canopy_pushes_callback_limited",
                "Pushes dropped for going over their callback address's rate.",
                s.pushes_callback_limited,
            ),
            counter(
                "canopy_push_callbacks_rewritten",
                "Leaf pushes whose callback IP was replaced with the leaf's own.",
                s.push_callbacks_rewritten,
            ),
            counter(
                "canopy_probes_skipped",
                "Leaves never probed because too many waited.",
                s.probes_skipped,
            ),
            counter(
                "canopy_announces",
                "Leaves' new listening addresses taken (and probed again).",
                s.announces,
            ),
            counter(
                "canopy_announces_ignored",
                "Announces (from leaves or supernode peers) ignored for coming within 30 s of the last.",
                s.announces_ignored,
            ),
            counter(
                "canopy_peer_announces",
                "Supernode peers' new listening addresses taken.",
                s.peer_announces,
            ),
            counter(
                "canopy_own_announces",
                "Our own new listening addresses announced to supernode peers.",
                s.own_announces,
            ),
            gauge(
                "canopy_probes_in_flight",
                "Reachability probes running.",
                s.probes_in_flight,
            ),
            counter(
                "canopy_filter_bytes_sent",
                "Bytes of routing filter patches sent to supernode peers.",
                s.filters.bytes_sent,
            ),
            counter(
                "canopy_filter_bytes_received",
                "Bytes of routing filter patches taken from supernode peers.",
                s.filters.bytes_received,
            ),
            gauge(
                "canopy_filter_memory_bytes",
                "Bytes of routing filter tables held (ours and the peers').",
                s.filters.memory_bytes,
            ),
            gauge(
                "canopy_filter_peers",
                "Supernode peers whose routing filter is held.",
                s.filters.peers_with_filters,
            ),
            counter(
                "canopy_last_hop_queries_skipped",
                "Query copies not sent on their last hop: the peer's filter ruled them out.",
                s.filters.queries_skipped,
            ),
        ];
        samples.extend(traffic_samples(&traffic));
        samples.extend(relay_samples(&relay.stats(), &s));
        samples
    });
    Exporter::new(snapshot)
}

/// `canopy_nat_kind`'s value for `nat`.
fn nat_code(nat: NatKind) -> usize {
    match nat {
        NatKind::Unknown => 0,
        NatKind::None => 1,
        NatKind::EndpointIndependent {
            port_preserving: true,
        } => 2,
        NatKind::EndpointIndependent {
            port_preserving: false,
        } => 3,
        NatKind::EndpointDependent => 4,
    }
}

/// The relay's refusals, a counter each (the exporter has no labels).
const RELAY_REFUSALS: [(Refusal, &str, &str); 7] = [
    (
        Refusal::Disabled,
        "canopy_relay_refused_disabled",
        "Relay halves refused: this supernode does not relay.",
    ),
    (
        Refusal::NoSlots,
        "canopy_relay_refused_no_slots",
        "Relay halves refused: every slot taken.",
    ),
    (
        Refusal::PerIp,
        "canopy_relay_refused_per_ip",
        "Relay halves refused: the IP held its share.",
    ),
    (
        Refusal::UnknownToken,
        "canopy_relay_refused_unknown_token",
        "Relay halves refused: a token never registered.",
    ),
    (
        Refusal::ExpiredToken,
        "canopy_relay_refused_expired_token",
        "Relay halves refused: the token's time had run out.",
    ),
    (
        Refusal::HalfTaken,
        "canopy_relay_refused_half_taken",
        "Relay halves refused: that half was taken.",
    ),
    (
        Refusal::BadRequest,
        "canopy_relay_refused_bad_request",
        "Relay connections whose line was not a relay request.",
    ),
];

/// The relay's metrics: circuits, refusals by reason (a metric each: the
/// exporter has no labels), bytes.
fn relay_samples(r: &RelayStats, s: &canopy_core::supernode::SupernodeStats) -> Vec<Sample> {
    let mut samples = vec![
        gauge(
            "canopy_relay_circuits_open",
            "Relay circuits holding a slot (half-open ones included).",
            r.circuits_open,
        ),
        counter(
            "canopy_relay_circuits",
            "Relay circuits paired.",
            r.circuits_total,
        ),
        counter(
            "canopy_relay_bytes",
            "Bytes relayed, both ways.",
            r.bytes_relayed,
        ),
        counter(
            "canopy_relay_cut_bytes",
            "Relay circuits cut at their byte limit.",
            r.cut_bytes,
        ),
        counter(
            "canopy_relay_cut_duration",
            "Relay circuits cut at their time limit.",
            r.cut_duration,
        ),
        counter(
            "canopy_relay_tokens_dropped",
            "Relay circuits not registered: the token table was full.",
            r.tokens_dropped,
        ),
        counter(
            "canopy_push_relays_granted",
            "Relay circuits our leaves asked for and we opened.",
            s.push_relays_granted,
        ),
        counter(
            "canopy_push_relays_dropped",
            "Leaf pushes whose relay request was dropped (we don't relay).",
            s.push_relays_dropped,
        ),
    ];
    samples.extend(
        RELAY_REFUSALS
            .iter()
            .map(|(refusal, name, help)| counter(name, help, r.refused(*refusal))),
    );
    samples
}

/// The metrics of a leaf.
pub fn leaf_metrics(leaf: &LeafHandle) -> Exporter {
    let status = leaf.watch_status();
    let server = leaf.server().clone();
    let traffic = leaf.traffic().clone();
    let connect_backs_refused = leaf.connect_backs_refused_counter();
    let snapshot: Snapshot = Box::new(move || {
        let s = status.borrow().clone();
        let stats = server.stats();
        let mut samples = vec![
            gauge(
                "canopy_shared_files",
                "Files this leaf shares.",
                s.shared_files,
            ),
            gauge(
                "canopy_supernode_connected",
                "1 while a supernode has accepted this leaf.",
                usize::from(s.connected_to.is_some()),
            ),
            gauge(
                "canopy_lan_peers",
                "Nodes LAN discovery hears on the LAN now.",
                s.lan_peers.len(),
            ),
            gauge(
                "canopy_reachable",
                "1 while a supernode could connect back to the address we announce.",
                usize::from(s.reachability.reachable == Reachable::Yes),
            ),
            gauge(
                "canopy_reachability_known",
                "1 once a verdict on our reachability is known (or we accept no connections).",
                usize::from(s.reachability.reachable != Reachable::Unknown),
            ),
            gauge(
                "canopy_nat_kind",
                "Our NAT as supernodes show it: 0 unknown, 1 none, 2 endpoint-independent \
                 keeping our port, 3 endpoint-independent, 4 endpoint-dependent (symmetric).",
                nat_code(s.reachability.nat),
            ),
            gauge(
                "canopy_public_addrs_confirmed",
                "Families whose public IP two supernodes in different networks agree on.",
                s.reachability.public.iter().filter(|a| a.confirmed).count(),
            ),
            gauge(
                "canopy_upload_slots_in_use",
                "Uploads in progress.",
                server.uploads_in_progress(),
            ),
            gauge(
                "canopy_upload_slots",
                "Uploads allowed at once.",
                server.upload_slots(),
            ),
            counter(
                "canopy_upload_bytes",
                "File bytes sent to downloaders.",
                stats.bytes_sent.load(Ordering::Relaxed),
            ),
            counter(
                "canopy_upload_refusals",
                "Downloads refused for want of an upload slot (503).",
                stats.busy_refusals.load(Ordering::Relaxed),
            ),
            counter(
                "canopy_upload_address_refusals",
                "Downloads refused (503): the address or its network held its share of upload slots.",
                stats.address_upload_refusals.load(Ordering::Relaxed),
            ),
            counter(
                "canopy_upload_offer_refusals",
                "Requests of a whole file refused with an offer of other groups (416 + X-Offer: super-seeding a crowd).",
                stats.offer_refusals.load(Ordering::Relaxed),
            ),
            counter(
                "canopy_http_connections_refused",
                "HTTP connections closed at once: the address or its network held its share.",
                stats.address_connection_refusals.load(Ordering::Relaxed),
            ),
            counter(
                "canopy_uploads_cut_stalled",
                "HTTP connections cut because the downloader stopped reading or read too slowly.",
                stats.stalled_cut.load(Ordering::Relaxed),
            ),
            gauge(
                "canopy_http_connections",
                "HTTP connections open.",
                stats.open_connections.load(Ordering::Relaxed),
            ),
            counter(
                "canopy_connect_backs_refused",
                "Pushes ignored: connecting back would go over the rate.",
                connect_backs_refused.load(Ordering::Relaxed),
            ),
        ];
        samples.extend(traffic_samples(&traffic));
        samples
    });
    Exporter::new(snapshot)
}

/// Serves `exporter` at `GET /metrics` on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    exporter: Exporter,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<SocketAddr, NodeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| NodeError::Bind { addr, source })?;
    let exporter = Arc::new(exporter);
    let connections = tracker.clone();
    tracker.spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let exporter = exporter.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let exporter = exporter.clone();
                    async move { Ok::<_, Infallible>(respond(request.uri().path(), &exporter)) }
                });
                let serving = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = serving => {}
                }
            });
        }
    });
    tracing::info!(%local, "metrics at /metrics");
    Ok(local)
}

fn respond(path: &str, exporter: &Exporter) -> Response<Full<Bytes>> {
    let (status, body, content_type) = if path != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "not found\n".to_owned(),
            "text/plain",
        )
    } else {
        match exporter.render() {
            Ok(text) => (StatusCode::OK, text, prometheus::TEXT_FORMAT),
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{error}\n"),
                "text/plain",
            ),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}
