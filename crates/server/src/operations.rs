//! The key operations, whatever the transport: each checks the caller's policy, runs the core
//! call, and writes its audit line (fail-closed: a key leaves only once its release is on
//! record) and metrics. The HTTP routes and the `rkms-server key` commands only parse, call
//! this, and render.

use std::sync::Arc;

use rkms_core::{IssuedKey, KeyId, KeyInfo, KeyListing, KeyService, KeyState, ServiceError};

use crate::audit::{AuditEvent, AuditLog};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::telemetry::{KEYS_CREATED, REJECTIONS};

/// Most ids one listing call answers.
pub const MAX_LIST_LIMIT: usize = 1000;

/// The service and the audit log every operation goes through.
#[derive(Debug, Clone)]
pub struct KeyOperations {
    /// The protocol.
    pub service: Arc<KeyService>,
    /// Where every operation is recorded; `None` records nothing (tests of the API alone).
    pub audit: Option<Arc<AuditLog>>,
}

/// Who asks, and the request's id for the audit line.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The authenticated principal.
    pub principal: &'a Principal,
    /// Per-request id, sent back to the client and written in the audit line.
    pub request_id: &'a str,
}

impl KeyOperations {
    /// The key of `id`: version `version`, or the current one, created on first use when the
    /// caller may create it. A version read never creates.
    pub async fn get_key(
        &self,
        caller: Caller<'_>,
        id: &KeyId,
        version: Option<u32>,
    ) -> Result<IssuedKey, ApiError> {
        let audit = self.audit(caller, id);
        let allowed = caller.principal.policy.allowed(id);
        if let Some(version) = version {
            if !allowed.get {
                return Err(audit.denied("get", "read keys of").await);
            }
            let issued = audit
                .outcome("get", self.service.get_version(id, version).await)
                .await?;
            audit.issued(&issued).await?;
            return Ok(issued);
        }
        if !allowed.get && !allowed.create {
            return Err(audit.denied("get_or_create", "use").await);
        }
        let result = if !allowed.create {
            self.service.get_existing(id).await
        } else if caller.principal.limits_creates() {
            // An existing key costs nothing from the create allowance; a create takes one first.
            match self.service.get_existing(id).await {
                Ok(None) => {
                    caller.principal.admit_create().map_err(|wait| {
                        metrics::counter!(REJECTIONS, "reason" => "create_rate_limited")
                            .increment(1);
                        ApiError::TooManyRequests(wait)
                    })?;
                    self.service.get_or_create(id).await.map(Some)
                }
                existing => existing,
            }
        } else {
            self.service.get_or_create(id).await.map(Some)
        };
        let operation = if allowed.create {
            "get_or_create"
        } else {
            "get"
        };
        let issued = match audit.outcome(operation, result).await? {
            None => {
                audit.write("create", "denied", None).await?;
                metrics::counter!(REJECTIONS, "reason" => "forbidden").increment(1);
                return Err(ApiError::Forbidden(format!(
                    "no key exists for id {:?}, and principal {:?} may not create one",
                    id.as_str(),
                    caller.principal.name
                )));
            }
            Some(issued) if !issued.created && !allowed.get => {
                audit.write("get", "denied", None).await?;
                metrics::counter!(REJECTIONS, "reason" => "forbidden").increment(1);
                return Err(ApiError::Forbidden(format!(
                    "the key for id {:?} exists, and principal {:?} may create keys for it but not read existing ones",
                    id.as_str(),
                    caller.principal.name
                )));
            }
            Some(issued) => issued,
        };
        audit.issued(&issued).await?;
        if issued.created {
            metrics::counter!(KEYS_CREATED, "principal" => caller.principal.name.clone())
                .increment(1);
        }
        Ok(issued)
    }

    /// Makes a new current version of `id`'s key; returns its number.
    pub async fn rotate(&self, caller: Caller<'_>, id: &KeyId) -> Result<u32, ApiError> {
        let audit = self.audit(caller, id);
        if !caller.principal.policy.allowed(id).rotate {
            return Err(audit.denied("rotate", "rotate").await);
        }
        let version = audit
            .outcome("rotate", self.service.rotate(id).await)
            .await?;
        audit.ok("rotate", Some(version)).await?;
        Ok(version)
    }

    /// Schedules `id`'s deletion; returns its pending state.
    pub async fn delete(&self, caller: Caller<'_>, id: &KeyId) -> Result<KeyState, ApiError> {
        let audit = self.audit(caller, id);
        if !caller.principal.policy.allowed(id).delete {
            return Err(audit.denied("delete", "delete").await);
        }
        let state = audit
            .outcome("delete", self.service.schedule_deletion(id).await)
            .await?;
        audit.ok("delete", None).await?;
        Ok(state)
    }

