//! Rotating a local keyring's master keys: `rotate` adds a region's new current key, and
//! `retire` removes the keys it wrapped under before, once no copy needs them.
//!
//! Each change rewrites the keyring file whole: written to a private temporary file beside
//! it and renamed into place, so a reader sees the old keyring or the new, never half of one.
//! A lock file beside the keyring keeps two changes from losing one another's keys.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use aes_gcm::aead::rand_core::RngCore as _;
use aes_gcm::aead::{KeyInit as _, OsRng};
use aes_gcm::Aes256Gcm;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::local_kms::{
    check_key_name, read_keyring_file, KeyringFile, RegionKeys, ROTATED_KEYRING_FORMAT,
};
use crate::{KeyringError, LocalKeyring};

impl LocalKeyring {
    /// Gives `region` a new master key in the keyring at `path`, current for new copies from
    /// the next start or reload of each server; the key it replaces stays for decrypting.
    /// `configured_key` is the region's `key_ids` entry, its current key until its first
    /// rotation. Returns the new key's name: `configured_key` with `-2`, `-3`, ... appended.
    pub fn rotate(path: &Path, region: &str, configured_key: &str) -> Result<String, KeyringError> {
        let _lock = Lock::take(path)?;
        let mut file = read_keyring_file(path)?;
        let was = file.regions.remove(region).unwrap_or_else(|| RegionKeys {
            current: configured_key.to_owned(),
            previous: Vec::new(),
            retired: Vec::new(),
        });
        if !file.keys.contains_key(&was.current) {
            return Err(KeyringError::MissingKey(was.current));
        }
        let name = (2_u32..)
            .map(|n| format!("{configured_key}-{n}"))
            .find(|name| {
                !file.keys.contains_key(name)
                    && !file
                        .regions
                        .values()
                        .chain([&was])
                        .any(|r| r.retired.contains(name))
            })
            .expect("some suffix is free");
        check_key_name(&name)?;
        file.keys
            .insert(name.clone(), BASE64.encode(Aes256Gcm::generate_key(OsRng)));
        let mut previous = was.previous;
        previous.push(was.current);
        file.regions.insert(
            region.to_owned(),
            RegionKeys {
                current: name.clone(),
                previous,
                retired: was.retired,
            },
        );
        file.format = ROTATED_KEYRING_FORMAT;
        write_keyring_file(path, &file)?;
        Ok(name)
    }

    /// The master keys `region` wrapped under before its current one, which
    /// [`LocalKeyring::retire`] would remove.
    pub fn previous_keys(&self, region: &str) -> &[String] {
        self.regions.get(region).map_or(&[], |r| &r.previous)
    }

    /// Removes from the keyring at `path` the master keys `region` wrapped under before its
    /// current one, but those named in `keep` (keys the configuration names elsewhere) or
    /// held by another region. The caller checks first that no copy needs them; they are
    /// gone for good. Returns the names removed.
    pub fn retire(path: &Path, region: &str, keep: &[&str]) -> Result<Vec<String>, KeyringError> {
        let _lock = Lock::take(path)?;
        let mut file = read_keyring_file(path)?;
        let Some(mut keys) = file.regions.remove(region) else {
            return Ok(Vec::new());
        };
        let held_elsewhere = |name: &String| {
            keep.contains(&name.as_str())
                || file
                    .regions
                    .values()
                    .any(|r| r.current == *name || r.previous.contains(name))
        };
        let (kept, retired): (Vec<String>, Vec<String>) =
            keys.previous.into_iter().partition(held_elsewhere);
        keys.previous = kept;
        for name in &retired {
            if let Some(mut encoded) = file.keys.remove(name) {
                zeroize::Zeroize::zeroize(&mut encoded);
            }
        }
        keys.retired.extend(retired.iter().cloned());
        file.regions.insert(region.to_owned(), keys);
        write_keyring_file(path, &file)?;
        Ok(retired)
    }
}

