//! The node-wide super-seeding table: the core's
//! [`SeedRation`](canopy_core::ration::SeedRation) (bounded, I/O-free, aged
//! by the `Time` it is given) behind a mutex, with a monotonic clock of its
//! own turned into that `Time`. The server consults it for every request
//! of a whole file that comes from a sharing downloader that says what it
//! needs (`X-Listen` and `X-Need`), and says the offer in `X-Offer` (see
//! [`crate::mesh`] for the headers' form).

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use canopy_core::groups::GroupSet;
use canopy_core::ration::{Ration, RationConfig, SeedRation};
use canopy_core::time::Time;
use canopy_proto::ContentId;

/// The rationing table shared by a server's connections. Cheap to clone:
/// clones share the table.
#[derive(Debug, Clone)]
pub struct SharedRation {
    table: Arc<Mutex<SeedRation>>,
    origin: Instant,
}

impl SharedRation {
    /// An empty table bounded by `config`.
    pub fn new(config: RationConfig) -> Self {
        Self {
            table: Arc::new(Mutex::new(SeedRation::new(config))),
            origin: Instant::now(),
        }
    }

    /// Whether `requester`, which needs `needs`, may have `asked` groups
    /// of `id` (`size` bytes) now; if so they are counted as sent at once
    /// ([`Self::unrecord`] them if they are not).
    pub fn take(
        &self,
        id: ContentId,
        size: u64,
        requester: SocketAddr,
        asked: Range<u64>,
        needs: &GroupSet,
    ) -> Ration {
        let now = self.now();
        self.lock().take(id, size, requester, asked, needs, now)
    }

    /// `groups` taken were not sent after all.
    pub fn unrecord(&self, id: ContentId, groups: Range<u64>) {
        self.lock().unrecord(id, groups);
    }

    /// What `requester`, which needs `needs`, should ask for, if a crowd
    /// is on.
    pub fn offer(
        &self,
        id: ContentId,
        size: u64,
        requester: SocketAddr,
        needs: &GroupSet,
    ) -> Option<GroupSet> {
        let now = self.now();
        self.lock().offer(id, size, requester, needs, now)
    }

    /// The table's time: milliseconds since it was made.
    fn now(&self) -> Time {
        Time(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeedRation> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
