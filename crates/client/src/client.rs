//! The client: servers, retries, credentials, the cache, and one method per operation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand::Rng as _;
use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind};
use crate::model::{Key, KeyAnswer, KeyInfo, KeyListing, KeyState, StateAnswer};

/// Longest wait between rounds, and the most of a `Retry-After` that is honoured.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Settings for a [`Client`]. Its `Debug` shows no credential.
pub struct ClientBuilder {
    urls: Vec<String>,
    api_version: String,
    token: Option<Zeroizing<String>>,
    identity_pem: Option<Zeroizing<Vec<u8>>>,
    roots_pem: Vec<Vec<u8>>,
    timeout: Duration,
    connect_timeout: Duration,
    attempts: u32,
    backoff: Duration,
    cache_ttl: Option<Duration>,
    cache_capacity: u64,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("urls", &self.urls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "identity",
                &self.identity_pem.as_ref().map(|_| "<redacted>"),
            )
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Adds a server (`https://host:port`); servers are tried in the order added.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// The API version of the key routes (`v1` by default).
    pub fn api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = version.into();
        self
    }

    /// Sends `token` as `Authorization: Bearer`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Zeroizing::new(token.into()));
        self
    }

    /// Presents a client certificate: `pem` holds the certificate chain and its private key.
    pub fn identity_pem(mut self, pem: Vec<u8>) -> Self {
        self.identity_pem = Some(Zeroizing::new(pem));
        self
    }

    /// Trusts the CA certificate(s) in `pem` besides the built-in roots.
    pub fn root_certificate_pem(mut self, pem: Vec<u8>) -> Self {
        self.roots_pem.push(pem);
        self
    }

    /// The longest one attempt may take (10 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Attempts per call across all servers, the first included (6 by default).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The first wait after every server failed once (100 ms by default); it doubles each
    /// round, with jitter, up to 5 s.
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Keeps keys in memory for `ttl` (at most `capacity` of them), so that a hot key costs
    /// no request. A key leaving the cache is zeroized once no caller holds it.
    pub fn cache(mut self, ttl: Duration, capacity: u64) -> Self {
        self.cache_ttl = Some(ttl);
        self.cache_capacity = capacity;
        self
    }

    /// Checks the settings and builds the client.
    pub fn build(self) -> Result<Client, Error> {
        if self.urls.is_empty() {
            return Err(Error::Config("at least one server URL is needed".into()));
        }
        let servers = self
            .urls
            .iter()
            .map(|url| {
                let base = Url::parse(url.trim_end_matches('/'))
                    .map_err(|e| Error::Config(format!("server URL {url:?}: {e}")))?;
                if !matches!(base.scheme(), "http" | "https") {
                    return Err(Error::Config(format!("server URL {url:?} is not http(s)")));
                }
                Ok(base)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // No redirects: a key answer comes from the server asked, and a token goes nowhere else.
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout);
        for pem in &self.roots_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Config(format!("root certificate: {e}")))?;
            for root in roots {
                http = http.add_root_certificate(root);
            }
        }
        if let Some(pem) = &self.identity_pem {
            let identity = reqwest::Identity::from_pem(pem)
                .map_err(|e| Error::Config(format!("client certificate: {e}")))?;
            http = http.identity(identity);
        }
        let http = http
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let authorization = match &self.token {
            None => None,
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.as_str()))
                    .map_err(|_| Error::Config("the token is not a valid header value".into()))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let cache = self.cache_ttl.map(|ttl| {
            moka::future::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(self.cache_capacity)
                .support_invalidation_closures()
                .build()
        });
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                servers,
                key_path: format!("api/{}/key", self.api_version),
                authorization,
                attempts: self.attempts,
                backoff: self.backoff,
                preferred: AtomicUsize::new(0),
                cache,
            }),
        })
    }
}

/// A client of one RKMS deployment. Cheap to clone; share one per application.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    servers: Vec<Url>,
    /// `api/<version>/key`, joined onto each server's URL.
    key_path: String,
    authorization: Option<HeaderValue>,
    attempts: u32,
    backoff: Duration,
    /// The server that answered last, tried first.
    preferred: AtomicUsize,
    /// Keys by id and version (0: the current version, as `get_key` asked for it).
    cache: Option<moka::future::Cache<(String, u32), Key>>,
}

/// Whether an operation may be sent again after a failure that may have reached a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Repeating it changes nothing (reads, delete, restore).
    Idempotent,
    /// Only when it cannot have been acted on (rotate).
    UnlessSent,
}

/// What one attempt came to.
enum Attempt<T> {
    Done(Result<T, Error>),
    /// Try another server, after at least this long.
    Next(String, Option<Duration>),
}

