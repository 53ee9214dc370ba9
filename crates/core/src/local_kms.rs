//! `LocalKms`: software master keys in a keyring file, for development and embedding.
//!
//! Each region gets an AES-256-GCM master key. A wrapped copy names its master key and is
//! authenticated together with the encryption context, so it decrypts only in the region whose
//! key made it and only for the id it was made for. The keyring holds master keys in plain
//! form on local disk: it gives none of a cloud KMS's protection and is labelled as such.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::rand_core::RngCore as _;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::kms::{GeneratedKey, Kms, KmsError};
use crate::{DataKey, EncryptionContext};

/// The keyring format written while no region was rotated, readable by every build.
const KEYRING_FORMAT: u32 = 1;
/// The format of a keyring with rotated regions (`regions`), which older builds refuse.
pub(crate) const ROTATED_KEYRING_FORMAT: u32 = 2;
const CIPHERTEXT_FORMAT: u8 = 1;
const NONCE_LEN: usize = 12;
const MASTER_KEY_LEN: usize = 32;

/// Errors opening or using a keyring.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// Reading or writing the keyring file failed.
    #[error("keyring {path}: {source}")]
    Io {
        /// The keyring file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The keyring file is not a keyring this build can read.
    #[error("keyring {path} is unreadable: {message}")]
    Malformed {
        /// The keyring file.
        path: PathBuf,
        /// What is wrong, without the key material.
        message: String,
    },
    /// A master key the configuration names is not in the keyring.
    #[error("keyring has no master key named {0:?}; it was created for other key names (delete the keyring only if no record depends on it)")]
    MissingKey(String),
    /// The keyring file grants group or others access to the master keys.
    #[error("keyring {path} has mode {mode:o}: group or others may read or change its master keys; restrict it with `chmod 600 {path}` (and consider who may have copied it)")]
    Exposed {
        /// The keyring file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A master key name cannot be written into a ciphertext header.
    #[error("master key name {0:?} must be 1 to 255 bytes")]
    BadKeyName(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyringFile {
    pub(crate) format: u32,
    /// Master key name -> base64 key bytes.
    pub(crate) keys: BTreeMap<String, String>,
    /// Format 2: the regions `rotate` gave a new master key, by region name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) regions: BTreeMap<String, RegionKeys>,
}

impl Drop for KeyringFile {
    fn drop(&mut self) {
        self.keys.values_mut().for_each(Zeroize::zeroize);
    }
}

/// A rotated region's master keys: once a region is rotated, the keyring, not `key_ids`,
/// names its current key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegionKeys {
    /// The key new copies are wrapped under.
    pub(crate) current: String,
    /// Keys it wrapped under before, oldest first: kept for decrypting until retired.
    #[serde(default)]
    pub(crate) previous: Vec<String>,
    /// Keys removed by `retire`: a configuration may still name one as the region's
    /// `key_ids` entry, where it started.
    #[serde(default)]
    pub(crate) retired: Vec<String>,
}

/// A set of named software master keys, and the current key of each rotated region.
#[derive(Clone)]
pub struct LocalKeyring {
    keys: BTreeMap<String, Arc<Aes256Gcm>>,
    pub(crate) regions: BTreeMap<String, RegionKeys>,
}

impl fmt::Debug for LocalKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyring")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("regions", &self.regions)
            .finish()
    }
}

impl LocalKeyring {
    /// Fresh random master keys held only in memory (tests and embedding).
    pub fn generate(key_names: &[&str]) -> Result<Self, KeyringError> {
        let mut keys = BTreeMap::new();
        for name in key_names {
            check_key_name(name)?;
            keys.insert(
                (*name).to_owned(),
                Arc::new(Aes256Gcm::new(&Aes256Gcm::generate_key(OsRng))),
            );
        }
        Ok(Self {
            keys,
            regions: BTreeMap::new(),
        })
    }

    /// Opens the keyring at `path`, creating it with fresh keys for `key_names` if it does not
    /// exist.
    ///
    /// Creation is atomic and safe when several processes start at once: the keys are written
    /// to a private temporary file (mode 0600) and linked into place only if no keyring exists
    /// yet, so every process ends up with the same keys. An existing keyring must hold every
    /// name in `key_names` (but those of keys it retired) and be private to its owner (no
    /// group or other permission bits); opening never rewrites it.
    ///
    /// Creating is right only when nothing was wrapped under a previous keyring at `path`:
    /// a caller that stores records checks that its store is empty before calling this on a
    /// missing file.
    pub fn open_or_create(path: &Path, key_names: &[&str]) -> Result<Self, KeyringError> {
        let io_err = |source| KeyringError::Io {
            path: path.to_owned(),
            source,
        };
        for name in key_names {
            check_key_name(name)?;
        }
        if !path.exists() {
            create_keyring_file(path, key_names).map_err(io_err)?;
        }
        let keyring = Self::load(path)?;
        let retired = |name: &str| {
            keyring
                .regions
                .values()
                .any(|r| r.retired.iter().any(|k| k == name))
        };
        for name in key_names {
            if !keyring.keys.contains_key(*name) && !retired(name) {
                return Err(KeyringError::MissingKey((*name).to_owned()));
            }
        }
        Ok(keyring)
    }

