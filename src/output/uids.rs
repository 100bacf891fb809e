//! UIDs of everything synthd creates, derived from the site key and what the
//! object is made of, so that a replay rewrites identical files.

use crate::keyfile::SiteKey;
use crate::phi::keyed_digest;

/// `2.25.<decimal>` from the first 128 bits of a keyed digest of `parts`
/// under `domain` (ISO/IEC 9834-8 UUID-derived UIDs fit in 64 characters).
pub fn derived_uid(key: &SiteKey, domain: &str, parts: &[&str]) -> String {
    let bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    let digest = keyed_digest(key, domain, &bytes);
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    format!("2.25.{}", u128::from_be_bytes(first))
}

/// The identity of one synthetic variant of one source series.
#[derive(Debug, Clone)]
pub struct VariantIdentity<'a> {
    pub pipeline: &'a str,
    pub model_sha256: &'a str,
    pub variant: u32,
}

impl VariantIdentity<'_> {
    fn parts<'b>(&'b self, variant: &'b str, source: &'b str) -> [&'b str; 4] {
        [source, self.pipeline, self.model_sha256, variant]
    }

    pub fn series_uid(&self, key: &SiteKey, source_series_uid: &str) -> String {
        let variant = self.variant.to_string();
        derived_uid(key, "synthd/synthetic-series", &self.parts(&variant, source_series_uid))
    }

    pub fn instance_uid(&self, key: &SiteKey, source_sop_instance_uid: &str) -> String {
        let variant = self.variant.to_string();
        derived_uid(
            key,
            "synthd/synthetic-instance",
            &self.parts(&variant, source_sop_instance_uid),
        )
    }

    pub fn seg_series_uid(&self, key: &SiteKey, source_series_uid: &str) -> String {
        let variant = self.variant.to_string();
        derived_uid(key, "synthd/seg-series", &self.parts(&variant, source_series_uid))
    }

    pub fn seg_instance_uid(&self, key: &SiteKey, source_series_uid: &str) -> String {
        let variant = self.variant.to_string();
        derived_uid(key, "synthd/seg-instance", &self.parts(&variant, source_series_uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uids_are_valid_stable_and_distinct() {
        let key = SiteKey::from_bytes([7; 32]);
        let identity = VariantIdentity {
            pipeline: "brain-mri-inpaint",
            model_sha256: "ab",
            variant: 0,
        };
        let a = identity.instance_uid(&key, "2.25.1");
        assert_eq!(a, identity.instance_uid(&key, "2.25.1"));
        assert!(a.starts_with("2.25.") && a.len() <= 64);
        assert!(a[5..].chars().all(|c| c.is_ascii_digit()) && !a[5..].starts_with('0'));
        let other_variant = VariantIdentity {
            variant: 1,
            ..identity.clone()
        };
        assert_ne!(a, other_variant.instance_uid(&key, "2.25.1"));
        assert_ne!(a, identity.series_uid(&key, "2.25.1"));
        assert_ne!(a, identity.instance_uid(&SiteKey::from_bytes([8; 32]), "2.25.1"));
    }
}