impl Client {
    /// Starts a client of the servers at `url` (add more with [`ClientBuilder::url`]).
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            urls: Vec::new(),
            api_version: "v1".into(),
            token: None,
            identity_pem: None,
            roots_pem: Vec::new(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            attempts: 6,
            backoff: Duration::from_millis(100),
            cache_ttl: None,
            cache_capacity: 0,
        }
    }

    /// The current version of the key for `id`, made on first use.
    pub async fn get_key(&self, id: &str) -> Result<Key, Error> {
        self.cached(id, 0, &[("id", id)]).await
    }

    /// Version `version` of the key for `id`; never makes one.
    pub async fn get_key_version(&self, id: &str, version: u32) -> Result<Key, Error> {
        if version == 0 {
            return Err(Error::InvalidArgument("key versions start at 1".into()));
        }
        let number = version.to_string();
        self.cached(id, version, &[("id", id), ("version", &number)])
            .await
    }

    /// Makes a new current version of the key for `id`; returns its number.
    pub async fn rotate(&self, id: &str) -> Result<u32, Error> {
        let answer: StateAnswer = self
            .call(Method::POST, "/rotate", &[("id", id)], Retry::UnlessSent)
            .await?;
        self.forget(id).await;
        answer
            .version
            .ok_or_else(|| Error::InvalidResponse("a rotation without its version".into()))
    }

    /// Schedules the deletion of `id`; returns its state (with the deletion time in
    /// [`Client::describe`]).
    pub async fn delete(&self, id: &str) -> Result<KeyState, Error> {
        let answer = self
            .call::<StateAnswer>(Method::DELETE, "", &[("id", id)], Retry::Idempotent)
            .await;
        // Whatever the outcome (a timeout may hide a deletion made), no version of the key
        // is served from this cache any more.
        self.forget_every_version(id);
        Ok(answer?.state)
    }

    /// Cancels the scheduled deletion of `id`.
    pub async fn restore(&self, id: &str) -> Result<KeyState, Error> {
        let answer: StateAnswer = self
            .call(Method::POST, "/restore", &[("id", id)], Retry::Idempotent)
            .await?;
        Ok(answer.state)
    }

    /// The state, versions and regions of `id`; never key material.
    pub async fn describe(&self, id: &str) -> Result<KeyInfo, Error> {
        self.call(Method::GET, "/info", &[("id", id)], Retry::Idempotent)
            .await
    }

    /// One page of the ids starting with `prefix`, after the cursor `after`.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyListing, Error> {
        let limit = limit.to_string();
        let mut query = vec![("prefix", prefix), ("limit", limit.as_str())];
        if let Some(after) = after {
            query.push(("after", after));
        }
        self.call(Method::GET, "s", &query, Retry::Idempotent).await
    }

    async fn cached(&self, id: &str, version: u32, query: &[(&str, &str)]) -> Result<Key, Error> {
        let fetch = async {
            let answer: KeyAnswer = self.call(Method::GET, "", query, Retry::Idempotent).await?;
            key_from(answer, id, version)
        };
        match &self.inner.cache {
            None => fetch.await,
            Some(cache) => cache
                .try_get_with((id.to_owned(), version), fetch)
                .await
                .map_err(|shared| Arc::try_unwrap(shared).unwrap_or_else(|s| (*s).clone())),
        }
    }

    async fn forget(&self, id: &str) {
        if let Some(cache) = &self.inner.cache {
            cache.invalidate(&(id.to_owned(), 0)).await;
        }
    }

    fn forget_every_version(&self, id: &str) {
        if let Some(cache) = &self.inner.cache {
            let id = id.to_owned();
            // The cache is built with `support_invalidation_closures`, so this cannot fail.
            let _ = cache.invalidate_entries_if(move |(cached, _), _| *cached == id);
        }
    }

    /// Sends the request to one server after another until one answers, within the
    /// attempts, and decodes its answer.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        suffix: &str,
        query: &[(&str, &str)],
        retry: Retry,
    ) -> Result<T, Error> {
        let inner = &self.inner;
        let started = Instant::now();
        let first = inner.preferred.load(Ordering::Relaxed);
        let mut last = String::new();
        for attempt in 0..inner.attempts {
            let server = (first + attempt as usize) % inner.servers.len();
            // After every server has failed once, wait before each further attempt.
            let round = attempt as usize / inner.servers.len();
            match self
                .attempt(server, method.clone(), suffix, query, retry)
                .await
            {
                Attempt::Done(result) => {
                    inner.preferred.store(server, Ordering::Relaxed);
                    return result;
                }
                Attempt::Next(why, retry_after) => {
                    last = why;
                    let more = attempt + 1 < inner.attempts;
                    let new_round = (attempt as usize + 1) % inner.servers.len() == 0;
                    if more && (new_round || retry_after.is_some()) {
                        tokio::time::sleep(self.wait(round, retry_after)).await;
                    }
                }
            }
        }
        Err(Error::Unavailable {
            attempts: inner.attempts,
            elapsed: started.elapsed(),
            last,
        })
    }

    /// The wait before the next round: the backoff doubled per round with full jitter, or
    /// the server's `Retry-After`, at most 5 s.
    fn wait(&self, round: usize, retry_after: Option<Duration>) -> Duration {
        let doubled = self
            .inner
            .backoff
            .saturating_mul(1 << round.min(16))
            .min(MAX_BACKOFF);
        let jittered = doubled.mul_f64(rand::rng().random_range(0.5..1.0));
        retry_after.map_or(jittered, |after| after.min(MAX_BACKOFF))
    }

    async fn attempt<T: DeserializeOwned>(
        &self,
        server: usize,
        method: Method,
        suffix: &str,
        query: &[(&str, &str)],
        retry: Retry,
    ) -> Attempt<T> {
        let inner = &self.inner;
        let base = &inner.servers[server];
        let mut url = base.clone();
        url.set_path(&format!(
            "{}/{}{suffix}",
            base.path().trim_end_matches('/'),
            inner.key_path
        ));
        url.query_pairs_mut().extend_pairs(query);
        let mut request = inner.http.request(method, url);
        if let Some(authorization) = &inner.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_connect() || retry == Retry::Idempotent => {
                return Attempt::Next(format!("{base}: {}", describe(&e)), None)
            }
            Err(e) => {
                return Attempt::Done(Err(Error::Unavailable {
                    attempts: 1,
                    elapsed: Duration::ZERO,
                    last: format!(
                        "{base}: {}; not sent again, since the server may have acted on it",
                        describe(&e)
                    ),
                }))
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs);
        let body = match response.bytes().await {
            Ok(body) => Zeroizing::new(Vec::from(body)),
            Err(e) if retry == Retry::Idempotent => {
                return Attempt::Next(format!("{base}: {}", describe(&e)), None)
            }
            Err(e) => {
                return Attempt::Done(Err(Error::InvalidResponse(format!(
                    "{base}: {}; not sent again, since the server may have acted on it",
                    describe(&e)
                ))))
            }
        };
        if status.is_success() {
            return Attempt::Done(
                serde_json::from_slice(&body)
                    .map_err(|e| Error::InvalidResponse(format!("{base}: {e}"))),
            );
        }
        let error = api_error(status, &body);
        let passing = matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::BAD_GATEWAY
                | StatusCode::GATEWAY_TIMEOUT
        );
        // Only a rate limit refuses a rotation before it is acted on: a 503 may follow a
        // compare-and-set whose answer came too late, and a proxy's 502 or 504 may follow a
        // rotation made.
        let safe = retry == Retry::Idempotent || status == StatusCode::TOO_MANY_REQUESTS;
        if passing && safe {
            Attempt::Next(format!("{base}: {error}"), retry_after)
        } else {
            Attempt::Done(Err(error))
        }
    }
}

