//! Per-address limits for the HTTP server, around the core's
//! [`AddressCounter`]: one counter behind a mutex, and a guard that gives
//! its slot back when dropped, so no exit path of a connection or an
//! upload can leak a count.

use std::net::IpAddr;
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

#[cfg(test)]
mod tests {
    use super::*;

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
