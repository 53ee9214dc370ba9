//! The HTTP API as a transport: one attempt of a call to one server, and its answer decoded.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use zeroize::Zeroizing;

use crate::call::{checked_key, Answer, Attempt, Call, Retry};
use crate::client::ClientBuilder;
use crate::error::{Error, ErrorKind};
use crate::model::{KeyAnswer, StateAnswer};

/// The servers and how to reach them over HTTP.
#[derive(Debug)]
pub(crate) struct HttpTransport {
    http: reqwest::Client,
    servers: Vec<Url>,
    /// `api/<version>/key`, joined onto each server's URL.
    key_path: String,
    authorization: Option<HeaderValue>,
}

impl HttpTransport {
    pub(crate) fn new(settings: &ClientBuilder) -> Result<Self, Error> {
        let servers = settings
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
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout);
        for pem in &settings.roots_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Config(format!("root certificate: {e}")))?;
            for root in roots {
                http = http.add_root_certificate(root);
            }
        }
        if let Some(pem) = &settings.identity_pem {
            let identity = reqwest::Identity::from_pem(pem)
                .map_err(|e| Error::Config(format!("client certificate: {e}")))?;
            http = http.identity(identity);
        }
        let http = http
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let authorization = match &settings.token {
            None => None,
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.as_str()))
                    .map_err(|_| Error::Config("the token is not a valid header value".into()))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self {
            http,
            servers,
            key_path: format!("api/{}/key", settings.api_version),
            authorization,
        })
    }

    pub(crate) fn servers(&self) -> usize {
        self.servers.len()
    }

    /// Sends `call` to server number `server` once.
    pub(crate) async fn attempt(&self, server: usize, call: &Call<'_>, retry: Retry) -> Attempt {
        let base = &self.servers[server];
        let (method, suffix) = route(call);
        let mut url = base.clone();
        url.set_path(&format!(
            "{}/{}{suffix}",
            base.path().trim_end_matches('/'),
            self.key_path
        ));
        add_query(&mut url, call);
        let mut request = self.http.request(method, url);
        if let Some(authorization) = &self.authorization {
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
            return Attempt::Done(answer_of(call, &body));
        }
        let error = api_error(status, &body);
        let passing = matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::BAD_GATEWAY
                | StatusCode::GATEWAY_TIMEOUT
        );
        Attempt::after_error(base.as_str(), error, passing, retry, retry_after)
    }
}

/// The method and the path after the key route of each operation.
fn route(call: &Call<'_>) -> (Method, &'static str) {
    match call {
        Call::GetKey { .. } => (Method::GET, ""),
        Call::Rotate(_) => (Method::POST, "/rotate"),
        Call::Delete(_) => (Method::DELETE, ""),
        Call::Restore(_) => (Method::POST, "/restore"),
        Call::Describe(_) => (Method::GET, "/info"),
        Call::List { .. } => (Method::GET, "s"),
    }
}

fn add_query(url: &mut Url, call: &Call<'_>) {
    let mut query = url.query_pairs_mut();
    match *call {
        Call::GetKey { id, version } => {
            query.append_pair("id", id);
            if version > 0 {
                query.append_pair("version", &version.to_string());
            }
        }
        Call::Rotate(id) | Call::Delete(id) | Call::Restore(id) | Call::Describe(id) => {
            query.append_pair("id", id);
        }
        Call::List {
            prefix,
            after,
            limit,
        } => {
            query
                .append_pair("prefix", prefix)
                .append_pair("limit", &limit.to_string());
            if let Some(after) = after {
                query.append_pair("after", after);
            }
        }
    }
}

/// A success answer's body, decoded as `call`'s answer.
fn answer_of(call: &Call<'_>, body: &[u8]) -> Result<Answer, Error> {
    let invalid = |e: serde_json::Error| Error::InvalidResponse(e.to_string());
    Ok(match *call {
        Call::GetKey { id, version } => {
            let answer: KeyAnswer = serde_json::from_slice(body).map_err(invalid)?;
            let encoded = Zeroizing::new(answer.key);
            let bytes = BASE64
                .decode(encoded.as_bytes())
                .map_err(|_| Error::InvalidResponse("the key is not base64".into()))?;
            Answer::Key(checked_key(id, version, answer.id, answer.version, bytes)?)
        }
        Call::Rotate(_) => {
            let answer: StateAnswer = serde_json::from_slice(body).map_err(invalid)?;
            Answer::Rotated(
                answer.version.ok_or_else(|| {
                    Error::InvalidResponse("a rotation without its version".into())
                })?,
            )
        }
        Call::Delete(_) | Call::Restore(_) => {
            let answer: StateAnswer = serde_json::from_slice(body).map_err(invalid)?;
            Answer::State(answer.state)
        }
        Call::Describe(_) => Answer::Info(serde_json::from_slice(body).map_err(invalid)?),
        Call::List { .. } => Answer::Listing(serde_json::from_slice(body).map_err(invalid)?),
    })
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
