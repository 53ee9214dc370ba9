//! A rate limit per client address, for what is answered before anyone is authenticated.

use std::net::IpAddr;
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

    /// Takes one request from `address`'s budget, or says how long until there is one.
    pub fn admit(&self, address: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&address)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Drops addresses whose budget is full again: they would start afresh anyway.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}
