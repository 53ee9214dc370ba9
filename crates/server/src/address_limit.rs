//! A rate limit per client address, for what is answered before anyone is authenticated.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Each address gets `burst` requests at once, refilled at `per_second`. Addresses unseen for
/// a while are forgotten by [`AddressLimit::forget_idle`], so the table stays small.
#[derive(Debug)]
pub struct AddressLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl AddressLimit {
    /// A limit of `per_second` sustained and `burst` at once, per address.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
        }
    }

    /// Takes one request from the budget of `address`'s client (see [`client_of`]), or says
    /// how long until there is one.
    pub fn admit(&self, address: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&client_of(address))
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Drops addresses whose budget is full again: they would start afresh anyway.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The client an address stands for in every per-address limit: IPv4 as it is (also when
/// mapped into IPv6 by a dual-stack listener), IPv6 by its /64, the block one host is usually
/// given, so that a host cannot pick a fresh address for each request.
pub fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_host_shares_one_budget_across_its_64() {
        let limit = AddressLimit::new(NonZeroU32::MIN, NonZeroU32::MIN);
        let host = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, last));
        assert!(limit.admit(host(1)).is_ok());
        assert!(
            limit.admit(host(2)).is_err(),
            "another address of the same /64"
        );
        let neighbour = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert!(limit.admit(neighbour).is_ok());
    }
}