/// Writes `file` over the keyring at `path` through a private temporary file and a rename.
fn write_keyring_file(path: &Path, file: &KeyringFile) -> Result<(), KeyringError> {
    let io_err = |source| KeyringError::Io {
        path: path.to_owned(),
        source,
    };
    let text = Zeroizing::new(
        serde_json::to_string_pretty(file)
            .map_err(io::Error::other)
            .map_err(io_err)?,
    );
    let tmp = sibling(path, &format!(".{}.tmp", OsRng.next_u64()));
    let written = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io_err)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err)
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// `<keyring>.lock`, held while a change rewrites the keyring.
struct Lock(PathBuf);

impl Lock {
    fn take(keyring: &Path) -> Result<Self, KeyringError> {
        let path = sibling(keyring, ".lock");
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => Ok(Self(path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(KeyringError::Io {
                path: path.clone(),
                source: io::Error::other(format!(
                    "another keyring change holds {}; if none is running (a change was \
                     interrupted), remove that file and try again",
                    path.display()
                )),
            }),
            Err(source) => Err(KeyringError::Io { path, source }),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DataKey, EncryptionContext, KeyId, Kms as _};

    fn context() -> EncryptionContext {
        EncryptionContext::for_id(&KeyId::parse("id").unwrap())
    }

    #[tokio::test]
    async fn a_rotated_region_wraps_under_its_new_key_and_still_reads_the_old_until_retired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let first = LocalKeyring::open_or_create(&path, &["k1", "k2"]).unwrap();
        let old = first.region_with_previous("r1", "k1", &[]).unwrap();
        let key = DataKey::new(vec![9; 32]);
        let old_copy = old.encrypt(&key, &context()).await.unwrap();

        assert_eq!(LocalKeyring::rotate(&path, "r1", "k1").unwrap(), "k1-2");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let rotated = LocalKeyring::open_or_create(&path, &["k1", "k2"]).unwrap();
        let r1 = rotated.region_with_previous("r1", "k1", &[]).unwrap();
        assert_eq!(r1.master_key(), "k1-2");
        assert_eq!(r1.previous_master_keys(), ["k1"]);
        assert_eq!(rotated.previous_keys("r1"), ["k1"]);
        let back = r1.decrypt_under("k1", &old_copy, &context()).await.unwrap();
        assert_eq!(back.expose_secret(), key.expose_secret());
        // Another region is untouched.
        let r2 = rotated.region_with_previous("r2", "k2", &[]).unwrap();
        assert_eq!(r2.master_key(), "k2");

        assert_eq!(LocalKeyring::rotate(&path, "r1", "k1").unwrap(), "k1-3");
        let twice = LocalKeyring::open_or_create(&path, &["k1"]).unwrap();
        assert_eq!(twice.previous_keys("r1"), ["k1", "k1-2"]);

        // A key named elsewhere stays; the others go, and the keyring still opens with the
        // configuration that named the first key.
        assert_eq!(
            LocalKeyring::retire(&path, "r1", &["k1-2"]).unwrap(),
            ["k1"]
        );
        let retired = LocalKeyring::open_or_create(&path, &["k1", "k2"]).unwrap();
        let r1 = retired.region_with_previous("r1", "k1", &[]).unwrap();
        assert_eq!(r1.master_key(), "k1-3");
        assert_eq!(r1.previous_master_keys(), ["k1-2"]);
        assert!(r1.decrypt_under("k1", &old_copy, &context()).await.is_err());
        assert!(!fs::read_to_string(&path).unwrap().contains("\"k1\":"));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary or lock file left"
        );
    }

    #[test]
    fn a_change_under_way_blocks_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        LocalKeyring::open_or_create(&path, &["k1"]).unwrap();
        let held = Lock::take(&path).unwrap();
        let message = LocalKeyring::rotate(&path, "r1", "k1")
            .expect_err("refused while locked")
            .to_string();
        assert!(message.contains("another keyring change"), "{message}");
        drop(held);
        LocalKeyring::rotate(&path, "r1", "k1").unwrap();
    }

    #[test]
    fn a_missing_current_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        LocalKeyring::open_or_create(&path, &["k1"]).unwrap();
        assert!(matches!(
            LocalKeyring::rotate(&path, "r1", "nope"),
            Err(KeyringError::MissingKey(_))
        ));
    }
}
