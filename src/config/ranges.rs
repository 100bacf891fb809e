//! Range-checked numbers for config values; each error says what range is expected.

use serde::{de, Deserialize, Deserializer};

/// A whole number in `MIN..=MAX`; a wrong type is reported in the same words.
pub fn u32_in<'de, const MIN: u32, const MAX: u32, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    struct WholeNumber<const MIN: u32, const MAX: u32>;

    impl<const MIN: u32, const MAX: u32> de::Visitor<'_> for WholeNumber<MIN, MAX> {
        type Value = u32;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a whole number between {MIN} and {MAX}")
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u32, E> {
            if value < MIN as i64 || value > MAX as i64 {
                return Err(E::custom(format!(
                    "{value} is out of range: expected a whole number between {MIN} and {MAX}"
                )));
            }
            Ok(value as u32)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u32, E> {
            self.visit_i64(i64::try_from(value).unwrap_or(i64::MAX))
        }
    }

    deserializer.deserialize_i64(WholeNumber::<MIN, MAX>)
}

fn f32_in<'de, D: Deserializer<'de>>(deserializer: D, min: f32, max: f32) -> Result<f32, D::Error> {
    let value = f64::deserialize(deserializer)? as f32;
    if !(min..=max).contains(&value) {
        return Err(de::Error::custom(format!(
            "{value} is out of range: expected a number between {min} and {max}"
        )));
    }
    Ok(value)
}

pub fn unit_interval<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f32, D::Error> {
    f32_in(deserializer, 0.0, 1.0)
}

pub fn guidance<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f32, D::Error> {
    f32_in(deserializer, 0.0, 50.0)
}

pub fn dilate_mm<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f32, D::Error> {
    f32_in(deserializer, 0.0, 10.0)
}

pub fn diameter_mm<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[f32; 2], D::Error> {
    let [low, high] = <[f64; 2]>::deserialize(deserializer)?;
    if !(low > 0.0 && low <= high && high <= 200.0) {
        return Err(de::Error::custom(format!(
            "[{low}, {high}] is not a diameter range: expected [min, max] in millimetres with 0 < min <= max <= 200"
        )));
    }
    Ok([low as f32, high as f32])
}
