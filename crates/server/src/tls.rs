//! Server TLS: the certificate, its key and the client CA, read from PEM files and reloaded on
//! SIGHUP or when the files change; and the names a verified client certificate carries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest as _, Sha256};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};
use zeroize::Zeroizing;

/// Who is at the other end of a request's connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub remote: SocketAddr,
    /// The client certificate the TLS handshake verified, if one was presented.
    pub certificate: Option<Arc<ClientCertificate>>,
}

/// Where the server's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// PEM CA certificates that client certificates must chain to; `None` asks for none.
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

/// TLS material that cannot be used; the message names the file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// The server's TLS configuration in force, swapped whole when the files change.
#[derive(Debug)]
pub struct TlsConfig {
    settings: TlsSettings,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    config: Arc<ServerConfig>,
    /// SHA-256 over the files' bytes, to notice a change.
    fingerprint: [u8; 32],
}

impl TlsConfig {
    /// Reads and checks the files.
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let loaded = build(&settings, &Files::read(&settings)?)?;
        Ok(Self {
            settings,
            current: RwLock::new(loaded),
        })
    }

    /// An acceptor for the configuration in force; connections keep the one they started with.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(Arc::clone(&current.config))
    }

    /// Re-reads the files; `Ok(true)` when they changed and the new configuration is in force.
    /// On an error the configuration in force stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let files = Files::read(&self.settings)?;
        let unchanged = |current: &Loaded| current.fingerprint == files.fingerprint;
        if unchanged(&self.current.read().unwrap_or_else(|e| e.into_inner())) {
            return Ok(false);
        }
        let loaded = build(&self.settings, &files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(true)
    }

    /// Reloads whenever a check, every `reload_interval`, finds the files changed. (SIGHUP
    /// reloads at once: see `main.rs`.)
    pub async fn watch(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.settings.reload_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            self.reload_and_log(false);
        }
    }

    /// [`TlsConfig::reload`], logged; `signalled` logs an unchanged result too.
    pub fn reload_and_log(&self, signalled: bool) {
        match self.reload() {
            Ok(true) => info!("TLS certificate and key reloaded"),
            Ok(false) if signalled => info!("TLS files unchanged"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "TLS reload failed; the certificate in force stays"),
        }
    }
}

fn read(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| TlsError(format!("cannot read the {what} {}: {e}", path.display())))
}

fn certificates(
    pem: &[u8],
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("the {what} {} is not PEM: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(TlsError(format!(
            "the {what} {} holds no certificate",
            path.display()
        )));
    }
    Ok(certificates)
}

/// The files' bytes, and a fingerprint that tells whether they changed without parsing them.
struct Files {
    chain_pem: Zeroizing<Vec<u8>>,
    key_pem: Zeroizing<Vec<u8>>,
    ca_pem: Option<Zeroizing<Vec<u8>>>,
    fingerprint: [u8; 32],
}

impl Files {
    fn read(settings: &TlsSettings) -> Result<Self, TlsError> {
        let chain_pem = read(&settings.certificate, "certificate")?;
        let key_pem = read(&settings.private_key, "private key")?;
        let ca_pem = match &settings.client_ca {
            Some(path) => Some(read(path, "client CA")?),
            None => None,
        };
        let mut hash = Sha256::new();
        for part in [Some(&chain_pem), Some(&key_pem), ca_pem.as_ref()]
            .into_iter()
            .flatten()
        {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_slice());
        }
        Ok(Self {
            chain_pem,
            key_pem,
            ca_pem,
            fingerprint: hash.finalize().into(),
        })
    }
}

fn build(settings: &TlsSettings, files: &Files) -> Result<Loaded, TlsError> {
    let Files {
        chain_pem,
        key_pem,
        ca_pem,
        fingerprint,
    } = files;
    let chain = certificates(chain_pem, &settings.certificate, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        TlsError(format!(
            "the private key {} is not a PEM private key: {e}",
            settings.private_key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS setup: {e}")))?;
    let builder = match (&settings.client_ca, ca_pem) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(pem, path, "client CA")? {
                roots.add(certificate).map_err(|e| {
                    TlsError(format!(
                        "the client CA {} is not usable: {e}",
                        path.display()
                    ))
                })?;
            }
            // Callers without a certificate may still present a token; the API answers 401
            // when they have neither.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError(format!("client CA {}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError(format!(
            "the certificate {} and key {} do not make a usable pair: {e}",
            settings.certificate.display(),
            settings.private_key.display()
        ))
    })?;
    // HTTP/2 carries the gRPC API (and the HTTP API for clients that prefer it).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        fingerprint: *fingerprint,
    })
}

/// A name a principal's client certificate is known by, of one kind: a configured name
/// matches only a certificate name of the same kind, so a common name that reads like a URI
/// is never taken for one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertificateName {
    /// A URI subject alternative name (a SPIFFE id and the like), compared exactly.
    Uri(String),
    /// A DNS subject alternative name, compared without regard to ASCII case (kept lowercase).
    Dns(String),
    /// The subject common name; a certificate's is read only when it has no DNS or URI name.
    CommonName(String),
}

