//! Authentication: who is calling (a bearer token, a client certificate, or nobody, when an
//! anonymous principal is configured), and each principal's rate limit. [`policy`] decides
//! what an authenticated principal may do.

pub mod policy;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::HeaderValue;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine as _;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::tls::ClientCertificate;
pub use policy::{IdPattern, Operations, Policy, Rule};

/// Prefix of the tokens [`new_token`] makes, so a leaked one is easy to recognise and search for.
pub const TOKEN_PREFIX: &str = "rkms_";

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
        self.0.iter().map(|b| format!("{b:02x}")).collect()
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
    /// Client certificate names (subject CN, DNS or URI SAN) that authenticate it.
    pub certificate_names: Vec<String>,
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
}

/// Maps credentials to principals; the principals can be replaced while serving.
#[derive(Debug)]
pub struct Authenticator {
    tables: RwLock<Arc<Tables>>,
}

impl Authenticator {
    /// An authenticator for `specs`, which the configuration checked (unique names, tokens and
    /// certificate names, at most one anonymous principal).
    pub fn new(specs: &[PrincipalSpec]) -> Self {
        Self {
            tables: RwLock::new(Arc::new(Tables::new(specs))),
        }
    }

    /// Puts `specs` in force for every later request (rate limits start afresh); requests
    /// already authenticated keep their principal.
    pub fn replace(&self, specs: &[PrincipalSpec]) {
        let tables = Arc::new(Tables::new(specs));
        *self.tables.write().unwrap_or_else(|e| e.into_inner()) = tables;
    }

    /// Who is calling. A token, when sent, decides alone (a wrong one is refused even with a
    /// good certificate); then a client certificate; then the anonymous principal.
    pub fn authenticate(
        &self,
        authorization: Option<&HeaderValue>,
        certificate: Option<&ClientCertificate>,
    ) -> Result<Arc<Principal>, AuthError> {
        let tables = Arc::clone(&self.tables.read().unwrap_or_else(|e| e.into_inner()));
        tables.authenticate(authorization, certificate)
    }
}

/// The principals in force and their lookup tables.
#[derive(Debug)]
struct Tables {
    principals: Vec<Arc<Principal>>,
    tokens: Vec<(TokenHash, usize)>,
    certificates: HashMap<String, usize>,
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

    #[test]
    fn tokens_certificates_and_anonymous_map_to_principals() {
        let token = new_token();
        let authenticator = Authenticator::new(&[
            PrincipalSpec {
                tokens: vec![TokenHash::of(&token)],
                ..spec("orders")
            },
            PrincipalSpec {
                certificate_names: vec!["billing.internal".into()],
                ..spec("billing")
            },
        ]);
        let name = |r: Result<Arc<Principal>, AuthError>| r.map(|p| p.name.clone());
        assert_eq!(
            name(authenticator.authenticate(Some(&bearer(&token)), None)).unwrap(),
            "orders"
        );
        assert!(matches!(
            authenticator.authenticate(Some(&bearer("rkms_wrong")), None),
            Err(AuthError::UnknownToken)
        ));
        assert!(matches!(
            authenticator.authenticate(Some(&HeaderValue::from_static("Basic eDp5")), None),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            authenticator.authenticate(None, None),
            Err(AuthError::Missing)
        ));
        let billing = ClientCertificate::from_names(vec!["CN".into(), "billing.internal".into()]);
        assert_eq!(
            name(authenticator.authenticate(None, Some(&billing))).unwrap(),
            "billing"
        );
        let stranger = ClientCertificate::from_names(vec!["someone.else".into()]);
        assert!(matches!(
            authenticator.authenticate(None, Some(&stranger)),
            Err(AuthError::UnknownCertificate)
        ));
        // A wrong token is refused even alongside a good certificate.
        assert!(authenticator
            .authenticate(Some(&bearer("rkms_wrong")), Some(&billing))
            .is_err());
    }

    #[test]
    fn anonymous_is_served_only_when_configured() {
        let authenticator = Authenticator::new(&[PrincipalSpec {
            anonymous: true,
            ..spec("dev")
        }]);
        assert_eq!(authenticator.authenticate(None, None).unwrap().name, "dev");
        assert!(authenticator
            .authenticate(Some(&bearer("rkms_x")), None)
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
            .authenticate(Some(&bearer("rkms_first")), None)
            .unwrap();
        authenticator.replace(&[PrincipalSpec {
            tokens: vec![TokenHash::of("rkms_second")],
            ..spec("app")
        }]);
        assert!(authenticator
            .authenticate(Some(&bearer("rkms_first")), None)
            .is_err());
        assert!(authenticator
            .authenticate(Some(&bearer("rkms_second")), None)
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
        let principal = authenticator.authenticate(None, None).unwrap();
        assert!(principal.admit().is_ok());
        assert!(principal.admit().is_ok());
        let wait = principal.admit().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }
}
