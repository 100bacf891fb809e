//! Blanking the rectangles of a pixel signature in every frame of native
//! Pixel Data (Clean Pixel Data Option). Samples are set to zero, whatever
//! their size, byte order, planar configuration or photometric
//! interpretation. Compressed (encapsulated) Pixel Data is first decoded
//! ([`decode_for_cleaning`], through `crate::pixel_decode`) and the cleaned
//! image is written uncompressed in Explicit VR Little Endian: re-encoding
//! a lossy syntax would lose more of every pixel, and the output says what
//! happened (Photometric Interpretation of the decoded samples, Lossy Image
//! Compression still `01` when the source was lossy). An image that cannot
//! be decoded is quarantined: `unsupported-transfer-syntax` when this build
//! has no decoder for its syntax, `invalid-pixel-data` when the stream is
//! broken.

use super::engine::string_of;
use super::signatures::Rectangle;
use crate::quarantine::{ReasonCode, Rejection};
use dicom_core::header::Header;
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::DataElement;
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, InMemDicomObject};

/// How native Pixel Data is laid out (PS3.5 8.2, PS3.3 C.7.6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub rows: usize,
    pub columns: usize,
    pub frames: usize,
    pub samples_per_pixel: usize,
    pub bytes_per_sample: usize,
    /// Planar Configuration 1: each frame holds one plane per sample.
    pub planar: bool,
}

