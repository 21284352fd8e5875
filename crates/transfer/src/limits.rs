//! Limits for the HTTP server: per-address limits around the core's
//! [`AddressCounter`] (one counter behind a mutex), and the upload slots,
//! whose number can change while uploads run. Each hands out a guard that
//! gives its slot back when dropped, so no exit path of a connection or an
//! upload can leak a count.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use canopy_core::addr_limits::{AddressCounter, AddressLimit, IpNet, LimitExceeded};

/// An [`AddressCounter`] shared between tasks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AddressSlots {
    counter: Arc<Mutex<AddressCounter>>,
}

/// One slot held by one address; released on drop.
#[derive(Debug)]
pub struct AddressGuard {
    counter: Arc<Mutex<AddressCounter>>,
    ip: IpAddr,
}

impl AddressSlots {
    /// Slots limited to `limit` per address and per prefix, except for the
    /// addresses in `exempt`.
    pub fn new(limit: AddressLimit, exempt: Vec<IpNet>) -> Self {
        Self {
            counter: Arc::new(Mutex::new(AddressCounter::new(limit, exempt))),
        }
    }

    /// Takes a slot for `ip`, or says which limit forbids it.
    pub fn try_take(&self, ip: IpAddr) -> Result<AddressGuard, LimitExceeded> {
        let mut counter = self
            .counter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counter.acquire(ip)?;
        Ok(AddressGuard {
            counter: self.counter.clone(),
            ip,
        })
    }

    /// Slots `ip` holds now (0 for an exempt address).
    pub fn held_by(&self, ip: IpAddr) -> usize {
        self.counter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .held_by(ip)
    }
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        self.counter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .release(self.ip);
    }
}

/// Upload slots: at most `limit` taken at once, `limit` settable at any
/// time. Lowering it below the number taken cuts nothing: no new slot is
/// given until enough are given back. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UploadSlots {
    shared: Arc<SlotCounts>,
}

#[derive(Debug)]
struct SlotCounts {
    limit: AtomicUsize,
    in_use: AtomicUsize,
}

/// One upload slot; given back on drop.
#[derive(Debug)]
pub struct UploadSlot {
    shared: Arc<SlotCounts>,
}

impl UploadSlots {
    /// `limit` slots.
    pub fn new(limit: usize) -> Self {
        Self {
            shared: Arc::new(SlotCounts {
                limit: AtomicUsize::new(limit),
                in_use: AtomicUsize::new(0),
            }),
        }
    }

    /// Takes a slot if fewer than the limit are taken.
    pub fn try_take(&self) -> Option<UploadSlot> {
        let limit = self.shared.limit.load(Ordering::Acquire);
        self.shared
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < limit).then_some(used + 1)
            })
            .ok()?;
        Some(UploadSlot {
            shared: self.shared.clone(),
        })
    }

    /// Changes the limit.
    pub fn set_limit(&self, limit: usize) {
        self.shared.limit.store(limit, Ordering::Release);
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Acquire)
    }

    /// Slots taken now.
    pub fn in_use(&self) -> usize {
        self.shared.in_use.load(Ordering::Acquire)
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.shared.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_slots_follow_a_changing_limit() {
        let slots = UploadSlots::new(2);
        let a = slots.try_take().unwrap();
        let b = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        slots.set_limit(3);
        let c = slots.try_take().unwrap();
        assert_eq!(slots.in_use(), 3);
        // Lowered below those taken: nothing new until two are back.
        slots.set_limit(1);
        drop(a);
        assert!(slots.try_take().is_none());
        drop(b);
        assert!(slots.try_take().is_none());
        drop(c);
        let _d = slots.try_take().unwrap();
        assert_eq!(slots.limit(), 1);
    }

    #[test]
    fn a_dropped_guard_gives_its_slot_back() {
        let slots = AddressSlots::new(AddressLimit::new(1, 2), Vec::new());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let guard = slots.try_take(ip).unwrap();
        assert!(slots.try_take(ip).is_err());
        assert_eq!(slots.held_by(ip), 1);
        drop(guard);
        assert_eq!(slots.held_by(ip), 0);
        let _again = slots.try_take(ip).unwrap();
    }
}
