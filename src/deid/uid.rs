//! Keyed UID remapping: `2.25.<decimal>` from HMAC-SHA256(site key, UID).
//! The same key gives the same mapping on every file, run and machine;
//! without the key the mapping cannot be recomputed or reversed.

use crate::keyfile::SiteKey;
use crate::phi::keyed_digest;

/// The DICOM root: SOP classes, transfer syntaxes, coding schemes and other
/// registered UIDs live under it and identify no one.
const DICOM_ROOT: &str = "1.2.840.10008.";

/// Well-known UIDs outside the DICOM root that name coding schemes, not
/// instances (HL7 OIDs for SNOMED CT, LOINC, UCUM, RadLex, ...).
const REGISTERED_ELSEWHERE: &[&str] = &[
    "2.16.840.1.113883.6.96",
    "2.16.840.1.113883.6.1",
    "2.16.840.1.113883.6.8",
    "2.16.840.1.113883.6.5",
    "2.16.840.1.113883.6.3",
    "2.16.840.1.113883.6.4",
    "2.16.840.1.113883.6.103",
    "2.16.840.1.113883.6.104",
    "2.16.840.1.113883.6.42",
    "2.16.840.1.113883.6.90",
    "2.16.840.1.113883.6.24",
    "2.16.840.1.113883.6.6",
    "2.16.840.1.113883.3.26.1.1",
    "2.16.840.1.113883.6.256",
    "2.16.840.1.113883.4.349",
    "1.3.6.1.4.1.19376.1.3.4",
];

/// Whether `uid` is a registered standard UID that must be kept as is.
pub fn is_registered(uid: &str) -> bool {
    uid.starts_with(DICOM_ROOT) || REGISTERED_ELSEWHERE.contains(&uid)
}

/// Whether `uid` is a valid UID (PS3.5 9.1).
pub use crate::uid_syntax::is_valid;

/// The keyed replacement of an instance UID.
pub fn map_uid(key: &SiteKey, uid: &str) -> String {
    let digest = keyed_digest(key, "synthd/uid", &[uid.as_bytes()]);
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    format!("2.25.{}", u128::from_be_bytes(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_keyed_stable_and_valid() {
        let key = SiteKey::from_bytes([9; 32]);
        let uid = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322";
        let mapped = map_uid(&key, uid);
        assert_eq!(mapped, map_uid(&key, uid));
        assert_ne!(mapped, map_uid(&SiteKey::from_bytes([8; 32]), uid));
        assert!(mapped.len() <= 64 && mapped.starts_with("2.25."));
        assert!(mapped[5..].bytes().all(|b| b.is_ascii_digit()));
        assert!(is_registered("1.2.840.10008.5.1.4.1.1.4"));
        assert!(!is_registered(uid));
    }

    #[test]
    fn validity_follows_ps3_5_9_1() {
        assert!(is_valid("1.2.840.10008.5.1.4.1.1.4"));
        assert!(is_valid("2.25.0.10"));
        for invalid in [
            "",
            "1.02.3",
            "1..2",
            ".1.2",
            "1.2.",
            "1.2.3a",
            "1.2 .3",
            &"1.2".repeat(22),
        ] {
            assert!(!is_valid(invalid), "{invalid:?}");
        }
    }
}