impl Geometry {
    pub fn of(object: &InMemDicomObject) -> Result<Geometry, Rejection> {
        let number = |tag, default: Option<usize>| {
            object
                .get(tag)
                .and_then(|e| e.to_int::<i64>().ok())
                .and_then(|n| usize::try_from(n).ok())
                .or(default)
                .ok_or_else(|| refuse("Rows, Columns or Bits Allocated is missing or not a number"))
        };
        let bits = number(tags::BITS_ALLOCATED, None)?;
        if !matches!(bits, 8 | 16 | 32) {
            return Err(refuse(&format!(
                "Bits Allocated is {bits}; synthd cleans 8, 16 and 32-bit pixels"
            )));
        }
        let photometric = string_of(object, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
        if photometric.starts_with("YBR") && photometric != "YBR_FULL" {
            return Err(refuse(&format!(
                "the pixels are chroma-subsampled ({photometric}); convert them to RGB first"
            )));
        }
        Ok(Geometry {
            rows: number(tags::ROWS, None)?,
            columns: number(tags::COLUMNS, None)?,
            frames: number(tags::NUMBER_OF_FRAMES, Some(1))?.max(1),
            samples_per_pixel: number(tags::SAMPLES_PER_PIXEL, Some(1))?.max(1),
            bytes_per_sample: bits / 8,
            planar: number(tags::PLANAR_CONFIGURATION, Some(0))? == 1,
        })
    }

    fn frame_bytes(&self) -> usize {
        self.rows * self.columns * self.samples_per_pixel * self.bytes_per_sample
    }
}

fn refuse(why: &str) -> Rejection {
    Rejection::new(
        ReasonCode::BurnedInAnnotation,
        format!("the image matches a pixel signature but cannot be cleaned: {why}"),
    )
}

/// Decodes `object`'s compressed Pixel Data to Explicit VR Little Endian so
/// that `signature` can blank it; native Pixel Data is left as it is.
pub fn decode_for_cleaning(object: &mut DefaultDicomObject, signature: &str) -> Result<(), Rejection> {
    if !crate::pixel_decode::is_encapsulated(object.meta().transfer_syntax()) {
        return Ok(());
    }
    crate::pixel_decode::decode_to_native(object, crate::pixel_decode::EXPLICIT_VR_LITTLE_ENDIAN).map_err(|error| {
        let code = if error.is_unsupported() {
            ReasonCode::UnsupportedTransferSyntax
        } else {
            ReasonCode::InvalidPixelData
        };
        Rejection::new(
            code,
            format!("the image matches pixel signature {signature:?} but cannot be cleaned: {error}"),
        )
    })
}

/// `pixels` with every rectangle zeroed in every frame. Native Pixel Data
/// only; held as bytes or as 16-bit words (big endian files).
pub fn blank(pixels: InMemElement, geometry: &Geometry, rectangles: &[Rectangle]) -> Result<InMemElement, Rejection> {
    let (tag, vr) = (pixels.tag(), pixels.vr());
    let value = match pixels.into_value() {
        Value::Primitive(value) => value,
        // decode_for_cleaning ran first; a pixel sequence here is a bug
        // worth a clear refusal rather than a panic.
        _ => return Err(refuse("its Pixel Data is still encapsulated after decoding")),
    };
    let cleaned = match value {
        PrimitiveValue::U8(mut data) => {
            zero(&mut data, geometry, rectangles, geometry.bytes_per_sample)?;
            PrimitiveValue::U8(data)
        }
        PrimitiveValue::U16(mut data) if geometry.bytes_per_sample >= 2 => {
            zero(&mut data, geometry, rectangles, geometry.bytes_per_sample / 2)?;
            PrimitiveValue::U16(data)
        }
        _ => return Err(refuse("its Pixel Data is held in an unexpected form")),
    };
    Ok(DataElement::new(tag, vr, cleaned))
}

/// Zeroes the rectangles in `data`, `unit` elements per sample.
fn zero<T: Copy + Default>(
    data: &mut [T],
    g: &Geometry,
    rectangles: &[Rectangle],
    unit: usize,
) -> Result<(), Rejection> {
    let per_frame = g.frame_bytes() / g.bytes_per_sample * unit;
    if data.len() < per_frame * g.frames {
        return Err(Rejection::new(
            ReasonCode::InvalidPixelData,
            "Pixel Data is shorter than Rows x Columns x Samples x Number of Frames",
        ));
    }
    for rectangle in rectangles {
        let (x, y) = (rectangle.x as usize, rectangle.y as usize);
        let (width, height) = (rectangle.width as usize, rectangle.height as usize);
        if x + width > g.columns || y + height > g.rows {
            return Err(refuse("a rectangle of its signature lies outside the image"));
        }
        for frame in 0..g.frames {
            let base = frame * per_frame;
            for row in y..y + height {
                if g.planar {
                    let plane = g.rows * g.columns * unit;
                    for sample in 0..g.samples_per_pixel {
                        let start = base + sample * plane + (row * g.columns + x) * unit;
                        data[start..start + width * unit].fill(T::default());
                    }
                } else {
                    let pixel = g.samples_per_pixel * unit;
                    let start = base + (row * g.columns + x) * pixel;
                    data[start..start + width * pixel].fill(T::default());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(samples: usize, bytes: usize, planar: bool, frames: usize) -> Geometry {
        Geometry {
            rows: 3,
            columns: 4,
            frames,
            samples_per_pixel: samples,
            bytes_per_sample: bytes,
            planar,
        }
    }

    const CORNER: Rectangle = Rectangle {
        x: 1,
        y: 1,
        width: 2,
        height: 1,
    };

    #[test]
    fn every_frame_and_every_sample_of_the_rectangle_is_zeroed_and_nothing_else() {
        for (samples, bytes, planar) in [(1, 1, false), (1, 2, false), (3, 1, false), (3, 1, true), (1, 4, false)] {
            let g = geometry(samples, bytes, planar, 2);
            let mut data = vec![9u8; g.frame_bytes() * 2];
            zero(&mut data, &g, &[CORNER], bytes).unwrap();
            let zeroed: Vec<usize> = (0..data.len()).filter(|&i| data[i] == 0).collect();
            assert_eq!(zeroed.len(), 2 * 2 * samples * bytes, "{samples} {bytes} {planar}");
            for index in zeroed {
                let within = index % g.frame_bytes();
                let (row, column) = if planar {
                    let in_plane = (within % (12 * bytes)) / bytes;
                    (in_plane / 4, in_plane % 4)
                } else {
                    let pixel = within / (samples * bytes);
                    (pixel / 4, pixel % 4)
                };
                assert!(
                    row == 1 && (1..3).contains(&column),
                    "{index}: row {row} column {column}"
                );
            }
        }
    }

    #[test]
    fn words_are_zeroed_as_samples_and_short_data_is_invalid() {
        let g = geometry(1, 2, false, 1);
        let mut words = vec![7u16; 12];
        zero(&mut words, &g, &[CORNER], 1).unwrap();
        assert_eq!(words, [7, 7, 7, 7, 7, 0, 0, 7, 7, 7, 7, 7]);
        let mut short = vec![7u8; 10];
        assert_eq!(
            zero(&mut short, &g, &[CORNER], 2).unwrap_err().code,
            ReasonCode::InvalidPixelData
        );
    }
}
