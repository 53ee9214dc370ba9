//! Tokens the server makes itself (`[[principals]] generated_token_file`), for quick starts
//! such as the Compose setup, where a token written in a published file would be everyone's.
//! At a start where the file does not exist yet, the server makes a token, keeps only its
//! hash in the file (mode 0600), and hands the token back to be shown once.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::access::principal_error;
use super::{ConfigError, Settings};
use crate::auth::{new_token, TokenHash};

/// A principal whose token hash is kept in a file the server writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedToken {
    /// The principal's name.
    pub principal: String,
    /// Where its hash is kept.
    pub file: PathBuf,
}

/// A token made at this start, to be shown once: only its hash is kept.
pub struct NewToken {
    /// The principal it authenticates.
    pub principal: String,
    /// Where its hash is kept.
    pub file: PathBuf,
    /// The token itself.
    pub token: Zeroizing<String>,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("principal", &self.principal)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Adds each `generated_token_file`'s hash to its principal's tokens, first making the
    /// token and the file where the file does not exist. Returns the tokens made, which the
    /// caller shows once. Until this runs, such a principal has no token.
    pub fn load_generated_tokens(&mut self) -> Result<Vec<NewToken>, ConfigError> {
        let mut made = Vec::new();
        for generated in &self.generated_tokens {
            let error = |e: String| {
                principal_error(
                    &generated.principal,
                    format!("generated_token_file {}: {e}", generated.file.display()),
                )
            };
            let hash = match read_hash(&generated.file).map_err(error)? {
                Some(hash) => hash,
                None => {
                    let token = new_token();
                    let hash = TokenHash::of(&token);
                    if write_new(&generated.file, &hash).map_err(error)? {
                        made.push(NewToken {
                            principal: generated.principal.clone(),
                            file: generated.file.clone(),
                            token,
                        });
                        hash
                    } else {
                        // Another server starting on the same file wrote it first.
                        read_hash(&generated.file)
                            .map_err(error)?
                            .ok_or_else(|| error("vanished while being read".into()))?
                    }
                }
            };
            if self.principals.iter().any(|p| p.tokens.contains(&hash)) {
                return Err(error("holds a token hash configured elsewhere".into()));
            }
            if let Some(principal) = self
                .principals
                .iter_mut()
                .find(|p| p.name == generated.principal)
            {
                principal.tokens.push(hash);
            }
        }
        Ok(made)
    }
}

impl Settings {
    /// What [`Settings::load_generated_tokens`] would refuse, without making any file: each
    /// existing file must hold a hash no principal already has; a missing one is made at start.
    pub fn check_generated_tokens(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        for generated in &self.generated_tokens {
            let error = |e: String| {
                principal_error(
                    &generated.principal,
                    format!("generated_token_file {}: {e}", generated.file.display()),
                )
            };
            match read_hash(&generated.file) {
                Ok(Some(hash)) if self.principals.iter().any(|p| p.tokens.contains(&hash)) => {
                    problems.push(error("holds a token hash configured elsewhere".into()));
                }
                Ok(_) => {}
                Err(e) => problems.push(error(e)),
            }
        }
        problems
    }
}

/// The hash in `file`, or `None` when there is no file.
fn read_hash(file: &Path) -> Result<Option<TokenHash>, String> {
    match std::fs::read_to_string(file) {
        Ok(text) => TokenHash::parse_hex(text.trim()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read it: {e}")),
    }
}

/// Writes `hash` to `file` unless it exists (then `Ok(false)`); the file appears complete or
/// not at all, so a server starting beside this one never reads half of it.
fn write_new(file: &Path, hash: &TokenHash) -> Result<bool, String> {
    let partial = file.with_extension(format!("partial-{:016x}", rand::random::<u64>()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut f| {
            f.write_all(format!("{}\n", hash.to_hex()).as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| match std::fs::hard_link(&partial, file) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        });
    let _ = std::fs::remove_file(&partial);
    written.map_err(|e| format!("cannot write it: {e}"))
}
