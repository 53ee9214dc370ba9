//! The JSON answers of the lifecycle operations, shared by the HTTP routes and the
//! `rkms-server key` commands so that both print the same shapes. Times are RFC 3339, UTC.

use rkms_core::{KeyId, KeyInfo, KeyListing, KeyState};

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

/// An id's metadata as answered.
pub fn info_body(info: &KeyInfo) -> serde_json::Value {
    let mut body = state_body(&info.id, info.state);
    body["current_version"] = info.versions.last().map_or(0, |v| v.number).into();
    body["versions"] = info
        .versions
        .iter()
        .map(|v| {
            serde_json::json!({
                "version": v.number,
                "created_at": (v.created_at > 0).then(|| rfc3339(v.created_at)),
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
