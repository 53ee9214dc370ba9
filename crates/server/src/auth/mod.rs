//! Authentication: who is calling (a bearer token, a client certificate, or nobody, when an
//! anonymous principal is configured), and each principal's rate limit. [`policy`] decides
//! what an authenticated principal may do; `failures` budgets and reports failed
//! authentications per client address; `hosts` says where anonymous requests may be sent.

mod failures;
mod hosts;
pub mod policy;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine as _;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::HeaderValue;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tracing::warn;
use zeroize::Zeroizing;

use crate::tls::Peer;
use crate::tls::{CertificateName, ClientCertificate};
use failures::{Client, Failures, Report, REPORT_INTERVAL};
pub use hosts::AllowedHosts;
pub use policy::{IdPattern, Operations, Policy, Rule};

/// Prefix of the tokens [`new_token`] makes, so a leaked one is easy to recognise and search for.
pub const TOKEN_PREFIX: &str = "rkms_";

/// The shortest token `rkms-server token hash` accepts. Tokens are hashed with plain SHA-256,
/// which is safe only for tokens nobody can guess; [`new_token`] makes 48-character ones.
pub const MIN_TOKEN_LEN: usize = 32;

/// Refuses a token chosen by hand that is too short to resist guessing.
pub fn check_chosen_token(token: &str) -> Result<(), String> {
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token is shorter than {MIN_TOKEN_LEN} characters, short enough to guess (online, \
             or offline from its hash); make one with `rkms-server token new`"
        ));
    }
    Ok(())
}

/// SHA-256 of a bearer token: the configuration holds this, never the token. Tokens are 256
/// random bits, so a plain hash cannot be reversed by guessing; no slow password hash is needed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of `token`.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Reads 64 hexadecimal digits.
    pub fn parse_hex(text: &str) -> Result<Self, String> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err("a token hash is 64 hexadecimal digits (SHA-256)".into());
        }
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Self(hash))
    }

    /// 64 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Compares in constant time, so response timing tells nothing about stored hashes.
    fn matches(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.to_hex())
    }
}

/// A new random bearer token (256 bits) for `rkms-server token new`.
pub fn new_token() -> Zeroizing<String> {
    let bytes = Zeroizing::new(rand::random::<[u8; 32]>());
    Zeroizing::new(format!("{TOKEN_PREFIX}{}", BASE64URL.encode(*bytes)))
}

/// Requests per second a principal may make to one server process, with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate.
    pub per_second: NonZeroU32,
    /// Requests allowed at once after a quiet spell.
    pub burst: NonZeroU32,
}

/// A principal as configured and checked.
#[derive(Debug, Clone)]
pub struct PrincipalSpec {
    /// The name audit lines and logs carry.
    pub name: String,
    /// Hashes of the bearer tokens that authenticate it (several allow rotation).
    pub tokens: Vec<TokenHash>,
    /// Client certificate names, by kind, that authenticate it.
    pub certificate_names: Vec<CertificateName>,
    /// Requests without credentials are this principal's.
    pub anonymous: bool,
    /// May read `/metrics`.
    pub metrics: bool,
    /// What it may do with which ids.
    pub policy: Policy,
    /// `None`: no rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Keys it may create, apart from its request rate: each create costs KMS calls in every
    /// region and room in the shared cache. `None`: no limit.
    pub create_rate: Option<RateLimit>,
}

/// The principal name of [`Principal::local_admin`] in audit lines.
pub const LOCAL_ADMIN: &str = "local-admin";

/// An authenticated caller.
pub struct Principal {
    /// Its configured name.
    pub name: String,
    /// What it may do with which ids.
    pub policy: Policy,
    /// May read `/metrics`.
    pub metrics: bool,
    limiter: Option<DefaultDirectRateLimiter>,
    create_limiter: Option<DefaultDirectRateLimiter>,
}