    /// Cancels `id`'s scheduled deletion; returns its state, active.
    pub async fn restore(&self, caller: Caller<'_>, id: &KeyId) -> Result<KeyState, ApiError> {
        let audit = self.audit(caller, id);
        if !caller.principal.policy.allowed(id).restore {
            return Err(audit.denied("restore", "restore").await);
        }
        let state = audit
            .outcome("restore", self.service.restore(id).await)
            .await?;
        audit.ok("restore", None).await?;
        Ok(state)
    }

    /// `id`'s metadata, without key material.
    pub async fn describe(&self, caller: Caller<'_>, id: &KeyId) -> Result<KeyInfo, ApiError> {
        let audit = self.audit(caller, id);
        if !caller.principal.policy.allowed(id).describe {
            return Err(audit.denied("describe", "describe").await);
        }
        let info = audit
            .outcome("describe", self.service.describe(id).await)
            .await?;
        audit.ok("describe", None).await?;
        Ok(info)
    }

    /// Up to `limit` ids starting with `prefix` that the caller may list, going on from
    /// `after` (a cursor sealed for this caller and prefix: it names no id). The audit line
    /// carries the prefix as its id.
    pub async fn list(
        &self,
        caller: Caller<'_>,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyListing, ApiError> {
        let audit = Audit {
            operations: self,
            caller,
            id: prefix,
        };
        if !caller.principal.policy.grants_anywhere(|ops| ops.list) {
            return Err(audit.denied("list", "list").await);
        }
        let mut listing = audit
            .outcome(
                "list",
                self.service
                    .list_keys(
                        &caller.principal.name,
                        prefix,
                        after,
                        limit.clamp(1, MAX_LIST_LIMIT),
                    )
                    .await,
            )
            .await?;
        listing
            .keys
            .retain(|key| caller.principal.policy.allowed(&key.id).list);
        audit.ok("list", None).await?;
        Ok(listing)
    }

    fn audit<'a>(&'a self, caller: Caller<'a>, id: &'a KeyId) -> Audit<'a> {
        Audit {
            operations: self,
            caller,
            id: id.as_str(),
        }
    }
}

/// Writes one operation's audit line.
struct Audit<'a> {
    operations: &'a KeyOperations,
    caller: Caller<'a>,
    id: &'a str,
}

impl Audit<'_> {
    /// Audits a refusal and returns the 403 to answer (or the audit failure).
    async fn denied(&self, operation: &str, verb: &str) -> ApiError {
        metrics::counter!(REJECTIONS, "reason" => "forbidden").increment(1);
        if let Err(e) = self.write(operation, "denied", None).await {
            return e;
        }
        ApiError::Forbidden(format!(
            "principal {:?} may not {verb} id {:?}",
            self.caller.principal.name, self.id
        ))
    }

    /// Passes a success through; audits a failure with its error type and answers it.
    async fn outcome<T>(
        &self,
        operation: &str,
        result: Result<T, ServiceError>,
    ) -> Result<T, ApiError> {
        match result {
            Ok(value) => Ok(value),
            Err(error) => {
                self.write(operation, ApiError::kind_of(&error), None)
                    .await?;
                Err(ApiError::from_service(&error))
            }
        }
    }

    async fn issued(&self, issued: &IssuedKey) -> Result<(), ApiError> {
        let operation = if issued.created { "create" } else { "get" };
        self.write(operation, "ok", Some(issued)).await
    }

    async fn ok(&self, operation: &str, version: Option<u32>) -> Result<(), ApiError> {
        self.write_event(operation, "ok", None, version).await
    }

    async fn write(
        &self,
        operation: &str,
        outcome: &str,
        issued: Option<&IssuedKey>,
    ) -> Result<(), ApiError> {
        self.write_event(operation, outcome, issued, issued.map(|i| i.version))
            .await
    }

    async fn write_event(
        &self,
        operation: &str,
        outcome: &str,
        issued: Option<&IssuedKey>,
        version: Option<u32>,
    ) -> Result<(), ApiError> {
        let Some(audit) = &self.operations.audit else {
            return Ok(());
        };
        let event = AuditEvent {
            request_id: self.caller.request_id,
            principal: &self.caller.principal.name,
            operation,
            id: self.id,
            outcome,
            region: issued.map(|i| i.region.as_str()),
            version,
            cache_hit: issued.is_some_and(|i| i.from_cache),
            stale: issued.is_some_and(|i| i.stale),
            created: issued.is_some_and(|i| i.created),
        };
        audit.record(&event).await.map_err(|e| {
            tracing::error!(error = %e, operation, id = self.id, "cannot write the audit log");
            ApiError::Internal(match issued {
                Some(_) => "the audit log cannot be written; no key was handed out".into(),
                None => "the audit log cannot be written; the server log has the details".into(),
            })
        })
    }
}
