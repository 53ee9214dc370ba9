//! Access to the key operations, whatever the transport. [`admit`] turns a request's
//! credentials into a [`Caller`] (authentication, the principal's rate limit, the rejection
//! metric); each operation of [`KeyOperations`] takes that `Caller`, checks its policy, runs
//! the core call, writes the audit line (fail-closed: a key leaves only once its release is on
//! record) and records the request metrics. The HTTP routes, the gRPC service and the
//! `rkms-server key` commands only parse, call this, and render, so a rule is written once.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use rkms_core::{
    IssuedKey, KeyId, KeyInfo, KeyListing, KeyService, KeyState, ServiceError, ID_PUNCTUATION,
    MAX_ID_LEN,
};

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use rkms_core::telemetry::{with_series, SeriesCache};

use crate::audit::{AuditEvent, AuditLog};
use crate::auth::{Authenticator, Credentials, Principal};
use crate::error::ApiError;
use crate::live::LiveService;
use crate::telemetry::{AUDIT_WRITE_FAILURES, KEYS_CREATED, REJECTIONS, REQUESTS, REQUEST_SECONDS};

/// What the front ends share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The protocol, as the configuration in force sets it up.
    pub service: Arc<LiveService>,
    /// Renders the process's metrics for `/metrics`; `None` serves no metrics.
    pub metrics: Option<PrometheusHandle>,
    /// Where every key operation is recorded; `None` records nothing (tests of the API alone).
    pub audit: Option<Arc<AuditLog>>,
    /// Who may call.
    pub auth: Arc<Authenticator>,
}

impl AppState {
    /// The key operations over this state's service and audit log.
    pub fn operations(&self) -> KeyOperations {
        KeyOperations {
            service: self.service.current(),
            audit: self.audit.clone(),
        }
    }
}

/// Most ids one listing call answers.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Ids a listing answers when the request names no limit.
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// The id a request names (400 when it is not a valid id).
pub fn key_id(text: &str) -> Result<KeyId, ApiError> {
    KeyId::parse(text).map_err(|e| ApiError::BadRequest(format!("invalid id: {e}")))
}

/// The version a request names: from 1 (400 otherwise; front ends pass 0 for a number they
/// cannot read).
pub fn key_version(number: u32) -> Result<u32, ApiError> {
    if number == 0 {
        return Err(ApiError::BadRequest(
            "version must be a whole number from 1".into(),
        ));
    }
    Ok(number)
}

/// The id prefix a listing names: what ids may hold, at most as long as an id.
pub fn list_prefix(text: &str) -> Result<&str, ApiError> {
    if text.len() > MAX_ID_LEN
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ID_PUNCTUATION.contains(c))
    {
        return Err(ApiError::BadRequest(format!(
            "prefix must be at most {MAX_ID_LEN} bytes of the characters ids may hold"
        )));
    }
    Ok(text)
}

/// The page size a listing names: 1 to [`MAX_LIST_LIMIT`] (front ends pass 0 for a number
/// they cannot read).
pub fn list_limit(number: usize) -> Result<usize, ApiError> {
    if !(1..=MAX_LIST_LIMIT).contains(&number) {
        return Err(ApiError::BadRequest(format!(
            "limit must be a whole number from 1 to {MAX_LIST_LIMIT}"
        )));
    }
    Ok(number)
}

/// The service and the audit log every operation goes through.
#[derive(Debug, Clone)]
pub struct KeyOperations {
    /// The protocol.
    pub service: Arc<KeyService>,
    /// Where every operation is recorded; `None` records nothing (tests of the API alone).
    pub audit: Option<Arc<AuditLog>>,
}

/// The front end a request came through, as audit lines and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The HTTP API.
    Http,
    /// The gRPC API.
    Grpc,
    /// `rkms-server key ...` at the server's machine.
    Command,
}

impl Transport {
    /// Its name in audit lines and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::Command => "command",
        }
    }
}

/// An admitted request: who asks, through what, and the request's id for the audit line.
/// Only [`admit`] and [`Caller::local_admin`] make one, so holding one proves that the
/// credentials were checked and the rate limit taken.
#[derive(Debug, Clone)]
pub struct Caller {
    principal: Arc<Principal>,
    request_id: RequestId,
    transport: Transport,
}

/// A request's id: 16 random hexadecimal digits, held inline.
#[derive(Debug, Clone, Copy)]
struct RequestId([u8; 16]);

impl RequestId {
    fn random() -> Self {
        let mut digits = [0; 16];
        hex::encode_to_slice(rand::random::<u64>().to_be_bytes(), &mut digits)
            .expect("two digits a byte");
        Self(digits)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hexadecimal digits are ASCII")
    }
}

impl Caller {
    /// The operator at the server's machine, for `rkms-server key ...`: whoever can read the
    /// configuration and the store's credentials may do anything anyway.
    pub fn local_admin() -> Self {
        Self::new(Arc::new(Principal::local_admin()), Transport::Command)
    }

    fn new(principal: Arc<Principal>, transport: Transport) -> Self {
        Self {
            principal,
            request_id: RequestId::random(),
            transport,
        }
    }

    /// The authenticated principal.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Per-request id, sent back to the client and written in the audit line.
    pub fn request_id(&self) -> &str {
        self.request_id.as_str()
    }
}