impl Principal {
    /// The operator at the machine, for `rkms-server key ...`: every operation on every id, no
    /// rate limit. Never reachable over the network.
    pub fn local_admin() -> Self {
        Self {
            name: LOCAL_ADMIN.to_owned(),
            policy: Policy::new(vec![Rule {
                ids: vec![IdPattern::parse("*").expect("a valid pattern")],
                operations: Operations::all(),
            }]),
            metrics: false,
            limiter: None,
            create_limiter: None,
        }
    }

    /// Takes one request from the principal's allowance; `Err` is how long until the next.
    pub fn admit(&self) -> Result<(), Duration> {
        take(self.limiter.as_ref())
    }

    /// Whether the principal's creates are limited apart from its requests.
    pub fn limits_creates(&self) -> bool {
        self.create_limiter.is_some()
    }

    /// Takes one create from the principal's allowance; `Err` is how long until the next.
    pub fn admit_create(&self) -> Result<(), Duration> {
        take(self.create_limiter.as_ref())
    }
}

fn limiter(rate: Option<RateLimit>) -> Option<DefaultDirectRateLimiter> {
    rate.map(|r| RateLimiter::direct(Quota::per_second(r.per_second).allow_burst(r.burst)))
}

fn take(limiter: Option<&DefaultDirectRateLimiter>) -> Result<(), Duration> {
    match limiter {
        None => Ok(()),
        Some(limiter) => limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("name", &self.name)
            .field("metrics", &self.metrics)
            .field("rate_limited", &self.limiter.is_some())
            .field("create_limited", &self.create_limiter.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a request is not authenticated (a 401). Messages never echo what the client sent.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Neither a token nor a client certificate, and no anonymous principal.
    #[error(
        "authentication required: send `Authorization: Bearer <token>` or a client certificate"
    )]
    Missing,
    /// An `Authorization` header that is not a bearer token.
    #[error("the Authorization header must be `Bearer <token>`")]
    Malformed,
    /// A token no principal has.
    #[error("the bearer token is not valid")]
    UnknownToken,
    /// A trusted certificate whose names map to no principal, or to more than one.
    #[error("the client certificate does not name exactly one configured principal")]
    UnknownCertificate,
    /// The client's address spent its failed-authentication budget; retry after this long.
    #[error("too many failed authentications from this client address")]
    TooManyFailures(Duration),
    /// A request without credentials addressed to a host that is not allowed.
    #[error(
        "requests without credentials are answered only when addressed to localhost, a loopback \
         address or a host in [server] allowed_hosts (a guard against DNS rebinding)"
    )]
    HostNotAllowed,
}

impl AuthError {
    /// The label of `rkms_http_rejections_total` that counts it, also the reason logged.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing | Self::Malformed | Self::UnknownToken | Self::UnknownCertificate => {
                "unauthenticated"
            }
            Self::TooManyFailures(_) => "too_many_failures",
            Self::HostNotAllowed => "host_not_allowed",
        }
    }

    fn detail(&self) -> &'static str {
        match self {
            Self::Missing => "no credentials",
            Self::Malformed => "malformed Authorization header",
            Self::UnknownToken => "unknown token",
            Self::UnknownCertificate => "certificate names no principal",
            Self::TooManyFailures(_) | Self::HostNotAllowed => self.reason(),
        }
    }
}

/// What a request presents to be authenticated.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The `Authorization` header.
    pub authorization: Option<&'a HeaderValue>,
    /// The client certificate the TLS handshake verified.
    pub certificate: Option<&'a ClientCertificate>,
    /// The client's address, which failed authentications are budgeted by.
    pub client: Option<IpAddr>,
    /// The host the request is addressed to (URI authority or `Host`, port included).
    pub host: Option<&'a [u8]>,
}

