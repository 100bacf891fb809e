//! The per-patient date shift of the Retain Longitudinal Temporal Information
//! with Modified Dates Option: one offset in days, derived from the site key
//! and the original Patient ID, applied to every DA and DT alike so that
//! intervals within a patient's record survive.

use crate::keyfile::SiteKey;
use crate::phi::keyed_digest;
use time::{Date, Duration, Month};

/// The shift in days for a patient, uniform in `[low, high]`.
pub fn shift_days(key: &SiteKey, patient_id: &str, [low, high]: [i32; 2]) -> i64 {
    let digest = keyed_digest(key, "synthd/date-shift", &[patient_id.as_bytes()]);
    let span = (high as i64 - low as i64 + 1).max(1) as u64;
    let value = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    low as i64 + (value % span) as i64
}

fn parse_date(text: &str) -> Option<Date> {
    if text.len() < 8 || !text[..8].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = text[..4].parse().ok()?;
    let month: u8 = text[4..6].parse().ok()?;
    let day: u8 = text[6..8].parse().ok()?;
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

fn format_date(date: Date) -> String {
    format!("{:04}{:02}{:02}", date.year(), date.month() as u8, date.day())
}

/// Shifts a DA value (YYYYMMDD, or a range `A-B`); None when it is not a date.
pub fn shift_da(value: &str, days: i64) -> Option<String> {
    let value = value.trim();
    if let Some((from, to)) = value.split_once('-') {
        let shift = |part: &str| {
            if part.is_empty() {
                Some(String::new())
            } else {
                shift_da(part, days)
            }
        };
        return Some(format!("{}-{}", shift(from)?, shift(to)?));
    }
    if value.len() != 8 {
        return None;
    }
    let date = parse_date(value)?;
    Some(format_date(date.checked_add(Duration::days(days))?))
}

/// Shifts the date part of a DT value, keeping time and UTC offset.
pub fn shift_dt(value: &str, days: i64) -> Option<String> {
    let value = value.trim();
    if value.len() < 8 {
        // A year or year-month alone carries no day to shift; blank it rather
        // than keep an original value.
        return None;
    }
    let date = parse_date(&value[..8])?;
    let shifted = format_date(date.checked_add(Duration::days(days))?);
    Some(format!("{shifted}{}", &value[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_shift_across_month_and_year_ends() {
        assert_eq!(shift_da("20240101", -1).unwrap(), "20231231");
        assert_eq!(shift_da("20240228", 1).unwrap(), "20240229");
        assert_eq!(shift_da("20240101-20240110", -10).unwrap(), "20231222-20231231");
        assert_eq!(shift_dt("20240101120000.5+0100", -1).unwrap(), "20231231120000.5+0100");
        assert!(shift_da("2024", 1).is_none());
    }

    #[test]
    fn shift_is_per_patient_and_in_range() {
        let key = SiteKey::from_bytes([5; 32]);
        let a = shift_days(&key, "FAKE-0001", [-365, -1]);
        assert_eq!(a, shift_days(&key, "FAKE-0001", [-365, -1]));
        assert!((-365..=-1).contains(&a));
        let distinct: std::collections::HashSet<i64> = (0..50)
            .map(|i| shift_days(&key, &format!("FAKE-{i}"), [-365, -1]))
            .collect();
        assert!(distinct.len() > 30, "shifts spread over the range");
    }
}