impl CertificateName {
    /// Reads a configured name: `uri:<uri>`, `dns:<name>` or `cn:<common name>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let name = match text.split_once(':') {
            Some(("uri", uri)) => Self::Uri(uri.to_owned()),
            Some(("dns", dns)) => Self::Dns(dns.to_ascii_lowercase()),
            Some(("cn", cn)) => Self::CommonName(cn.to_owned()),
            _ => {
                let kind = if text.contains("://") { "uri" } else { "dns" };
                return Err(format!(
                    "client certificate name {text:?} needs its kind: \"{kind}:{text}\" (or \
                     \"uri:\", \"dns:\", \"cn:\"; a common name counts only on a certificate \
                     without DNS or URI names)"
                ));
            }
        };
        match &name {
            Self::Uri(value) | Self::Dns(value) | Self::CommonName(value) if value.is_empty() => {
                Err(format!("client certificate name {text:?} is empty"))
            }
            _ => Ok(name),
        }
    }
}

impl std::fmt::Display for CertificateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uri(uri) => write!(f, "uri:{uri}"),
            Self::Dns(dns) => write!(f, "dns:{dns}"),
            Self::CommonName(cn) => write!(f, "cn:{cn}"),
        }
    }
}

/// The names of a client certificate the TLS handshake verified: its DNS and URI subject
/// alternative names, or, when it has none, its subject common names (RFC 6125, 6.4.4).
/// Principals are configured by these names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    names: Vec<CertificateName>,
}

impl ClientCertificate {
    /// Reads the names of a verified leaf certificate. A certificate rustls accepted parses;
    /// should one not, it carries no names and authenticates no one.
    pub fn from_der(der: &[u8]) -> Self {
        let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
            return Self { names: Vec::new() };
        };
        let mut names = Vec::new();
        if let Ok(Some(san)) = certificate.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        names.push(CertificateName::Dns(dns.to_ascii_lowercase()));
                    }
                    x509_parser::extensions::GeneralName::URI(uri) => {
                        names.push(CertificateName::Uri((*uri).to_owned()));
                    }
                    _ => {}
                }
            }
        }
        if names.is_empty() {
            names.extend(
                certificate
                    .subject()
                    .iter_common_name()
                    .filter_map(|cn| cn.as_str().ok())
                    .map(|cn| CertificateName::CommonName(cn.to_owned())),
            );
        }
        Self { names }
    }

    /// A certificate carrying these names, for tests.
    #[cfg(test)]
    pub(crate) fn from_names(names: Vec<CertificateName>) -> Self {
        Self { names }
    }

    /// DNS and URI names in the certificate's order, or else its common names.
    pub fn names(&self) -> &[CertificateName] {
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn certificate(common_name: &str, names: Vec<SanType>) -> ClientCertificate {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = names;
        let der = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        ClientCertificate::from_der(der.der())
    }

    #[test]
    fn the_common_name_is_read_only_without_dns_or_uri_names() {
        let uri = |u: &str| SanType::URI(u.try_into().unwrap());
        let dns = |d: &str| SanType::DnsName(d.try_into().unwrap());
        assert_eq!(
            certificate("spiffe://corp/billing", vec![]).names(),
            [CertificateName::CommonName("spiffe://corp/billing".into())]
        );
        assert_eq!(
            certificate(
                "admin",
                vec![dns("Orders.Internal"), uri("spiffe://corp/orders")]
            )
            .names(),
            [
                CertificateName::Dns("orders.internal".into()),
                CertificateName::Uri("spiffe://corp/orders".into())
            ]
        );
        let address = SanType::IpAddress("10.0.0.1".parse().unwrap());
        assert_eq!(
            certificate("admin", vec![address]).names(),
            [CertificateName::CommonName("admin".into())],
            "an IP address is not a name principals are configured by"
        );
    }

    #[test]
    fn configured_names_say_their_kind() {
        assert_eq!(
            CertificateName::parse("uri:spiffe://corp/billing").unwrap(),
            CertificateName::Uri("spiffe://corp/billing".into())
        );
        assert_eq!(
            CertificateName::parse("dns:Billing.Internal").unwrap(),
            CertificateName::Dns("billing.internal".into())
        );
        assert_eq!(
            CertificateName::parse("cn:Billing Service").unwrap(),
            CertificateName::CommonName("Billing Service".into())
        );
        let error = CertificateName::parse("spiffe://corp/billing").unwrap_err();
        assert!(error.contains("\"uri:spiffe://corp/billing\""), "{error}");
        let error = CertificateName::parse("billing.internal").unwrap_err();
        assert!(error.contains("\"dns:billing.internal\""), "{error}");
        assert!(CertificateName::parse("dns:").is_err());
        assert_eq!(
            CertificateName::parse("uri:spiffe://a/b")
                .unwrap()
                .to_string(),
            "uri:spiffe://a/b"
        );
    }
}
