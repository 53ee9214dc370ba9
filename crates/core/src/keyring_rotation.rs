//! Rotating a local keyring's master keys: `rotate` adds a region's new current key, and
//! `retire` removes the keys it wrapped under before, once no copy needs them.
//!
//! Each change rewrites the keyring file whole: written to a private temporary file beside
//! it and renamed into place, so a reader sees the old keyring or the new, never half of one.
//! A lock file beside the keyring keeps two changes from losing one another's keys.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use aes_gcm::aead::rand_core::RngCore as _;
use aes_gcm::aead::{KeyInit as _, OsRng};
use aes_gcm::Aes256Gcm;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use zeroize::{Zeroize as _, Zeroizing};

use crate::local_kms::{
    check_key_name, read_keyring_file, KeyringFile, RegionKeys, ROTATED_KEYRING_FORMAT,
};
use crate::{KeyringError, LocalKeyring};

impl LocalKeyring {
    /// Gives `region` a new master key in the keyring at `path`, current for new copies from
    /// the next start or reload of each server; the key it replaces stays for decrypting.
    /// `configured_key` is the region's `key_ids` entry, its current key until its first
    /// rotation. Returns the new key's name: `configured_key`, the rotation's number (`-2`,
    /// `-3`, ...) and a random tag, so that two copies of a keyring rotated apart never give
    /// two different keys one name.
    pub fn rotate(path: &Path, region: &str, configured_key: &str) -> Result<String, KeyringError> {
        let path = &resolved(path)?;
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
        let number = was.previous.len() + was.retired.len() + 2;
        let name = format!("{configured_key}-{number}-{:08x}", OsRng.next_u32());
        check_key_name(&name)?;
        let mut key = Aes256Gcm::generate_key(OsRng);
        file.keys.insert(name.clone(), BASE64.encode(key));
        key.as_mut_slice().zeroize();
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

    /// The current key of `region` if the keyring rotated it (it then overrides `key_ids`).
    pub fn rotated_key(&self, region: &str) -> Option<&str> {
        self.regions.get(region).map(|r| r.current.as_str())
    }

    /// Removes from the keyring at `path` those of `checked` that `region` still holds as
    /// previous keys, but those named in `keep` (keys the configuration names elsewhere), any
    /// region's current key, and keys another region holds. `checked` are the previous keys
    /// the caller found no copy under, read before it looked: a key that became previous
    /// since (a rotation meanwhile) is never removed unchecked. They are gone for good.
    /// Returns the names removed.
    pub fn retire(
        path: &Path,
        region: &str,
        checked: &[String],
        keep: &[&str],
    ) -> Result<Vec<String>, KeyringError> {
        let path = &resolved(path)?;
        let _lock = Lock::take(path)?;
        let mut file = read_keyring_file(path)?;
        let Some(mut keys) = file.regions.remove(region) else {
            return Ok(Vec::new());
        };
        let current = keys.current.clone();
        let held = |name: &String| {
            !checked.contains(name)
                || keep.contains(&name.as_str())
                || *name == current
                || file
                    .regions
                    .values()
                    .any(|r| r.current == *name || r.previous.contains(name))
        };
        let (kept, retired): (Vec<String>, Vec<String>) = keys.previous.into_iter().partition(held);
        keys.previous = kept;
        for name in &retired {
            if let Some(mut encoded) = file.keys.remove(name) {
                encoded.zeroize();
            }
        }
        keys.retired.extend(retired.iter().cloned());
        file.regions.insert(region.to_owned(), keys);
        write_keyring_file(path, &file)?;
        Ok(retired)
    }
}

/// The keyring file itself, through any symbolic link, so that a rewrite replaces the file
/// the link points at rather than the link.
fn resolved(path: &Path) -> Result<PathBuf, KeyringError> {
    fs::canonicalize(path).map_err(|source| KeyringError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `file` over the keyring at `path` through a private temporary file and a rename,
/// keeping the file's owner and group: a change run as root must leave the keyring readable
/// by the server's user.
fn write_keyring_file(path: &Path, file: &KeyringFile) -> Result<(), KeyringError> {
    let io_err = |source| KeyringError::Io {
        path: path.to_owned(),
        source,
    };
    let owner = fs::metadata(path).map_err(io_err)?;
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
        std::os::unix::fs::fchown(&out, Some(owner.uid()), Some(owner.gid()))?;
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

        let second = LocalKeyring::rotate(&path, "r1", "k1").unwrap();
        assert!(
            second.starts_with("k1-2-") && second.len() == "k1-2-".len() + 8,
            "{second}"
        );
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let rotated = LocalKeyring::open_or_create(&path, &["k1", "k2"]).unwrap();
        let r1 = rotated.region_with_previous("r1", "k1", &[]).unwrap();
        assert_eq!(r1.master_key(), second);
        assert_eq!(r1.previous_master_keys(), ["k1"]);
        assert_eq!(rotated.previous_keys("r1"), ["k1"]);
        let back = r1.decrypt_under("k1", &old_copy, &context()).await.unwrap();
        assert_eq!(back.expose_secret(), key.expose_secret());
        // Another region is untouched.
        let r2 = rotated.region_with_previous("r2", "k2", &[]).unwrap();
        assert_eq!(r2.master_key(), "k2");

        // What a retirement reads before it walks the store; a rotation comes meanwhile.
        let checked = LocalKeyring::open(&path)
            .unwrap()
            .previous_keys("r1")
            .to_vec();
        let third = LocalKeyring::rotate(&path, "r1", "k1").unwrap();
        assert!(third.starts_with("k1-3-"), "{third}");
        let twice = LocalKeyring::open_or_create(&path, &["k1"]).unwrap();
        assert_eq!(twice.previous_keys("r1"), ["k1".to_owned(), second.clone()]);

        // Only the key checked is removed, not the one the rotation made previous since; the
        // keyring still opens with the configuration that named the first key.
        assert_eq!(
            LocalKeyring::retire(&path, "r1", &checked, &[]).unwrap(),
            ["k1"]
        );
        let retired = LocalKeyring::open_or_create(&path, &["k1", "k2"]).unwrap();
        let r1 = retired.region_with_previous("r1", "k1", &[]).unwrap();
        assert_eq!(r1.master_key(), third);
        assert_eq!(r1.previous_master_keys(), std::slice::from_ref(&second));
        let everything = retired.previous_keys("r1").to_vec();
        assert_eq!(
            LocalKeyring::retire(&path, "r1", &everything, &[second.as_str()]).unwrap(),
            Vec::<String>::new(),
            "a key the configuration names is kept"
        );
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
    fn a_keyring_behind_a_link_is_changed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        LocalKeyring::open_or_create(&real, &["k1"]).unwrap();
        let link = dir.path().join("keyring.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let name = LocalKeyring::rotate(&link, "r1", "k1").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            LocalKeyring::open(&real).unwrap().rotated_key("r1"),
            Some(name.as_str())
        );
    }

    #[test]
    fn a_rotated_region_whose_current_key_is_also_previous_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        LocalKeyring::open_or_create(&path, &["k1"]).unwrap();
        LocalKeyring::rotate(&path, "r1", "k1").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let current = LocalKeyring::open(&path)
            .unwrap()
            .rotated_key("r1")
            .unwrap()
            .to_owned();
        let edited = text.replacen("\"k1\"\n", &format!("\"k1\", \"{current}\"\n"), 1);
        assert_ne!(edited, text);
        fs::write(&path, edited).unwrap();
        let message = LocalKeyring::open(&path).expect_err("refused").to_string();
        assert!(
            message.contains("current key as a previous one"),
            "{message}"
        );
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
