//! The client: servers, retries, credentials, the cache, and one method per operation. How
//! one attempt goes over the wire is [`crate::http`]'s, or [`crate::grpc`]'s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use zeroize::Zeroizing;

use crate::call::{Answer, Attempt, Call, Retry};
use crate::error::Error;
#[cfg(feature = "grpc")]
use crate::grpc::GrpcTransport;
use crate::http::HttpTransport;
use crate::model::{Key, KeyInfo, KeyListing, KeyState};

/// Longest wait between rounds, and the most of a `Retry-After` that is honoured.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Settings for a [`Client`]. Its `Debug` shows no credential.
pub struct ClientBuilder {
    pub(crate) urls: Vec<String>,
    pub(crate) api_version: String,
    pub(crate) token: Option<Zeroizing<String>>,
    pub(crate) identity_pem: Option<Zeroizing<Vec<u8>>>,
    pub(crate) roots_pem: Vec<Vec<u8>>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    #[cfg(feature = "grpc")]
    grpc: bool,
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

    /// Talks to the servers over gRPC (`rkms.v1.KeyService` on the same port) rather than
    /// the HTTP API.
    #[cfg(feature = "grpc")]
    pub fn grpc(mut self) -> Self {
        self.grpc = true;
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
        #[cfg(feature = "grpc")]
        let transport = if self.grpc {
            Transport::Grpc(GrpcTransport::new(&self)?)
        } else {
            Transport::Http(HttpTransport::new(&self)?)
        };
        #[cfg(not(feature = "grpc"))]
        let transport = Transport::Http(HttpTransport::new(&self)?);
        let cache = self.cache_ttl.map(|ttl| {
            moka::future::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(self.cache_capacity)
                .support_invalidation_closures()
                .build()
        });
        Ok(Client {
            inner: Arc::new(Inner {
                transport,
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
    transport: Transport,
    attempts: u32,
    backoff: Duration,
    /// The server that answered last, tried first.
    preferred: AtomicUsize,
    /// Keys by id and version (0: the current version, as `get_key` asked for it).
    cache: Option<moka::future::Cache<(String, u32), Key>>,
}

/// How requests go over the wire.
#[derive(Debug)]
enum Transport {
    Http(HttpTransport),
    #[cfg(feature = "grpc")]
    Grpc(GrpcTransport),
}

impl Transport {
    fn servers(&self) -> usize {
        match self {
            Self::Http(http) => http.servers(),
            #[cfg(feature = "grpc")]
            Self::Grpc(grpc) => grpc.servers(),
        }
    }

    async fn attempt(&self, server: usize, call: &Call<'_>, retry: Retry) -> Attempt {
        match self {
            Self::Http(http) => http.attempt(server, call, retry).await,
            #[cfg(feature = "grpc")]
            Self::Grpc(grpc) => grpc.attempt(server, call, retry).await,
        }
    }
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
            #[cfg(feature = "grpc")]
            grpc: false,
            attempts: 6,
            backoff: Duration::from_millis(100),
            cache_ttl: None,
            cache_capacity: 0,
        }
    }

    /// The current version of the key for `id`, made on first use.
    pub async fn get_key(&self, id: &str) -> Result<Key, Error> {
        self.cached(id, 0).await
    }

    /// Version `version` of the key for `id`; never makes one.
    pub async fn get_key_version(&self, id: &str, version: u32) -> Result<Key, Error> {
        if version == 0 {
            return Err(Error::InvalidArgument("key versions start at 1".into()));
        }
        self.cached(id, version).await
    }

    /// Makes a new current version of the key for `id`; returns its number.
    pub async fn rotate(&self, id: &str) -> Result<u32, Error> {
        let answer = self.call(&Call::Rotate(id), Retry::UnlessSent).await?;
        self.forget(id).await;
        match answer {
            Answer::Rotated(version) => Ok(version),
            _ => Err(unexpected()),
        }
    }

    /// Schedules the deletion of `id`; returns its state (with the deletion time in
    /// [`Client::describe`]).
    pub async fn delete(&self, id: &str) -> Result<KeyState, Error> {
        let answer = self.call(&Call::Delete(id), Retry::Idempotent).await;
        // Whatever the outcome (a timeout may hide a deletion made), no version of the key
        // is served from this cache any more.
        self.forget_every_version(id);
        match answer? {
            Answer::State(state) => Ok(state),
            _ => Err(unexpected()),
        }
    }

    /// Cancels the scheduled deletion of `id`.
    pub async fn restore(&self, id: &str) -> Result<KeyState, Error> {
        match self.call(&Call::Restore(id), Retry::Idempotent).await? {
            Answer::State(state) => Ok(state),
            _ => Err(unexpected()),
        }
    }

    /// The state, versions and regions of `id`; never key material.
    pub async fn describe(&self, id: &str) -> Result<KeyInfo, Error> {
        match self.call(&Call::Describe(id), Retry::Idempotent).await? {
            Answer::Info(info) => Ok(info),
            _ => Err(unexpected()),
        }
    }

    /// One page of the ids starting with `prefix`, after the cursor `after`.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyListing, Error> {
        let call = Call::List {
            prefix,
            after,
            limit,
        };
        match self.call(&call, Retry::Idempotent).await? {
            Answer::Listing(listing) => Ok(listing),
            _ => Err(unexpected()),
        }
    }

    async fn cached(&self, id: &str, version: u32) -> Result<Key, Error> {
        let fetch = async {
            match self
                .call(&Call::GetKey { id, version }, Retry::Idempotent)
                .await?
            {
                Answer::Key(key) => Ok(key),
                _ => Err(unexpected()),
            }
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

    /// Sends the call to one server after another until one answers, within the attempts.
    async fn call(&self, call: &Call<'_>, retry: Retry) -> Result<Answer, Error> {
        let inner = &self.inner;
        let servers = inner.transport.servers();
        let started = Instant::now();
        let first = inner.preferred.load(Ordering::Relaxed);
        let mut last = String::new();
        for attempt in 0..inner.attempts {
            let server = (first + attempt as usize) % servers;
            // After every server has failed once, wait before each further attempt.
            let round = attempt as usize / servers;
            match inner.transport.attempt(server, call, retry).await {
                Attempt::Done(result) => {
                    inner.preferred.store(server, Ordering::Relaxed);
                    return result;
                }
                Attempt::Next(why, retry_after) => {
                    last = why;
                    let more = attempt + 1 < inner.attempts;
                    let new_round = (attempt as usize + 1) % servers == 0;
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
}

/// An answer of another shape than the call asked for: no transport makes one.
fn unexpected() -> Error {
    Error::InvalidResponse("an answer of another kind than asked for".into())
}