impl<'a> Credentials<'a> {
    /// What `request` presents, whichever front end it came to: the `Authorization` header
    /// (gRPC's `authorization` metadata), the client certificate and address of its
    /// connection, and the host it is addressed to.
    pub fn of<B>(request: &'a http::Request<B>) -> Self {
        let peer = request.extensions().get::<Peer>();
        // An absolute-form request line (or HTTP/2's `:authority`) names the host itself;
        // `Host` is then ignored (RFC 9112, RFC 9113).
        let host = match request.uri().authority() {
            Some(authority) => Some(authority.as_str().as_bytes()),
            None => request
                .headers()
                .get(http::header::HOST)
                .map(HeaderValue::as_bytes),
        };
        Self {
            authorization: request.headers().get(http::header::AUTHORIZATION),
            certificate: peer.and_then(|p| p.certificate.as_deref()),
            client: peer.map(|p| p.remote.ip()),
            host,
        }
    }
}

/// Maps credentials to principals; the principals, the failure budget and the allowed hosts
/// can be replaced while serving.
#[derive(Debug)]
pub struct Authenticator {
    in_force: RwLock<Arc<InForce>>,
}

/// What an [`Authenticator`] decides by, replaced whole by a reload.
#[derive(Debug)]
struct InForce {
    tables: Tables,
    /// Kept across a reload that leaves the budget as it was, so that reloading does not
    /// forget who has been guessing.
    failures: Arc<Failures>,
    budget: Option<NonZeroU32>,
    hosts: AllowedHosts,
}

impl Authenticator {
    /// An authenticator for `specs`, which the configuration checked (unique names, tokens and
    /// certificate names, at most one anonymous principal). Failed authentications are
    /// reported but not limited; anonymous requests must name a loopback host.
    pub fn new(specs: &[PrincipalSpec]) -> Self {
        Self {
            in_force: RwLock::new(Arc::new(InForce {
                tables: Tables::new(specs),
                failures: Arc::new(Failures::new(None)),
                budget: None,
                hosts: AllowedHosts::default(),
            })),
        }
    }

