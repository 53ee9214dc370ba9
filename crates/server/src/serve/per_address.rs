//! The cap on open connections from one client address, so that one client cannot take
//! every slot. An IPv6 client counts by its /64, the block one host is usually given.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::address_limit::client_of;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Open connections by client address, none kept at zero.
type OpenByAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The cap and the count it holds against.
pub(super) struct PerAddress {
    /// 0: no cap. Changed by a configuration reload.
    cap: AtomicUsize,
    open: OpenByAddress,
}

/// One connection counted against its address until dropped.
pub(super) struct Counted {
    counted: Option<(IpAddr, OpenByAddress)>,
}

impl PerAddress {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap: AtomicUsize::new(cap),
            open: Arc::default(),
        }
    }

    /// Applies `cap` to connections admitted from now on; open ones stay.
    pub(super) fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// Counts a connection from `ip`, or `None` if its address already holds the cap.
    pub(super) fn admit(&self, ip: IpAddr) -> Option<Counted> {
        let cap = self.cap.load(Ordering::Relaxed);
        if cap == 0 {
            return Some(Counted { counted: None });
        }
        let client = client_of(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(client).or_default();
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(Counted {
            counted: Some((client, Arc::clone(&self.open))),
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Some((client, open)) = self.counted.take() else {
            return;
        };
        let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_the_cap_until_one_closes() {
        let addresses = PerAddress::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = addresses.admit(a).unwrap();
        let _second = addresses.admit(a).unwrap();
        assert!(addresses.admit(a).is_none());
        assert!(addresses.admit("10.0.0.2".parse().unwrap()).is_some());
        drop(first);
        assert!(addresses.admit(a).is_some());
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let addresses = PerAddress::new(1);
        let _held = addresses.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(addresses.admit("2001:db8::2:3".parse().unwrap()).is_none());
        assert!(addresses
            .admit("2001:db8:0:1::1".parse().unwrap())
            .is_some());
        let _v4 = addresses.admit("192.0.2.1".parse().unwrap()).unwrap();
        assert!(addresses
            .admit("::ffff:192.0.2.1".parse().unwrap())
            .is_none());
    }

    #[test]
    fn no_cap_admits_everyone() {
        let addresses = PerAddress::new(0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..100).map(|_| addresses.admit(a).unwrap()).collect();
        assert_eq!(held.len(), 100);
    }
}
