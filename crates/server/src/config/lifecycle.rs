//! The `[lifecycle]` settings: the deletion window, and whether cache hits read the state.

use std::time::Duration;

use rkms_core::{LifecycleOptions, ServiceOptions};
use serde::Deserialize;

use super::{count, ConfigError};

/// Longest deletion window: ten years.
const MAX_WINDOW_SECONDS: u64 = 10 * 365 * 24 * 60 * 60;

/// A window shorter than this is allowed (tests use seconds) but warned about: AWS KMS's
/// shortest is 7 days, long enough to notice a mistaken deletion.
const SHORT_WINDOW_SECONDS: u64 = 7 * 24 * 60 * 60;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LifecycleSection {
    deletion_window_seconds: Option<u64>,
    check_state_on_hit: Option<bool>,
}

/// Fills `service.lifecycle` from the section; returns a warning for a short window.
pub(super) fn apply(
    service: &mut ServiceOptions,
    section: LifecycleSection,
) -> Result<Option<String>, ConfigError> {
    let defaults = LifecycleOptions::default();
    let window = count(
        "lifecycle.deletion_window_seconds",
        section.deletion_window_seconds,
        defaults.deletion_window.as_secs(),
        1..=MAX_WINDOW_SECONDS,
    )?;
    service.lifecycle = LifecycleOptions {
        deletion_window: Duration::from_secs(window),
        check_state_on_hit: section
            .check_state_on_hit
            .unwrap_or(defaults.check_state_on_hit),
    };
    Ok((window < SHORT_WINDOW_SECONDS).then(|| {
        format!(
            "[lifecycle] deletion_window_seconds is {window}: a deleted key's copies are \
             destroyed after less than 7 days, leaving little time to notice a mistaken \
             deletion and restore it"
        )
    }))
}