/// A transport error without the URL's query (which holds the id) twice.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_connect() {
        "cannot connect"
    } else if error.is_timeout() {
        "timed out"
    } else {
        "the connection failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} ({detail})")
    }
}

/// The API error in an error answer's body.
fn api_error(status: StatusCode, body: &[u8]) -> Error {
    #[derive(serde::Deserialize)]
    struct Body {
        error_type: String,
        error_message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(body) => Error::Api {
            status: status.as_u16(),
            kind: ErrorKind::parse(&body.error_type),
            message: body.error_message,
        },
        Err(_) => Error::Api {
            status: status.as_u16(),
            kind: ErrorKind::Other(format!("HTTP {status}")),
            message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        },
    }
}

/// The key in an answer to a request for `id` (version `asked`, 0 for the current one),
/// refused unless the answer is for what was asked.
fn key_from(answer: KeyAnswer, id: &str, asked: u32) -> Result<Key, Error> {
    let encoded = Zeroizing::new(answer.key);
    let version = match answer.version {
        Some(version) if answer.id == id && (asked == 0 || version == asked) => version,
        _ => {
            return Err(Error::InvalidResponse(format!(
                "an answer for id {:?} version {:?}, not the key asked for",
                answer.id, answer.version
            )))
        }
    };
    let bytes = BASE64
        .decode(encoded.as_bytes())
        .map_err(|_| Error::InvalidResponse("the key is not base64".into()))?;
    Ok(Key {
        id: answer.id,
        version,
        bytes: Arc::new(Zeroizing::new(bytes)),
    })
}
