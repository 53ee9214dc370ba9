//! The Ed25519 key pair that signs checkpoints, in the PEM files OpenSSL writes (a PKCS#8
//! private key, a SubjectPublicKeyInfo public key), so a pair can also be made with
//! `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _, ParsedPublicKey, ED25519};
use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A private key file that group or other may read: whoever reads it can sign.
    #[error("{path} may be read by group or other (mode {mode:o}): chmod 600 it")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file holds no usable key of the kind expected.
    #[error("{path} is not a PEM {kind} Ed25519 key")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// `private` or `public`.
        kind: &'static str,
    },
}

/// The private key that signs checkpoints. Its `Debug` shows only the key id.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public_der: Vec<u8>,
    id: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).finish()
    }
}

impl SigningKey {
    /// Reads a PEM PKCS#8 Ed25519 private key from a file only its owner may read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mode = fs::metadata(path).map_err(io_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
        let malformed = || KeyError::Malformed {
            path: path.to_owned(),
            kind: "private",
        };
        let pem = Zeroizing::new(fs::read(path).map_err(io_err)?);
        let der =
            Zeroizing::new(PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|_| malformed())?);
        let pair = Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|_| malformed())?;
        Self::from_pair(pair).ok_or_else(malformed)
    }

    /// A new random key (for tests; operators use `audit keygen`).
    #[cfg(test)]
    pub(super) fn generate() -> Self {
        Self::from_pair(Ed25519KeyPair::generate().unwrap()).unwrap()
    }

    fn from_pair(pair: Ed25519KeyPair) -> Option<Self> {
        let public_der = pair.public_key().as_der().ok()?.as_ref().to_vec();
        Some(Self {
            id: key_id(&public_der),
            pair,
            public_der,
        })
    }

    /// Names the public key in checkpoints, so that verification can say which key signed.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public key, as `audit keygen` writes it.
    pub fn public_pem(&self) -> String {
        pem("PUBLIC KEY", &self.public_der).to_string()
    }

    pub(super) fn sign(&self, message: &[u8]) -> String {
        BASE64.encode(self.pair.sign(message))
    }
}

/// A public key that checks checkpoints.
pub struct PublicKey {
    key: ParsedPublicKey,
    id: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey").field("id", &self.id).finish()
    }
}

impl PublicKey {
    /// Reads a PEM SubjectPublicKeyInfo Ed25519 public key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(&text).ok_or_else(|| KeyError::Malformed {
            path: path.to_owned(),
            kind: "public",
        })
    }

    fn from_pem(text: &[u8]) -> Option<Self> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(text).ok()?;
        let key = ParsedPublicKey::new(&ED25519, der.as_ref()).ok()?;
        let id = key_id(key.as_der().ok()?.as_ref());
        Some(Self { key, id })
    }

    /// The key id checkpoints signed by this key carry.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn verifies(&self, message: &[u8], signature: &str) -> bool {
        BASE64
            .decode(signature)
            .is_ok_and(|sig| self.key.verify_sig(message, &sig).is_ok())
    }
}

#[cfg(test)]
impl SigningKey {
    pub(super) fn public(&self) -> PublicKey {
        PublicKey::from_pem(self.public_pem().as_bytes()).unwrap()
    }
}

/// Makes a new key pair: the private key at `out` (mode 0600) and the public key at
/// `out.pub`; neither file may exist yet. Returns the public key's path and the key.
pub fn generate_key_pair(out: &Path) -> Result<(PathBuf, SigningKey), KeyError> {
    let mut public_path = out.as_os_str().to_owned();
    public_path.push(".pub");
    let public_path = PathBuf::from(public_path);
    for path in [out, &public_path] {
        if path.exists() {
            return Err(KeyError::Io {
                path: path.to_owned(),
                source: io::ErrorKind::AlreadyExists.into(),
            });
        }
    }
    let document =
        Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new()).map_err(|_| KeyError::Io {
            path: out.to_owned(),
            source: io::Error::other("the random number generator failed"),
        })?;
    let key = Ed25519KeyPair::from_pkcs8(document.as_ref())
        .ok()
        .and_then(SigningKey::from_pair)
        .ok_or_else(|| KeyError::Malformed {
            path: out.to_owned(),
            kind: "private",
        })?;
    let private = pem("PRIVATE KEY", document.as_ref());
    write_new(out, 0o600, private.as_bytes())?;
    write_new(&public_path, 0o644, key.public_pem().as_bytes())?;
    Ok((public_path, key))
}

fn write_new(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), KeyError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })
}

/// The first 8 bytes (hex) of the SHA-256 of the DER public key.
fn key_id(spki_der: &[u8]) -> String {
    hex::encode(&Sha256::digest(spki_der)[..8])
}

/// PEM text, lines of 64; zeroized on drop, as it may hold a private key.
fn pem(label: &str, der: &[u8]) -> Zeroizing<String> {
    let body = Zeroizing::new(BASE64.encode(der));
    let mut text = Zeroizing::new(String::with_capacity(body.len() * 65 / 64 + 64));
    text.push_str("-----BEGIN ");
    text.push_str(label);
    text.push_str("-----\n");
    for start in (0..body.len()).step_by(64) {
        text.push_str(&body[start..body.len().min(start + 64)]);
        text.push('\n');
    }
    text.push_str("-----END ");
    text.push_str(label);
    text.push_str("-----\n");
    text
}