/// Finds the request's principal (401 without one; 429 for an address that failed too
/// often; 403 for an anonymous request to a host not allowed) and takes a request from its
/// rate limit (429 when spent). Failures are logged by the authenticator, in counts.
pub fn admit(
    auth: &Authenticator,
    credentials: &Credentials<'_>,
    transport: Transport,
) -> Result<Caller, ApiError> {
    let principal = auth.authenticate(credentials).map_err(|e| {
        metrics::counter!(REJECTIONS, "reason" => e.reason()).increment(1);
        ApiError::from(e)
    })?;
    principal.admit().map_err(|wait| {
        metrics::counter!(REJECTIONS, "reason" => "rate_limited").increment(1);
        ApiError::TooManyRequests(wait)
    })?;
    Ok(Caller::new(principal, transport))
}

/// Runs one operation, counting it by outcome and timing it.
async fn measured<T>(
    caller: &Caller,
    operation: &'static str,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let started = Instant::now();
    let result = work.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.error_type(),
    };
    let transport = caller.transport.as_str();
    thread_local! {
        static SERIES: SeriesCache<(&'static str, &'static str, &'static str), (Counter, Histogram)> =
            RefCell::default();
    }
    with_series(
        &SERIES,
        (operation, transport, outcome),
        || {
            (
                metrics::counter!(REQUESTS, "operation" => operation, "transport" => transport, "outcome" => outcome),
                metrics::histogram!(REQUEST_SECONDS, "operation" => operation, "transport" => transport),
            )
        },
        |(requests, seconds)| {
            requests.increment(1);
            seconds.record(started.elapsed());
        },
    );
    result
}

impl KeyOperations {
    /// The key of `id`: version `version`, or the current one, created on first use when the
    /// caller may create it. A version read never creates.
    pub async fn get_key(
        &self,
        caller: &Caller,
        id: &KeyId,
        version: Option<u32>,
    ) -> Result<IssuedKey, ApiError> {
        measured(caller, "get_key", async {
            let audit = self.audit(caller, id);
            let allowed = caller.principal.policy.allowed(id);
            if let Some(version) = version {
                if !allowed.get {
                    return Err(audit.denied("get", "read keys of").await);
                }
                // Boxed, like every KMS path: a cached current key should not carry its size.
                let issued = audit
                    .outcome("get", Box::pin(self.service.get_version(id, version)).await)
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
        })
        .await
    }

    /// Makes a new current version of `id`'s key; returns its number.
    pub async fn rotate(&self, caller: &Caller, id: &KeyId) -> Result<u32, ApiError> {
        measured(caller, "rotate", async {
            let audit = self.audit(caller, id);
            if !caller.principal.policy.allowed(id).rotate {
                return Err(audit.denied("rotate", "rotate").await);
            }
            let version = audit
                .outcome("rotate", self.service.rotate(id).await)
                .await?;
            audit.ok("rotate", Some(version)).await?;
            Ok(version)
        })
        .await
    }

    /// Schedules `id`'s deletion; returns its pending state.
    pub async fn delete(&self, caller: &Caller, id: &KeyId) -> Result<KeyState, ApiError> {
        measured(caller, "delete", async {
            let audit = self.audit(caller, id);
            if !caller.principal.policy.allowed(id).delete {
                return Err(audit.denied("delete", "delete").await);
            }
            let state = audit
                .outcome("delete", self.service.schedule_deletion(id).await)
                .await?;
            audit.ok("delete", None).await?;
            Ok(state)
        })
        .await
    }

    /// Cancels `id`'s scheduled deletion; returns its state, active.
    pub async fn restore(&self, caller: &Caller, id: &KeyId) -> Result<KeyState, ApiError> {
        measured(caller, "restore", async {
            let audit = self.audit(caller, id);
            if !caller.principal.policy.allowed(id).restore {
                return Err(audit.denied("restore", "restore").await);
            }
            let state = audit
                .outcome("restore", self.service.restore(id).await)
                .await?;
            audit.ok("restore", None).await?;
            Ok(state)
        })
        .await
    }

    /// `id`'s metadata, without key material.
    pub async fn describe(&self, caller: &Caller, id: &KeyId) -> Result<KeyInfo, ApiError> {
        measured(caller, "describe", async {
            let audit = self.audit(caller, id);
            if !caller.principal.policy.allowed(id).describe {
                return Err(audit.denied("describe", "describe").await);
            }
            let info = audit
                .outcome("describe", self.service.describe(id).await)
                .await?;
            audit.ok("describe", None).await?;
            Ok(info)
        })
        .await
    }

    /// Up to `limit` ids starting with `prefix` that the caller may list, going on from
    /// `after` (a cursor sealed for this caller and prefix: it names no id). The audit line
    /// carries the prefix as its id.
    pub async fn list(
        &self,
        caller: &Caller,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyListing, ApiError> {
        measured(caller, "list", async {
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
        })
        .await
    }

    fn audit<'a>(&'a self, caller: &'a Caller, id: &'a KeyId) -> Audit<'a> {
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
    caller: &'a Caller,
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
            request_id: self.caller.request_id(),
            transport: self.caller.transport.as_str(),
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
            metrics::counter!(AUDIT_WRITE_FAILURES).increment(1);
            tracing::error!(error = %e, operation, id = self.id, "cannot write the audit log");
            ApiError::Internal(match issued {
                Some(_) => "the audit log cannot be written; no key was handed out".into(),
                None => "the audit log cannot be written; the server log has the details".into(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_16_lowercase_hex_digits_and_differ() {
        let ids: Vec<String> = (0..64)
            .map(|_| RequestId::random().as_str().to_owned())
            .collect();
        for id in &ids {
            assert_eq!(id.len(), 16);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Every digit place is used: a shift off by one would leave some always 0.
        for place in 0..16 {
            assert!(
                ids.iter().any(|id| id.as_bytes()[place] != b'0'),
                "place {place}"
            );
        }
    }
}
