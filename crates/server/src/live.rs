//! The key service in force. A configuration reload builds a whole new [`KeyService`] and
//! swaps it in; a request takes the one in force when it starts and finishes on it, so that
//! no request sees half of one configuration and half of another.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rkms_core::KeyService;

/// The service in force, replaced whole by [`LiveService::replace`].
#[derive(Debug)]
pub struct LiveService {
    current: ArcSwap<KeyService>,
}

impl LiveService {
    /// Serves `service` until it is replaced.
    pub fn new(service: KeyService) -> Self {
        Self {
            current: ArcSwap::from_pointee(service),
        }
    }

    /// The service in force now; a request keeps it to the end.
    pub fn current(&self) -> Arc<KeyService> {
        self.current.load_full()
    }

    /// Puts `service` in force for every request that starts from now on.
    pub fn replace(&self, service: KeyService) {
        self.current.store(Arc::new(service));
    }
}
