//! The JSON answers of the lifecycle operations, shared by the HTTP routes and the
//! `rkms-server key` commands so that both print the same shapes, and the rules the gRPC
//! answers share with them. Times are RFC 3339, UTC.

use rkms_core::{KeyId, KeyInfo, KeyListing, KeyState, VersionInfo};

use crate::error::rfc3339;

/// The lifecycle state of an id as answered: its name, and its time when it has one.
pub fn state_body(id: &KeyId, state: KeyState) -> serde_json::Value {
    let mut body = serde_json::json!({ "id": id.as_str(), "state": state.name() });
    match state {
        KeyState::Active => {}
        KeyState::PendingDeletion { deletion_time } => {
            body["deletion_time"] = rfc3339(deletion_time).into();
        }
        KeyState::Deleted { deleted_at } => body["deleted_at"] = rfc3339(deleted_at).into(),
    }
    body
}

/// A rotation's answer: the new current version.
pub fn rotated_body(id: &KeyId, version: u32) -> serde_json::Value {
    serde_json::json!({ "id": id.as_str(), "version": version, "state": "active" })
}

/// The version a key request is answered with: the last, or 0 once none is left.
pub fn current_version(info: &KeyInfo) -> u32 {
    info.versions.last().map_or(0, |v| v.number)
}

/// When a version was made, if known (0 for versions made before times were recorded).
pub fn created_at(version: &VersionInfo) -> Option<u64> {
    (version.created_at > 0).then_some(version.created_at)
}

/// An id's metadata as answered.
pub fn info_body(info: &KeyInfo) -> serde_json::Value {
    let mut body = state_body(&info.id, info.state);
    body["current_version"] = current_version(info).into();
    body["versions"] = info
        .versions
        .iter()
        .map(|v| {
            serde_json::json!({
                "version": v.number,
                "created_at": created_at(v).map(rfc3339),
                "regions": v.regions,
                "missing": v.missing,
            })
        })
        .collect();
    body
}

/// A page of a listing as answered.
pub fn list_body(listing: &KeyListing) -> serde_json::Value {
    serde_json::json!({
        "keys": listing.keys.iter().map(|k| serde_json::json!({
            "id": k.id.as_str(),
            "state": k.state.map_or("unreadable", KeyState::name),
        })).collect::<Vec<_>>(),
        "next": listing.next.as_ref().map(ToString::to_string),
    })
}
