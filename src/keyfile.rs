//! The site key: 32 random bytes that key every UID remapping, pseudonym and
//! date shift. Whoever holds it can recompute mappings, so it must be 0600.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const KEY_LEN: usize = 32;

/// The site key. Debug and Display never show the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SiteKey([u8; KEY_LEN]);

impl SiteKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SiteKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Reads a key file, refusing one that group or others can read.
    pub fn read(path: &Path) -> Result<SiteKey, String> {
        check_permissions(path)?;
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            format!(
                "key file {} holds {} bytes; expected {KEY_LEN} random bytes as written by `synthd keygen`",
                path.display(),
                bytes.len()
            )
        })?;
        Ok(SiteKey(array))
    }
}

impl fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SiteKey(..)")
    }
}

/// Writes a fresh key with mode 0600; never overwrites an existing file.
pub fn generate(path: &Path) -> Result<(), String> {
    let mut bytes = [0u8; KEY_LEN];
    getrandom::fill(&mut bytes).map_err(|e| format!("cannot get random bytes for the key: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} already exists; synthd never overwrites a key (mappings made with it would become unreproducible)",
                path.display()
            ),
            _ => format!("cannot create key file {}: {e}", path.display()),
        })?;
    file.write_all(&bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("cannot write key file {}: {e}", path.display()))
}

/// Ok when the key file exists, is a regular file, and only its owner may read it.
pub fn check_permissions(path: &Path) -> Result<(), String> {
    let metadata = std::fs::metadata(path).map_err(|e| {
        format!(
            "key file {} cannot be read ({e}); create one with `synthd keygen {}`",
            path.display(),
            path.display()
        )
    })?;
    if !metadata.is_file() {
        return Err(format!("key file {} is not a regular file", path.display()));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "key file {} has mode {mode:04o}; expected 0600 (run `chmod 600 {}`)",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.key");
        generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key = SiteKey::read(&path).unwrap();
        assert_eq!(format!("{key:?}"), "SiteKey(..)");
        assert!(generate(&path).unwrap_err().contains("never overwrites"));
    }

    #[test]
    fn group_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.key");
        generate(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(SiteKey::read(&path).unwrap_err().contains("expected 0600"));
    }
}
