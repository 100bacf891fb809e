//! Stored pixel values ↔ real-world values, and back to stored values of the
//! same bits and representation. Pixels outside an inpainting mask are copied
//! as stored integers, never round-tripped through floats, so they stay
//! identical to the source.

use super::OutputError;
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};

/// The Image Pixel module facts needed to read and write one grayscale frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelFormat {
    pub rows: usize,
    pub columns: usize,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
}

impl PixelFormat {
    pub fn of(object: &DefaultDicomObject) -> Result<PixelFormat, OutputError> {
        let int = |tag, name: &'static str| -> Result<u32, OutputError> {
            object
                .get(tag)
                .and_then(|e| e.to_int::<u32>().ok())
                .ok_or(OutputError::MissingAttribute(name))
        };
        let float = |tag, default: f64| object.get(tag).and_then(|e| e.to_float64().ok()).unwrap_or(default);
        let samples = object
            .get(tags::SAMPLES_PER_PIXEL)
            .and_then(|e| e.to_int::<u16>().ok())
            .unwrap_or(1);
        if samples != 1 {
            return Err(OutputError::Unsupported(
                "only grayscale images (Samples per Pixel = 1) can be synthesized",
            ));
        }
        let frames = object
            .get(tags::NUMBER_OF_FRAMES)
            .and_then(|e| e.to_int::<u32>().ok())
            .unwrap_or(1);
        if frames != 1 {
            return Err(OutputError::Unsupported("only single-frame images can be synthesized"));
        }
        let format = PixelFormat {
            rows: int(tags::ROWS, "Rows")? as usize,
            columns: int(tags::COLUMNS, "Columns")? as usize,
            bits_allocated: int(tags::BITS_ALLOCATED, "BitsAllocated")? as u16,
            bits_stored: int(tags::BITS_STORED, "BitsStored")? as u16,
            signed: int(tags::PIXEL_REPRESENTATION, "PixelRepresentation")? == 1,
            rescale_slope: float(tags::RESCALE_SLOPE, 1.0),
            rescale_intercept: float(tags::RESCALE_INTERCEPT, 0.0),
        };
        if !(format.bits_allocated == 8 || format.bits_allocated == 16)
            || format.bits_stored == 0
            || format.bits_stored > format.bits_allocated
        {
            return Err(OutputError::Unsupported(
                "only 8- and 16-bit grayscale pixel data can be synthesized",
            ));
        }
        if format.rescale_slope == 0.0 {
            return Err(OutputError::Unsupported("Rescale Slope is 0"));
        }
        Ok(format)
    }

    pub fn pixel_count(&self) -> usize {
        self.rows * self.columns
    }

    /// The smallest and largest stored value the bits allow.
    pub fn stored_range(&self) -> (i32, i32) {
        let bits = self.bits_stored as u32;
        if self.signed {
            (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1)
        } else {
            (0, ((1i64 << bits) - 1) as i32)
        }
    }

    pub fn to_real(&self, stored: i32) -> f32 {
        (stored as f64 * self.rescale_slope + self.rescale_intercept) as f32
    }

    /// The stored value whose real value is nearest to `real`, clipped to the
    /// range the bits allow.
    pub fn to_stored(&self, real: f32) -> i32 {
        let (low, high) = self.stored_range();
        let stored = ((real as f64 - self.rescale_intercept) / self.rescale_slope).round();
        if stored.is_nan() {
            return low;
        }
        (stored as i64).clamp(low as i64, high as i64) as i32
    }
}

/// The stored values of the single frame, decoded from any transfer syntax
/// dicom-pixeldata supports, without applying the modality LUT.
pub fn stored_values(object: &DefaultDicomObject, format: &PixelFormat) -> Result<Vec<i32>, OutputError> {
    let decoded = object
        .decode_pixel_data()
        .map_err(|e| OutputError::PixelData(e.to_string()))?;
    let options = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
    let values: Vec<i32> = decoded
        .to_vec_with_options(&options)
        .map_err(|e| OutputError::PixelData(e.to_string()))?;
    if values.len() != format.pixel_count() {
        return Err(OutputError::PixelData(format!(
            "decoded {} values for a {}x{} image",
            values.len(),
            format.rows,
            format.columns
        )));
    }
    Ok(values)
}