    /// Opens the keyring at `path`, which must exist.
    pub fn open(path: &Path) -> Result<Self, KeyringError> {
        Self::load(path)
    }

    fn load(path: &Path) -> Result<Self, KeyringError> {
        let malformed = |message: String| KeyringError::Malformed {
            path: path.to_owned(),
            message,
        };
        let mut file = read_keyring_file(path)?;
        let mut keys = BTreeMap::new();
        for (name, encoded) in &mut file.keys {
            let bytes = Zeroizing::new(BASE64.decode(encoded.as_bytes()).unwrap_or_default());
            encoded.zeroize();
            if bytes.len() != MASTER_KEY_LEN {
                return Err(malformed(format!(
                    "master key {name:?} is not {MASTER_KEY_LEN} base64-encoded bytes"
                )));
            }
            keys.insert(
                name.clone(),
                Arc::new(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes))),
            );
        }
        Ok(Self {
            keys,
            regions: std::mem::take(&mut file.regions),
        })
    }
    /// A region that wraps under the master key `key_name`.
    pub fn region(&self, region: &str, key_name: &str) -> Result<LocalKms, KeyringError> {
        let cipher = self
            .keys
            .get(key_name)
            .ok_or_else(|| KeyringError::MissingKey(key_name.to_owned()))?;
        Ok(LocalKms {
            region: region.to_owned(),
            key_name: key_name.to_owned(),
            cipher: Arc::clone(cipher),
            previous: Vec::new(),
            previous_names: Vec::new(),
        })
    }

    /// A region that wraps under `key_name` and may still decrypt under each of `previous`,
    /// the keys it wrapped under before (see [`Kms::previous_master_keys`]). For a region the
    /// keyring rotated (`rkms-server keyring rotate`), the keyring's current key replaces
    /// `key_name`, and its previous keys join `previous`.
    pub fn region_with_previous(
        &self,
        region: &str,
        key_name: &str,
        previous: &[&str],
    ) -> Result<LocalKms, KeyringError> {
        let (current, mut names): (&str, Vec<&str>) = match self.regions.get(region) {
            Some(rotated) => (
                &rotated.current,
                rotated.previous.iter().map(String::as_str).collect(),
            ),
            None => (key_name, Vec::new()),
        };
        for name in previous {
            if *name != current && !names.contains(name) {
                names.push(name);
            }
        }
        let mut kms = self.region(region, current)?;
        for name in names {
            let cipher = self
                .keys
                .get(name)
                .ok_or_else(|| KeyringError::MissingKey(name.to_owned()))?;
            kms.previous.push((name.to_owned(), Arc::clone(cipher)));
            kms.previous_names.push(name.to_owned());
        }
        Ok(kms)
    }
}

