//! The gRPC API (`rkms.v1.KeyService`) as a transport: one attempt of a call to one server,
//! and its answer as the client's types. The `rkms-error-type` metadata types errors as the
//! HTTP API's `error_type` does.

use std::time::Duration;

use rkms_proto::v1 as pb;
use rkms_proto::v1::key_service_client::KeyServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use zeroize::Zeroize as _;

use crate::call::{checked_key, Answer, Attempt, Call, Retry};
use crate::client::ClientBuilder;
use crate::error::{Error, ErrorKind};
use crate::model::{KeyInfo, KeyListing, KeyState, ListedKey, VersionInfo};

/// The servers and how to reach them over gRPC.
#[derive(Debug)]
pub(crate) struct GrpcTransport {
    /// Each server's URL (for messages) and channel, connected on first use.
    servers: Vec<(String, KeyServiceClient<Channel>)>,
    authorization: Option<MetadataValue<Ascii>>,
}

impl GrpcTransport {
    pub(crate) fn new(settings: &ClientBuilder) -> Result<Self, Error> {
        let servers = settings
            .urls
            .iter()
            .map(|url| {
                let url = url.trim_end_matches('/').to_owned();
                let mut endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| Error::Config(format!("server URL {url:?}: {e}")))?
                    .timeout(settings.timeout)
                    .connect_timeout(settings.connect_timeout);
                if url.starts_with("https://") {
                    endpoint = endpoint
                        .tls_config(tls(settings)?)
                        .map_err(|e| Error::Config(format!("TLS for {url:?}: {e}")))?;
                } else if !url.starts_with("http://") {
                    return Err(Error::Config(format!("server URL {url:?} is not http(s)")));
                }
                Ok((url, KeyServiceClient::new(endpoint.connect_lazy())))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let authorization = match &settings.token {
            None => None,
            Some(token) => {
                let mut value: MetadataValue<Ascii> = format!("Bearer {}", token.as_str())
                    .parse()
                    .map_err(|_| Error::Config("the token is not a valid header value".into()))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self {
            servers,
            authorization,
        })
    }

    pub(crate) fn servers(&self) -> usize {
        self.servers.len()
    }

    /// Sends `call` to server number `server` once.
    pub(crate) async fn attempt(&self, server: usize, call: &Call<'_>, retry: Retry) -> Attempt {
        let (url, client) = &self.servers[server];
        let mut client = client.clone();
        let answer = match *call {
            Call::GetKey { id, version } => client
                .get_key(self.request(pb::GetKeyRequest {
                    id: id.into(),
                    version: (version > 0).then_some(version),
                }))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    let bytes = r.key.to_vec();
                    // Wipe the message's copy too, when nothing else shares its buffer.
                    if let Ok(mut decoded) = r.key.try_into_mut() {
                        decoded.zeroize();
                    }
                    checked_key(id, version, r.id, Some(r.version), bytes).map(Answer::Key)
                }),
            Call::Rotate(id) => client
                .rotate_key(self.request(pb::RotateKeyRequest { id: id.into() }))
                .await
                .map(|r| Ok(Answer::Rotated(r.into_inner().version))),
            Call::Delete(id) => client
                .delete_key(self.request(pb::DeleteKeyRequest { id: id.into() }))
                .await
                .map(|r| Ok(Answer::State(state(r.into_inner().state())))),
            Call::Restore(id) => client
                .restore_key(self.request(pb::RestoreKeyRequest { id: id.into() }))
                .await
                .map(|r| Ok(Answer::State(state(r.into_inner().state())))),
            Call::Describe(id) => client
                .describe_key(self.request(pb::DescribeKeyRequest { id: id.into() }))
                .await
                .map(|r| Ok(Answer::Info(info(r.into_inner())))),
            Call::List {
                prefix,
                after,
                limit,
            } => client
                .list_keys(self.request(pb::ListKeysRequest {
                    prefix: prefix.into(),
                    page_token: after.unwrap_or_default().into(),
                    page_size: u32::try_from(limit).unwrap_or(u32::MAX),
                }))
                .await
                .map(|r| Ok(Answer::Listing(listing(r.into_inner())))),
        };
        match answer {
            Ok(answer) => Attempt::Done(answer),
            Err(status) => refused(url, &status, retry),
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }
}

fn tls(settings: &ClientBuilder) -> Result<ClientTlsConfig, Error> {
    let mut tls = ClientTlsConfig::new().with_webpki_roots();
    for pem in &settings.roots_pem {
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    if let Some(pem) = &settings.identity_pem {
        // One PEM holds the chain and the key; each side reads what it needs from it.
        tls = tls.identity(Identity::from_pem(pem.as_slice(), pem.as_slice()));
    }
    Ok(tls)
}

/// What a failed call comes to: an API error is the answer, unless the server was
/// unavailable or rate limited (then the next server is tried, for a rotation only after a
/// rate limit); a failure below the API passes to the next server when the call is
/// idempotent or was never sent.
fn refused(url: &str, status: &Status, retry: Retry) -> Attempt {
    let Some(error_type) = status
        .metadata()
        .get("rkms-error-type")
        .and_then(|v| v.to_str().ok())
    else {
        let why = format!("{url}: {:?}: {}", status.code(), status.message());
        return if retry == Retry::Idempotent || never_sent(status) {
            Attempt::Next(why, None)
        } else {
            Attempt::Done(Err(Error::Unavailable {
                attempts: 1,
                elapsed: Duration::ZERO,
                last: format!("{why}; not sent again, since the server may have acted on it"),
            }))
        };
    };
    let kind = ErrorKind::parse(error_type);
    let error = Error::Api {
        status: kind.http_status(),
        kind: kind.clone(),
        message: status.message().to_owned(),
    };
    let retry_after = status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .map(Duration::from_secs);
    let passing = matches!(
        kind,
        ErrorKind::ServiceUnavailable | ErrorKind::TooManyRequests
    );
    Attempt::after_error(url, error, passing, retry, retry_after)
}

/// Whether the call failed before a connection was made, so no server saw it.
fn never_sent(status: &Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = cause.source();
    }
    false
}

fn state(state: pb::KeyState) -> KeyState {
    match state {
        pb::KeyState::Active => KeyState::Active,
        pb::KeyState::PendingDeletion => KeyState::PendingDeletion,
        pb::KeyState::Deleted => KeyState::Deleted,
        pb::KeyState::Unreadable | pb::KeyState::Unspecified => KeyState::Unreadable,
    }
}

fn rfc3339(time: Option<prost_types::Timestamp>) -> Option<String> {
    time.map(|t| t.to_string())
}

fn info(answer: pb::DescribeKeyResponse) -> KeyInfo {
    KeyInfo {
        state: state(answer.state()),
        id: answer.id,
        current_version: answer.current_version,
        versions: answer
            .versions
            .into_iter()
            .map(|v| VersionInfo {
                version: v.version,
                created_at: rfc3339(v.created_at),
                regions: v.regions,
                missing: v.missing,
            })
            .collect(),
        deletion_time: rfc3339(answer.deletion_time),
        deleted_at: rfc3339(answer.deleted_at),
    }
}

fn listing(answer: pb::ListKeysResponse) -> KeyListing {
    KeyListing {
        keys: answer
            .keys
            .into_iter()
            .map(|k| ListedKey {
                state: state(k.state()),
                id: k.id,
            })
            .collect(),
        next: Some(answer.next_page_token).filter(|t| !t.is_empty()),
    }
}