/// Inside the mask the synthetic value (encoded to stored), outside the
/// source's stored value untouched.
pub fn compose(format: &PixelFormat, source: &[i32], synthetic_real: &[f32], mask: &[u8]) -> Vec<i32> {
    source
        .iter()
        .zip(synthetic_real)
        .zip(mask)
        .map(|((&original, &real), &inside)| if inside != 0 { format.to_stored(real) } else { original })
        .collect()
}

/// Window Center and Width (real units) spanning the 0.5th to 99.5th
/// percentile of the image, so that a viewer shows the synthetic content.
pub fn window(format: &PixelFormat, stored: &[i32]) -> (f64, f64) {
    let mut sorted: Vec<i32> = stored.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return (0.0, 1.0);
    }
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let low = format.to_real(at(0.005)) as f64;
    let high = format.to_real(at(0.995)) as f64;
    let width = (high - low).max(1.0);
    ((low + high) / 2.0, width)
}

/// Native little-endian Pixel Data of the same bits and representation.
pub fn pixel_data_value(format: &PixelFormat, stored: &[i32]) -> dicom_core::value::PrimitiveValue {
    use dicom_core::value::PrimitiveValue;
    let (low, high) = format.stored_range();
    let mask = if format.bits_stored >= 16 {
        0xFFFF_u32
    } else {
        (1u32 << format.bits_stored) - 1
    };
    match format.bits_allocated {
        8 => PrimitiveValue::U8(
            stored
                .iter()
                .map(|&v| (v.clamp(low, high) as u32 & 0xFF) as u8)
                .collect(),
        ),
        _ if format.signed => {
            // Two's complement within BitsStored, as the standard stores signed values.
            PrimitiveValue::U16(
                stored
                    .iter()
                    .map(|&v| (v.clamp(low, high) as u32 & mask) as u16)
                    .map(|v| sign_extend(v, format.bits_stored))
                    .collect(),
            )
        }
        _ => PrimitiveValue::U16(stored.iter().map(|&v| v.clamp(low, high) as u16).collect()),
    }
}

/// Sign-extends a BitsStored-wide two's complement value to 16 bits, which is
/// how most writers store signed pixels (the high bits are ignored by readers).
fn sign_extend(value: u16, bits: u16) -> u16 {
    if bits >= 16 {
        return value;
    }
    let sign = 1u16 << (bits - 1);
    if value & sign != 0 {
        value | !((1u16 << bits) - 1)
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(bits_stored: u16, signed: bool, slope: f64, intercept: f64) -> PixelFormat {
        PixelFormat {
            rows: 2,
            columns: 2,
            bits_allocated: 16,
            bits_stored,
            signed,
            rescale_slope: slope,
            rescale_intercept: intercept,
        }
    }

    #[test]
    fn stored_real_round_trip_and_clipping() {
        let ct = format(12, true, 1.0, -1024.0);
        assert_eq!(ct.stored_range(), (-2048, 2047));
        assert_eq!(ct.to_stored(ct.to_real(1000)), 1000);
        assert_eq!(ct.to_stored(1e9), 2047);
        let mr = format(16, false, 2.5, 0.0);
        assert_eq!(mr.to_stored(25.1), 10);
        assert_eq!(mr.to_stored(-5.0), 0);
    }

    #[test]
    fn compose_keeps_outside_mask_exactly() {
        let f = format(16, false, 0.3, 7.0);
        let source = [1, 65535, 300, 40000];
        let synthetic = [0.0, 0.0, 100.0, 0.0];
        let out = compose(&f, &source, &synthetic, &[0, 0, 1, 0]);
        assert_eq!(out, vec![1, 65535, 310, 40000]);
    }

    #[test]
    fn signed_pixels_are_sign_extended() {
        let f = format(12, true, 1.0, 0.0);
        match pixel_data_value(&f, &[-1, 5]) {
            dicom_core::value::PrimitiveValue::U16(v) => assert_eq!(v.as_slice(), &[0xFFFF, 5]),
            other => panic!("unexpected {other:?}"),
        }
    }
}
