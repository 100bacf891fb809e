//! Human-friendly units in config files: durations ("60s", "5m") and sizes ("10GiB").
//!
//! Both deserialize from strings so that a bad value is reported by toml with
//! the span of the offending value, which `validate` turns into file:line:col.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written as a number followed by a unit: `ms`, `s`, `m`, `h` or `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        HumanDuration(Duration::from_secs(secs))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = "expected a duration such as \"500ms\", \"2s\", \"5m\", \"1h\" or \"7d\"";
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: {expected}"))?;
        let seconds_per_unit = match unit.trim() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => return Err(format!("duration {text:?} has no unit: {expected}")),
            other => return Err(format!("unknown duration unit {other:?}: {expected}")),
        };
        let seconds = value * seconds_per_unit;
        if !seconds.is_finite() || seconds > 10.0 * 365.0 * 86400.0 {
            return Err(format!("duration {text:?} is out of range (at most 10 years)"));
        }
        Ok(HumanDuration(Duration::from_secs_f64(seconds)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 != 0 {
            write!(f, "{ms}ms")
        } else {
            let s = self.0.as_secs();
            match s {
                s if s != 0 && s % 86400 == 0 => write!(f, "{}d", s / 86400),
                s if s != 0 && s % 3600 == 0 => write!(f, "{}h", s / 3600),
                s if s != 0 && s % 60 == 0 => write!(f, "{}m", s / 60),
                s => write!(f, "{s}s"),
            }
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A byte size written as a number and a unit: `B`, `KiB`, `MiB`, `GiB`, `TiB` (or the decimal `KB`, `MB`, `GB`, `TB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = "expected a size such as \"512MiB\", \"10GiB\" or \"1TB\"";
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid size {text:?}: {expected}"))?;
        let multiplier: f64 = match unit.trim() {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            "TiB" => 1024.0f64.powi(4),
            "KB" | "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "TB" => 1e12,
            "" => return Err(format!("size {text:?} has no unit: {expected}")),
            other => return Err(format!("unknown size unit {other:?}: {expected}")),
        };
        let bytes = value * multiplier;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(format!("size {text:?} is out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{}B", self.0)
        } else {
            write!(f, "{value:.1}{}", UNITS[unit])
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!("60s".parse::<HumanDuration>().unwrap().0, Duration::from_secs(60));
        assert_eq!("5m".parse::<HumanDuration>().unwrap().0, Duration::from_secs(300));
        assert_eq!("500ms".parse::<HumanDuration>().unwrap().0, Duration::from_millis(500));
        assert_eq!("1.5h".parse::<HumanDuration>().unwrap().0, Duration::from_secs(5400));
        assert_eq!("7d".parse::<HumanDuration>().unwrap().to_string(), "7d");
    }

    #[test]
    fn durations_reject_missing_or_unknown_units() {
        assert!("60".parse::<HumanDuration>().unwrap_err().contains("no unit"));
        assert!("5 fortnights"
            .parse::<HumanDuration>()
            .unwrap_err()
            .contains("unknown duration unit"));
        assert!("soon".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!("10GiB".parse::<ByteSize>().unwrap().0, 10 * 1024 * 1024 * 1024);
        assert_eq!("1MB".parse::<ByteSize>().unwrap().0, 1_000_000);
        assert!("10".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(1536).to_string(), "1.5KiB");
    }
}
