//! Keeping patient values out of logs, metrics, file names and errors.
//!
//! Any value read from a patient's data that identifies someone travels as
//! [`Phi`], whose Display and Debug print a placeholder. Studies are named in
//! logs by [`StudyKey`], a keyed hash of the StudyInstanceUID.

use crate::keyfile::SiteKey;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// A value that may identify a patient. It can be used, never printed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Phi<T>(T);

impl<T> Phi<T> {
    pub fn new(value: T) -> Self {
        Phi(value)
    }

    /// The value itself, for processing. Do not format it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Phi<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Phi<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Keyed HMAC-SHA256 of `parts` under the site key, domain-separated by `domain`.
pub fn keyed_digest(key: &SiteKey, domain: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(domain.as_bytes());
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The name of a study in logs, metrics and file names: `st-` and 16 hex digits
/// of a keyed hash of its StudyInstanceUID. Not reversible without the key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StudyKey(String);

impl StudyKey {
    pub fn new(key: &SiteKey, study_instance_uid: &str) -> Self {
        let digest = keyed_digest(key, "synthd/study-key", &[study_instance_uid.as_bytes()]);
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        StudyKey(format!("st-{hex}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StudyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StudyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_never_formats_its_value() {
        let name = Phi::new("DOE^JANE".to_string());
        assert_eq!(format!("{name} {name:?}"), "[redacted] [redacted]");
        assert_eq!(name.expose(), "DOE^JANE");
    }

    #[test]
    fn study_key_is_keyed_and_stable() {
        let a = SiteKey::from_bytes([1; 32]);
        let b = SiteKey::from_bytes([2; 32]);
        let uid = "1.2.826.0.1.3680043.2.1125.1";
        assert_eq!(StudyKey::new(&a, uid), StudyKey::new(&a, uid));
        assert_ne!(StudyKey::new(&a, uid), StudyKey::new(&b, uid));
        assert!(StudyKey::new(&a, uid).as_str().starts_with("st-"));
        assert_eq!(StudyKey::new(&a, uid).as_str().len(), 19);
        assert!(!StudyKey::new(&a, uid).as_str().contains(uid));
    }
}
