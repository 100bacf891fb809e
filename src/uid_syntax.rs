//! UID syntax (PS3.5 9.1), shared by de-identification (is a value a UID
//! to keep or to remap?) and network intake (checked before a UID becomes
//! part of a file name), so neither stage depends on the other.

/// 1 to 64 characters; dot-separated components of digits, none empty,
/// none with a leading zero unless it is `0` itself. Such a UID holds no
/// `/`, no `..` and no space, so it is safe as a file name.
pub fn is_valid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|component| {
            !component.is_empty()
                && component.bytes().all(|b| b.is_ascii_digit())
                && (component == "0" || !component.starts_with('0'))
        })
}

#[cfg(test)]
mod tests {
    use super::is_valid;

    #[test]
    fn uids_are_checked_as_ps3_5_defines_them() {
        assert!(is_valid("1.2.840.10008.5.1.4.1.1.4"));
        assert!(is_valid("2.25.0"));
        for bad in [
            "",
            "1..2",
            "1.02",
            "../etc",
            "1.2/3",
            "1.2 ",
            ".1",
            "1.",
            &"1".repeat(65),
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }
}