/// Reads and checks a keyring file, key material still encoded (the caller zeroizes it).
pub(crate) fn read_keyring_file(path: &Path) -> Result<KeyringFile, KeyringError> {
    let malformed = |message: String| KeyringError::Malformed {
        path: path.to_owned(),
        message,
    };
    let io_err = |source| KeyringError::Io {
        path: path.to_owned(),
        source,
    };
    let mode = fs::metadata(path).map_err(io_err)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(KeyringError::Exposed {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(io_err)?);
    let file: KeyringFile = serde_json::from_str(&text)
        .map_err(|e| malformed(format!("{:?} error at line {}", e.classify(), e.line())))?;
    match file.format {
        KEYRING_FORMAT if file.regions.is_empty() => {}
        ROTATED_KEYRING_FORMAT => {}
        KEYRING_FORMAT => return Err(malformed("format 1 has no rotated regions".into())),
        other => return Err(malformed(format!("format {other} is not supported"))),
    }
    for name in file.keys.keys() {
        check_key_name(name)?;
    }
    for (region, keys) in &file.regions {
        if keys.previous.contains(&keys.current) {
            return Err(malformed(format!(
                "region {region:?} names its current key as a previous one"
            )));
        }
        for name in std::iter::once(&keys.current).chain(&keys.previous) {
            if !file.keys.contains_key(name) {
                return Err(malformed(format!(
                    "region {region:?} names master key {name:?}, which the keyring does not hold"
                )));
            }
        }
    }
    Ok(file)
}

pub(crate) fn check_key_name(name: &str) -> Result<(), KeyringError> {
    if name.is_empty() || name.len() > usize::from(u8::MAX) {
        return Err(KeyringError::BadKeyName(name.to_owned()));
    }
    Ok(())
}

fn create_keyring_file(path: &Path, key_names: &[&str]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut keys = BTreeMap::new();
    for name in key_names {
        let key = Aes256Gcm::generate_key(OsRng);
        keys.insert((*name).to_owned(), BASE64.encode(key));
    }
    let file = KeyringFile {
        format: KEYRING_FORMAT,
        keys,
        regions: BTreeMap::new(),
    };
    let text = Zeroizing::new(serde_json::to_string_pretty(&file).map_err(io::Error::other)?);
    drop(file);

    let tmp = dir.join(format!(
        ".keyring.{}.{}.tmp",
        std::process::id(),
        OsRng.next_u64()
    ));
    let written = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
        // link, unlike rename, fails when the target exists: the first creator wins.
        match fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    })();
    let _ = fs::remove_file(&tmp);
    written?;
    fs::File::open(dir)?.sync_all()
}

/// What a copy's AES-GCM seal authenticates beside the key: the master key's name and the
/// encryption context.
fn associated_data(key_name: &str, context: &EncryptionContext) -> Vec<u8> {
    let mut aad = Vec::with_capacity(key_name.len() + 64);
    aad.extend_from_slice(&(key_name.len() as u64).to_be_bytes());
    aad.extend_from_slice(key_name.as_bytes());
    aad.extend_from_slice(&context.canonical_bytes());
    aad
}

/// One software KMS region: a named AES-256-GCM master key from a [`LocalKeyring`].
#[derive(Clone)]
pub struct LocalKms {
    region: String,
    key_name: String,
    cipher: Arc<Aes256Gcm>,
    /// Keys it wrapped under before, by name, for decrypting only.
    previous: Vec<(String, Arc<Aes256Gcm>)>,
    previous_names: Vec<String>,
}