    fn in_force(&self) -> Arc<InForce> {
        Arc::clone(&self.in_force.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Changes what is in force, given what was; see [`Authenticator::reconfigure`].
    fn change(&self, next: impl FnOnce(&InForce) -> InForce) {
        let mut in_force = self.in_force.write().unwrap_or_else(|e| e.into_inner());
        *in_force = Arc::new(next(&in_force));
    }

    /// Refuses a client address's requests, before reading their credentials, once it has
    /// failed to authenticate `per_minute` times in a minute (`None`: never).
    #[must_use]
    pub fn failure_budget(self, per_minute: Option<NonZeroU32>) -> Self {
        self.change(|was| InForce {
            tables: was.tables.clone(),
            failures: Arc::new(Failures::new(per_minute)),
            budget: per_minute,
            hosts: was.hosts.clone(),
        });
        self
    }

    /// The hosts anonymous requests may be addressed to besides loopback.
    #[must_use]
    pub fn allowed_hosts(self, hosts: AllowedHosts) -> Self {
        self.change(|was| InForce {
            tables: was.tables.clone(),
            failures: Arc::clone(&was.failures),
            budget: was.budget,
            hosts,
        });
        self
    }

    /// Puts `specs` in force for every later request (rate limits start afresh); requests
    /// already authenticated keep their principal.
    pub fn replace(&self, specs: &[PrincipalSpec]) {
        self.change(|was| InForce {
            tables: Tables::new(specs),
            failures: Arc::clone(&was.failures),
            budget: was.budget,
            hosts: was.hosts.clone(),
        });
    }

    /// Puts a reloaded configuration in force: `specs`, the failure budget (the failures
    /// counted so far are kept while it is unchanged) and the allowed hosts.
    pub fn reconfigure(
        &self,
        specs: &[PrincipalSpec],
        per_minute: Option<NonZeroU32>,
        hosts: AllowedHosts,
    ) {
        self.change(|was| InForce {
            tables: Tables::new(specs),
            failures: if was.budget == per_minute {
                Arc::clone(&was.failures)
            } else {
                Arc::new(Failures::new(per_minute))
            },
            budget: per_minute,
            hosts,
        });
    }

    /// Who is calling. A client address past its failure budget is refused first. Then a
    /// token, when sent, decides alone (a wrong one is refused even with a good certificate);
    /// then a client certificate; then the anonymous principal, for requests addressed to an
    /// allowed host.
    pub fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Arc<Principal>, AuthError> {
        let now = Instant::now();
        let client = Client::of(credentials.client);
        let in_force = self.in_force();
        if let Err(refused) = in_force.failures.check(client, now) {
            if let Some(report) = &refused.report {
                log_failures(report);
            }
            return Err(AuthError::TooManyFailures(refused.wait));
        }
        let found = in_force
            .tables
            .authenticate(credentials.authorization, credentials.certificate);
        let anonymous = credentials.authorization.is_none() && credentials.certificate.is_none();
        match found {
            Ok(_) if anonymous && !in_force.hosts.allows(credentials.host) => {
                Err(AuthError::HostNotAllowed)
            }
            Ok(principal) => Ok(principal),
            Err(error) => {
                if let Some(report) = in_force.failures.fail(client, error.detail(), now) {
                    log_failures(&report);
                }
                Err(error)
            }
        }
    }

    /// Logs the failure counts that waited for their minute, every few seconds, and forgets
    /// quiet clients; runs until aborted.
    pub async fn report_failures(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(REPORT_INTERVAL / 6);
        loop {
            ticks.tick().await;
            self.in_force()
                .failures
                .sweep(Instant::now())
                .iter()
                .for_each(log_failures);
        }
    }
}

fn log_failures(report: &Report) {
    warn!(
        client = %report.client,
        failures = report.failures,
        refused = report.refused,
        last_reason = report.reason,
        "failed authentications from this client since its last report (at most one a minute)"
    );
}

/// The principals in force and their lookup tables.
#[derive(Debug, Clone)]
struct Tables {
    principals: Vec<Arc<Principal>>,
    tokens: Vec<(TokenHash, usize)>,
    certificates: HashMap<CertificateName, usize>,
    anonymous: Option<usize>,
}

impl Tables {
    fn new(specs: &[PrincipalSpec]) -> Self {
        let mut tables = Self {
            principals: Vec::with_capacity(specs.len()),
            tokens: Vec::new(),
            certificates: HashMap::new(),
            anonymous: None,
        };
        for (index, spec) in specs.iter().enumerate() {
            tables.principals.push(Arc::new(Principal {
                name: spec.name.clone(),
                policy: spec.policy.clone(),
                metrics: spec.metrics,
                limiter: limiter(spec.rate_limit),
                create_limiter: limiter(spec.create_rate),
            }));
            tables
                .tokens
                .extend(spec.tokens.iter().map(|hash| (*hash, index)));
            tables.certificates.extend(
                spec.certificate_names
                    .iter()
                    .map(|name| (name.clone(), index)),
            );
            if spec.anonymous {
                tables.anonymous = Some(index);
            }
        }
        tables
    }

    fn authenticate(
        &self,
        authorization: Option<&HeaderValue>,
        certificate: Option<&ClientCertificate>,
    ) -> Result<Arc<Principal>, AuthError> {
        if let Some(header) = authorization {
            let token = header
                .to_str()
                .ok()
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or(AuthError::Malformed)?;
            let presented = TokenHash::of(token);
            // Every hash is compared, so timing does not reveal which one matched.
            let found = self.tokens.iter().fold(None, |found, (hash, index)| {
                if hash.matches(&presented) {
                    Some(*index)
                } else {
                    found
                }
            });
            return found
                .map(|i| Arc::clone(&self.principals[i]))
                .ok_or(AuthError::UnknownToken);
        }
        if let Some(certificate) = certificate {
            let mut matched = certificate
                .names()
                .iter()
                .filter_map(|name| self.certificates.get(name).copied());
            let first = matched.next().ok_or(AuthError::UnknownCertificate)?;
            if matched.any(|other| other != first) {
                return Err(AuthError::UnknownCertificate);
            }
            return Ok(Arc::clone(&self.principals[first]));
        }
        self.anonymous
            .map(|i| Arc::clone(&self.principals[i]))
            .ok_or(AuthError::Missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> PrincipalSpec {
        PrincipalSpec {
            name: name.into(),
            tokens: Vec::new(),
            certificate_names: Vec::new(),
            anonymous: false,
            metrics: false,
            policy: Policy::default(),
            rate_limit: None,
            create_rate: None,
        }
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    fn with_token(header: &HeaderValue) -> Credentials<'_> {
        Credentials {
            authorization: Some(header),
            ..Credentials::default()
        }
    }

    fn with_certificate(certificate: &ClientCertificate) -> Credentials<'_> {
        Credentials {
            certificate: Some(certificate),
            ..Credentials::default()
        }
    }

    fn dns(name: &str) -> CertificateName {
        CertificateName::Dns(name.into())
    }

    #[test]
    fn tokens_certificates_and_anonymous_map_to_principals() {
        let token = new_token();
        let authenticator = Authenticator::new(&[
            PrincipalSpec {
                tokens: vec![TokenHash::of(&token)],
                ..spec("orders")
            },
            PrincipalSpec {
                certificate_names: vec![dns("billing.internal")],
                ..spec("billing")
            },
        ]);
        let name = |r: Result<Arc<Principal>, AuthError>| r.map(|p| p.name.clone());
        assert_eq!(
            name(authenticator.authenticate(&with_token(&bearer(&token)))).unwrap(),
            "orders"
        );
        assert!(matches!(
            authenticator.authenticate(&with_token(&bearer("rkms_wrong"))),
            Err(AuthError::UnknownToken)
        ));
        assert!(matches!(
            authenticator.authenticate(&with_token(&HeaderValue::from_static("Basic eDp5"))),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            authenticator.authenticate(&Credentials::default()),
            Err(AuthError::Missing)
        ));
        let billing = ClientCertificate::from_names(vec![dns("billing.internal")]);
        assert_eq!(
            name(authenticator.authenticate(&with_certificate(&billing))).unwrap(),
            "billing"
        );
        let stranger = ClientCertificate::from_names(vec![dns("someone.else")]);
        assert!(matches!(
            authenticator.authenticate(&with_certificate(&stranger)),
            Err(AuthError::UnknownCertificate)
        ));
        // A wrong token is refused even alongside a good certificate.
        let wrong = bearer("rkms_wrong");
        assert!(authenticator
            .authenticate(&Credentials {
                certificate: Some(&billing),
                ..with_token(&wrong)
            })
            .is_err());
        // A common name matches only a `cn:` name, a DNS name only a `dns:` name.
        let common_name = ClientCertificate::from_names(vec![CertificateName::CommonName(
            "billing.internal".into(),
        )]);
        assert!(matches!(
            authenticator.authenticate(&with_certificate(&common_name)),
            Err(AuthError::UnknownCertificate)
        ));
    }

    #[test]
    fn anonymous_is_served_only_when_configured() {
        let authenticator = Authenticator::new(&[PrincipalSpec {
            anonymous: true,
            ..spec("dev")
        }]);
        assert_eq!(
            authenticator
                .authenticate(&Credentials::default())
                .unwrap()
                .name,
            "dev"
        );
        assert!(authenticator
            .authenticate(&with_token(&bearer("rkms_x")))
            .is_err());
    }

    #[test]
    fn replacing_the_principals_takes_effect_at_once() {
        let first = PrincipalSpec {
            tokens: vec![TokenHash::of("rkms_first")],
            ..spec("app")
        };
        let authenticator = Authenticator::new(&[first]);
        let before = authenticator
            .authenticate(&with_token(&bearer("rkms_first")))
            .unwrap();
        authenticator.replace(&[PrincipalSpec {
            tokens: vec![TokenHash::of("rkms_second")],
            ..spec("app")
        }]);
        assert!(authenticator
            .authenticate(&with_token(&bearer("rkms_first")))
            .is_err());
        assert!(authenticator
            .authenticate(&with_token(&bearer("rkms_second")))
            .is_ok());
        assert_eq!(before.name, "app", "a principal handed out stays usable");
    }

    #[test]
    fn token_hashes_round_trip_through_hex() {
        let hash = TokenHash::of("rkms_example");
        assert_eq!(TokenHash::parse_hex(&hash.to_hex()).unwrap(), hash);
        assert_eq!(
            TokenHash::parse_hex(&hash.to_hex().to_uppercase()).unwrap(),
            hash
        );
        assert!(TokenHash::parse_hex("abc").is_err());
        assert!(TokenHash::parse_hex(&"g".repeat(64)).is_err());
        assert!(new_token().starts_with(TOKEN_PREFIX));
        assert_ne!(*new_token(), *new_token());
    }

    #[test]
    fn the_rate_limit_refuses_past_the_burst_and_says_how_long_to_wait() {
        let authenticator = Authenticator::new(&[PrincipalSpec {
            anonymous: true,
            rate_limit: Some(RateLimit {
                per_second: NonZeroU32::new(1).unwrap(),
                burst: NonZeroU32::new(2).unwrap(),
            }),
            ..spec("dev")
        }]);
        let principal = authenticator.authenticate(&Credentials::default()).unwrap();
        assert!(principal.admit().is_ok());
        assert!(principal.admit().is_ok());
        let wait = principal.admit().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }

    #[test]
    fn anonymous_requests_must_name_an_allowed_host_and_credentials_need_not() {
        let token = new_token();
        let authenticator = Authenticator::new(&[
            PrincipalSpec {
                anonymous: true,
                ..spec("dev")
            },
            PrincipalSpec {
                tokens: vec![TokenHash::of(&token)],
                ..spec("app")
            },
        ]);
        let addressed = |host: &'static str| Credentials {
            host: Some(host.as_bytes()),
            ..Credentials::default()
        };
        assert!(authenticator
            .authenticate(&addressed("localhost:8080"))
            .is_ok());
        assert!(matches!(
            authenticator.authenticate(&addressed("attacker.example:8080")),
            Err(AuthError::HostNotAllowed)
        ));
        // A page that rebinds a name cannot present the token.
        let header = bearer(&token);
        let with_token = Credentials {
            host: Some(b"rkms.example.com"),
            ..with_token(&header)
        };
        assert_eq!(authenticator.authenticate(&with_token).unwrap().name, "app");
        let configured = Authenticator::new(&[PrincipalSpec {
            anonymous: true,
            ..spec("dev")
        }])
        .allowed_hosts(AllowedHosts::parse(&["rkms.internal".into()]).unwrap());
        assert!(configured
            .authenticate(&addressed("rkms.internal:80"))
            .is_ok());
    }

    #[test]
    fn a_client_past_its_failure_budget_is_refused_even_with_the_right_token() {
        let token = new_token();
        let authenticator = Authenticator::new(&[PrincipalSpec {
            tokens: vec![TokenHash::of(&token)],
            ..spec("app")
        }])
        .failure_budget(NonZeroU32::new(2));
        let guesser = Some("192.0.2.1".parse().unwrap());
        let (wrong, right) = (bearer("rkms_guess"), bearer(&token));
        let from = |client, header| Credentials {
            client,
            ..with_token(header)
        };
        for _ in 0..2 {
            assert!(matches!(
                authenticator.authenticate(&from(guesser, &wrong)),
                Err(AuthError::UnknownToken)
            ));
        }
        let Err(AuthError::TooManyFailures(wait)) =
            authenticator.authenticate(&from(guesser, &right))
        else {
            panic!("the right token from a spent address was looked at");
        };
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        let other = Some("192.0.2.2".parse().unwrap());
        assert_eq!(
            authenticator
                .authenticate(&from(other, &right))
                .unwrap()
                .name,
            "app"
        );
    }

    #[test]
    fn chosen_tokens_shorter_than_the_minimum_are_refused() {
        assert!(check_chosen_token("rkms_password123").is_err());
        assert!(check_chosen_token(&"x".repeat(MIN_TOKEN_LEN - 1)).is_err());
        assert!(check_chosen_token(&"x".repeat(MIN_TOKEN_LEN)).is_ok());
        assert!(check_chosen_token(&new_token()).is_ok());
    }
}
