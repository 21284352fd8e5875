//! The source's side of a relayed transfer: a push that names a relay
//! circuit (the downloader's supernode filled in its own address) is
//! answered by dialing the relay, asking to `serve` the circuit, and once
//! it says OK, introducing ourselves as on a pushed connection
//! (`CANOPY-PUSH <node id>`) and serving HTTP there, exactly as a push.
//! The same budgets as a push apply: the connect-back rate (to the relay's
//! address) and the pushed uploads at once.

use canopy_proto::{ContentId, RelayCircuit};
use canopy_transfer::relay::serve_half;

use super::session::{CONNECT_TIMEOUT, SessionContext};

/// A downloader asked us, by a push through its relaying supernode, to
/// meet it at `circuit` and serve `content_id`.
pub(super) fn relay_upload(context: &SessionContext, content_id: ContentId, circuit: RelayCircuit) {
    if context.catalog.get(&content_id).is_none() {
        tracing::info!(%content_id, "relayed push for content we do not share; ignored");
        return;
    }
    if !context.connect_backs.allow(circuit.addr) {
        return;
    }
    let Ok(permit) = context.pushes.clone().try_acquire_owned() else {
        tracing::info!(relay = %circuit.addr, "too many pushes at once; ignored");
        return;
    };
    let server = context.server.clone();
    let us = context.identity.node_id;
    let shutdown = context.shutdown.clone();
    context.tracker.spawn(async move {
        let relay = circuit.addr;
        match tokio::time::timeout(CONNECT_TIMEOUT, serve_half(circuit, us)).await {
            Ok(Ok(stream)) => {
                tracing::info!(%relay, %content_id, "serving through a relay");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = server.serve_relayed(stream, relay) => {}
                }
            }
            Ok(Err(error)) => tracing::info!(%relay, %error, "cannot serve through the relay"),
            Err(_) => tracing::info!(%relay, "the relay did not answer in time"),
        }
        drop(permit);
    });
}