impl fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKms")
            .field("region", &self.region)
            .field("master_key", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl LocalKms {
    fn refused(&self, message: &str) -> KmsError {
        KmsError::Refused {
            region: self.region.clone(),
            message: message.to_owned(),
        }
    }

    fn associated_data(&self, context: &EncryptionContext) -> Vec<u8> {
        associated_data(&self.key_name, context)
    }

    fn wrap(&self, plaintext: &[u8], context: &EncryptionContext) -> Result<Vec<u8>, KmsError> {
        let nonce = Aes256Gcm::generate_nonce(OsRng);
        let aad = self.associated_data(context);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| self.refused("encryption failed"))?;
        let mut out = Vec::with_capacity(2 + self.key_name.len() + NONCE_LEN + sealed.len());
        out.push(CIPHERTEXT_FORMAT);
        out.push(self.key_name.len() as u8);
        out.extend_from_slice(self.key_name.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }
}

#[async_trait]
impl Kms for LocalKms {
    fn region(&self) -> &str {
        &self.region
    }

    fn master_key(&self) -> &str {
        &self.key_name
    }

    async fn generate_data_key(
        &self,
        len: usize,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        let mut bytes = vec![0u8; len];
        OsRng.fill_bytes(&mut bytes);
        let plaintext = DataKey::new(bytes);
        let ciphertext = self.wrap(plaintext.expose_secret(), context)?;
        Ok(GeneratedKey {
            plaintext,
            ciphertext,
        })
    }

    async fn encrypt(
        &self,
        key: &DataKey,
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        self.wrap(key.expose_secret(), context)
    }

    async fn decrypt(
        &self,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        self.unwrap(&self.key_name, &self.cipher, ciphertext, context)
    }

    fn previous_master_keys(&self) -> &[String] {
        &self.previous_names
    }

    async fn decrypt_under(
        &self,
        master_key: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        if master_key == self.key_name {
            return self.decrypt(ciphertext, context).await;
        }
        let (name, cipher) = self
            .previous
            .iter()
            .find(|(name, _)| name == master_key)
            .ok_or_else(|| {
                self.refused("the master key is neither this region's nor a previous one")
            })?;
        self.unwrap(name, cipher, ciphertext, context)
    }
}

impl LocalKms {
    /// Opens a copy sealed under the key `key_name`; a copy naming another key is refused.
    fn unwrap(
        &self,
        key_name: &str,
        cipher: &Aes256Gcm,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let (&format, rest) = ciphertext
            .split_first()
            .ok_or_else(|| self.refused("empty ciphertext"))?;
        if format != CIPHERTEXT_FORMAT {
            return Err(self.refused("unknown ciphertext format"));
        }
        let (&name_len, rest) = rest
            .split_first()
            .ok_or_else(|| self.refused("truncated ciphertext"))?;
        let name_len = usize::from(name_len);
        if rest.len() < name_len + NONCE_LEN {
            return Err(self.refused("truncated ciphertext"));
        }
        let (name, rest) = rest.split_at(name_len);
        if name != key_name.as_bytes() {
            return Err(self.refused("ciphertext was wrapped under a different master key"));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let aad = associated_data(key_name, context);
        let plaintext = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                self.refused(
                    "ciphertext does not authenticate under this key and encryption context",
                )
            })?;
        Ok(DataKey::new(plaintext))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyId;

    fn ctx(id: &str) -> EncryptionContext {
        EncryptionContext::for_id(&KeyId::parse(id).unwrap())
    }

    #[tokio::test]
    async fn round_trip_and_refusals() {
        let ring = LocalKeyring::generate(&["a", "b"]).unwrap();
        let a = ring.region("r1", "a").unwrap();
        let b = ring.region("r2", "b").unwrap();
        let generated = a.generate_data_key(32, &ctx("x")).await.unwrap();
        assert_eq!(generated.plaintext.len(), 32);
        let back = a.decrypt(&generated.ciphertext, &ctx("x")).await.unwrap();
        assert_eq!(back, generated.plaintext);

        let wrapped_b = b.encrypt(&generated.plaintext, &ctx("x")).await.unwrap();
        assert_eq!(
            b.decrypt(&wrapped_b, &ctx("x")).await.unwrap(),
            generated.plaintext
        );

        assert!(matches!(
            a.decrypt(&generated.ciphertext, &ctx("y")).await,
            Err(KmsError::Refused { .. })
        ));
        assert!(matches!(
            b.decrypt(&generated.ciphertext, &ctx("x")).await,
            Err(KmsError::Refused { .. })
        ));
        assert!(a.decrypt(&[], &ctx("x")).await.is_err());
        assert!(a
            .decrypt(&generated.ciphertext[..10], &ctx("x"))
            .await
            .is_err());
    }

    #[test]
    fn keyring_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/keyring.json");
        let first = LocalKeyring::open_or_create(&path, &["a", "b"]).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = LocalKeyring::open_or_create(&path, &["a"]).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let wrapped = rt
            .block_on(
                first
                    .region("r", "a")
                    .unwrap()
                    .encrypt(&DataKey::new(vec![7; 32]), &ctx("id")),
            )
            .unwrap();
        let key = rt
            .block_on(
                second
                    .region("r", "a")
                    .unwrap()
                    .decrypt(&wrapped, &ctx("id")),
            )
            .unwrap();
        assert_eq!(key.expose_secret(), &[7; 32]);
        assert!(matches!(
            LocalKeyring::open_or_create(&path, &["c"]),
            Err(KeyringError::MissingKey(_))
        ));
        assert_eq!(
            fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_keyring_that_group_or_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        LocalKeyring::open_or_create(&path, &["a"]).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let message = LocalKeyring::open_or_create(&path, &["a"])
                .expect_err("a keyring others can read is refused")
                .to_string();
            assert!(
                message.contains(&format!("{mode:o}")) && message.contains("chmod 600"),
                "{message}"
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        LocalKeyring::open_or_create(&path, &["a"]).expect("owner-only modes are accepted");
    }

    #[test]
    fn concurrent_creators_share_one_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let rings: Vec<LocalKeyring> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| LocalKeyring::open_or_create(&path, &["a"]).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let wrapped = rt
            .block_on(
                rings[0]
                    .region("r", "a")
                    .unwrap()
                    .encrypt(&DataKey::new(vec![1; 16]), &ctx("id")),
            )
            .unwrap();
        for ring in &rings {
            let key = rt
                .block_on(ring.region("r", "a").unwrap().decrypt(&wrapped, &ctx("id")))
                .unwrap();
            assert_eq!(key.expose_secret(), &[1; 16]);
        }
    }

    #[test]
    fn debug_shows_no_key_material() {
        let ring = LocalKeyring::generate(&["a"]).unwrap();
        let printed = format!("{ring:?} {:?}", ring.region("r", "a").unwrap());
        assert!(printed.contains("\"a\"") && printed.contains("r"));
        assert!(!printed.contains("cipher"));
    }
}
