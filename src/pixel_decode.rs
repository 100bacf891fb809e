//! Decoding compressed (encapsulated) Pixel Data into a native, little-endian
//! data set, shared by the sender (`net/export.rs`: a peer that accepted
//! only little endian) and pixel cleaning (`deid/pixels.rs`: rectangles are
//! blanked in decoded samples), so neither stage depends on the other.
//!
//! The codecs are dicom-rs's, as this build's transfer-syntax registry has
//! them (`dicom-pixeldata` default features plus `openjp2`): JPEG Baseline,
//! Extended (8-bit) and Lossless (jpeg-decoder), RLE Lossless, and JPEG 2000
//! (OpenJPEG's Rust port; the registry routes HTJ2K there too, which no test
//! here exercises for want of a sample file). JPEG-LS, JPEG XL, 12-bit lossy JPEG and
//! the video syntaxes have no decoder here, and the decoders read 8 and
//! 16-bit samples only: those instances get a [`DecodeError`] that names
//! the syntax and what to do.
//!
//! Decoding changes the representation, not the image, so the SOP Instance
//! UID stays (PS3.4 does not ask for a new one), but the Image Pixel module
//! must describe the samples as they now are (PS3.3 C.7.6.3, PS3.5 8.2):
//! - Photometric Interpretation: a lossy JPEG decoder undoes the YCbCr
//!   colour transform and upsamples chroma, so `YBR_FULL_422`/`YBR_FULL`
//!   become `RGB`; a JPEG 2000 decoder undoes the multi-component transform,
//!   so `YBR_ICT`/`YBR_RCT` become `RGB`; lossless JPEG and RLE give the
//!   samples as they were stored, so their value stays.
//! - Planar Configuration 0: every decoder here interleaves the samples.
//! - The encapsulation-only attributes (Extended Offset Table, its Lengths,
//!   Encapsulated Pixel Data Value Total Length) are removed.
//! - Lossy Image Compression: a source that was lossy stays `01`. Where a
//!   syntax is always lossy (JPEG processes 2 and 4) and the instance did
//!   not say so, it is set to `01` and the ratio and method are appended
//!   (PS3.3 C.7.6.1.1.5: once lossy, always declared lossy).

use crate::attribute::{put_str, string_of};
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";

/// Why Pixel Data could not be decoded. No message holds a patient value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("transfer syntax {uid} is unknown to synthd's DICOM library; convert the instance to Explicit VR Little Endian elsewhere (e.g. gdcmconv --raw)")]
    UnknownSyntax { uid: String },
    #[error("synthd has no decoder for {name} ({uid}); decompress the instance elsewhere first (e.g. gdcmconv --raw or dcmdjpls/dcmdjpeg)")]
    NoDecoder { uid: String, name: String },
    #[error("synthd's decoder for {name} ({uid}) cannot read {feature}; decompress the instance elsewhere first (e.g. gdcmconv --raw or dcmdjpeg)")]
    Unsupported { uid: String, name: String, feature: String },
    #[error("the {name} ({uid}) Pixel Data cannot be decoded: {reason}; check the file with gdcminfo or dcmdump, or decompress it elsewhere")]
    Failed { uid: String, name: String, reason: String },
}

impl DecodeError {
    /// True when this build lacks the codec (as opposed to a broken stream).
    pub fn is_unsupported(&self) -> bool {
        !matches!(self, DecodeError::Failed { .. })
    }
}

/// True when `uid` is a transfer syntax with encapsulated (compressed)
/// Pixel Data; unknown syntaxes count as encapsulated, since nothing can
/// read their pixels as they are.
pub fn is_encapsulated(uid: &str) -> bool {
    TransferSyntaxRegistry
        .get(trim(uid))
        .is_none_or(|ts| ts.is_encapsulated_pixel_data())
}

/// True when this build decodes every frame of `uid`'s Pixel Data.
pub fn can_decode(uid: &str) -> bool {
    TransferSyntaxRegistry
        .get(trim(uid))
        .is_some_and(|ts| ts.is_encapsulated_pixel_data() && ts.can_decode_all())
}

fn trim(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' '])
}

/// Rewrites `object` in the native little-endian syntax `to` (Explicit or
/// Implicit VR Little Endian): encapsulated Pixel Data is decoded and the
/// Image Pixel attributes and File Meta updated as the module docs say; a
/// native object only changes its File Meta (the writer re-encodes it).
pub fn decode_to_native(object: &mut DefaultDicomObject, to: &str) -> Result<(), DecodeError> {
    let registry = TransferSyntaxRegistry;
    let from = trim(object.meta().transfer_syntax()).to_string();
    let target = [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
        .contains(&to)
        .then(|| registry.get(to))
        .flatten()
        .ok_or_else(|| DecodeError::UnknownSyntax { uid: to.to_string() })?;
    let source = registry
        .get(&from)
        .ok_or_else(|| DecodeError::UnknownSyntax { uid: from.clone() })?;
    if !source.is_encapsulated_pixel_data() || object.get(tags::PIXEL_DATA).is_none() {
        object.meta_mut().set_transfer_syntax(target);
        return Ok(());
    }
    let name = source.name().to_string();
    if !source.can_decode_all() {
        return Err(DecodeError::NoDecoder { uid: from, name });
    }
    if let Some(feature) = beyond_the_decoders(object, &from) {
        return Err(DecodeError::Unsupported {
            uid: from,
            name,
            feature,
        });
    }
    let failed = |reason: String| DecodeError::Failed {
        uid: from.clone(),
        name: name.clone(),
        reason,
    };
    let compressed = compressed_bytes(object);
    let (layout, mut samples) =
        if JPEG_LOSSY.contains(&from.as_str()) && number(object, tags::SAMPLES_PER_PIXEL) == Some(3) {
            let layout = Layout::of(object).ok_or_else(|| failed("Rows or Columns is missing".into()))?;
            let photometric = string_of(object, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
            let samples = jpeg_colour(object, &layout, &photometric).map_err(failed)?;
            (layout, samples)
        } else {
            let decoded = object.decode_pixel_data().map_err(|e| failed(causes(&e)))?;
            let layout = Layout {
                rows: decoded.rows() as usize,
                columns: decoded.columns() as usize,
                frames: decoded.number_of_frames() as usize,
                samples: decoded.samples_per_pixel() as usize,
                bits_allocated: decoded.bits_allocated(),
            };
            (layout, decoded.into_data())
        };
    let expected = layout
        .bytes()
        .ok_or_else(|| failed(format!("Bits Allocated {} is not 8, 16 or 32", layout.bits_allocated)))?;
    if samples.len() < expected {
        return Err(failed(format!(
            "the decoder gave {} bytes for {} frame(s) of {}x{}x{} samples of {} bits",
            samples.len(),
            layout.frames,
            layout.rows,
            layout.columns,
            layout.samples,
            layout.bits_allocated
        )));
    }
    samples.truncate(expected);
    // Values have even length (PS3.5 7.1.1); an odd 8-bit image gets a pad byte.
    if samples.len() % 2 == 1 {
        samples.push(0);
    }
    let vr = if layout.bits_allocated == 8 { VR::OB } else { VR::OW };
    object.put(DataElement::new(
        tags::PIXEL_DATA,
        vr,
        PrimitiveValue::U8(samples.into()),
    ));
    describe_native(object, &from, &layout);
    declare_lossy(object, &from, compressed, expected);
    object.meta_mut().set_transfer_syntax(target);
    Ok(())
}

/// Lossy JPEG colour images, decoded here rather than through dicom-rs's
/// adapter: in DICOM the Photometric Interpretation says whether the coded
/// components are YCbCr (`YBR_FULL_422`, `YBR_FULL`) or RGB (PS3.5 8.2.1),
/// while jpeg-decoder left alone guesses from markers and assumes YCbCr for
/// a stream without JFIF or Adobe markers, which gives an RGB-coded image
/// wrong colours. Frames follow one another in the fragments, each from
/// its Start Of Image marker; the output is interleaved 8-bit RGB.
fn jpeg_colour(object: &InMemDicomObject, layout: &Layout, photometric: &str) -> Result<Vec<u8>, String> {
    let Some(Value::PixelSequence(sequence)) = object.get(tags::PIXEL_DATA).map(|e| e.value()) else {
        return Err("Pixel Data is not a sequence of fragments".into());
    };
    let stream: Vec<u8> = sequence.fragments().iter().flatten().copied().collect();
    let transform = if photometric == "RGB" {
        jpeg_decoder::ColorTransform::RGB
    } else {
        jpeg_decoder::ColorTransform::YCbCr
    };
    let frame_bytes = layout.rows * layout.columns * 3;
    let mut out = Vec::with_capacity(frame_bytes * layout.frames.max(1));
    let mut cursor = std::io::Cursor::new(stream.as_slice());
    for frame in 0..layout.frames.max(1) {
        let start = start_of_image(&stream, cursor.position() as usize)
            .ok_or_else(|| format!("frame {frame} has no JPEG Start Of Image marker"))?;
        cursor.set_position(start as u64);
        let mut decoder = jpeg_decoder::Decoder::new(&mut cursor);
        decoder.set_color_transform(transform);
        let pixels = decoder.decode().map_err(|e| format!("JPEG frame {frame}: {e}"))?;
        if pixels.len() != frame_bytes {
            return Err(format!(
                "JPEG frame {frame} holds {} bytes, not {frame_bytes} (8-bit RGB {}x{})",
                pixels.len(),
                layout.columns,
                layout.rows
            ));
        }
        out.extend_from_slice(&pixels);
    }
    Ok(out)
}

/// The offset of the next FF D8 at or after `from`.
fn start_of_image(stream: &[u8], from: usize) -> Option<usize> {
    let rest = stream.get(from..)?;
    rest.windows(2).position(|w| w == [0xFF, 0xD8]).map(|at| from + at)
}

/// An error and its sources, outermost first: the codec's own words are
/// the innermost ("BitsAllocated other than 8 or 16", "unsupported
/// precision").
fn causes(error: &dyn std::error::Error) -> String {
    let mut words = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !words.contains(&text) {
            words.push(text);
        }
        source = cause.source();
    }
    words.join(": ")
}

/// What this build's decoders cannot read, checked before decoding so that
/// such an image is reported as unsupported, not as a broken stream: every
/// dicom-rs pixel adapter takes 8 or 16-bit samples only, and jpeg-decoder
/// reads lossy JPEG of 8-bit precision only (not process 4's 12 bits).
fn beyond_the_decoders(object: &InMemDicomObject, from: &str) -> Option<String> {
    let allocated = number(object, tags::BITS_ALLOCATED);
    if !matches!(allocated, Some(8 | 16)) {
        return Some(match allocated {
            Some(bits) => format!("samples of {bits} bits allocated (it reads 8 and 16)"),
            None => "an image without Bits Allocated".to_string(),
        });
    }
    let stored = number(object, tags::BITS_STORED).unwrap_or(8);
    (JPEG_LOSSY.contains(&from) && stored > 8).then(|| format!("{stored}-bit lossy JPEG (it reads 8-bit lossy JPEG)"))
}

/// The decoded image's size, from the decoder's own view of it.
struct Layout {
    rows: usize,
    columns: usize,
    frames: usize,
    samples: usize,
    bits_allocated: u16,
}

impl Layout {
    /// From the instance's own attributes (before decoding).
    fn of(object: &InMemDicomObject) -> Option<Layout> {
        Some(Layout {
            rows: number(object, tags::ROWS)?,
            columns: number(object, tags::COLUMNS)?,
            frames: number(object, tags::NUMBER_OF_FRAMES).unwrap_or(1),
            samples: number(object, tags::SAMPLES_PER_PIXEL).unwrap_or(1),
            bits_allocated: number(object, tags::BITS_ALLOCATED)? as u16,
        })
    }

    fn bytes(&self) -> Option<usize> {
        let per_sample = match self.bits_allocated {
            8 => 1,
            16 => 2,
            32 => 4,
            _ => return None,
        };
        Some(self.rows * self.columns * self.frames.max(1) * self.samples * per_sample)
    }
}

/// The Image Pixel attributes that describe native samples.
fn describe_native(object: &mut InMemDicomObject, from: &str, layout: &Layout) {
    for tag in [
        tags::EXTENDED_OFFSET_TABLE,
        tags::EXTENDED_OFFSET_TABLE_LENGTHS,
        tags::ENCAPSULATED_PIXEL_DATA_VALUE_TOTAL_LENGTH,
    ] {
        object.remove_element(tag);
    }
    if layout.samples > 1 {
        object.put(DataElement::new(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ));
    }
    let photometric = string_of(object, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    if let Some(decoded) = decoded_photometric(from, layout.samples, &photometric) {
        put_str(object, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, decoded);
    }
}

/// JPEG processes whose decoder applies the YCbCr → RGB transform.
const JPEG_LOSSY: [&str; 2] = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"];
/// JPEG 2000 and HTJ2K: the decoder undoes the multi-component transform.
const JPEG_2000: [&str; 5] = [
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
];

/// The Photometric Interpretation of the decoded samples, when it differs.
fn decoded_photometric(from: &str, samples: usize, photometric: &str) -> Option<&'static str> {
    if samples != 3 {
        return None;
    }
    let colour_transformed =
        JPEG_LOSSY.contains(&from) || (JPEG_2000.contains(&from) && matches!(photometric, "YBR_ICT" | "YBR_RCT"));
    (colour_transformed && photometric != "RGB").then_some("RGB")
}

/// Syntaxes that are lossy whatever their parameters, and the Lossy Image
/// Compression Method (0028,2114) term of each (PS3.3 C.7.6.1.1.5.1).
const ALWAYS_LOSSY: [(&str, &str); 3] = [
    ("1.2.840.10008.1.2.4.50", "ISO_10918_1"),
    ("1.2.840.10008.1.2.4.51", "ISO_10918_1"),
    ("1.2.840.10008.1.2.4.81", "ISO_14495_1"),
];

/// Sets Lossy Image Compression `01` with a ratio and method when the source
/// syntax is always lossy and the instance did not already declare it.
fn declare_lossy(object: &mut InMemDicomObject, from: &str, compressed: usize, native: usize) {
    let Some((_, method)) = ALWAYS_LOSSY.iter().find(|(uid, _)| *uid == from) else {
        return;
    };
    if string_of(object, tags::LOSSY_IMAGE_COMPRESSION).unwrap_or_default() == "01" {
        return;
    }
    put_str(object, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "01");
    let mut ratios = strings(object, tags::LOSSY_IMAGE_COMPRESSION_RATIO);
    let mut methods = strings(object, tags::LOSSY_IMAGE_COMPRESSION_METHOD);
    if compressed > 0 {
        ratios.push(format!("{:.2}", native as f64 / compressed as f64));
        methods.push(method.to_string());
        object.put(DataElement::new(
            tags::LOSSY_IMAGE_COMPRESSION_RATIO,
            VR::DS,
            PrimitiveValue::Strs(ratios.into()),
        ));
        object.put(DataElement::new(
            tags::LOSSY_IMAGE_COMPRESSION_METHOD,
            VR::CS,
            PrimitiveValue::Strs(methods.into()),
        ));
    }
}

/// Total bytes of the compressed fragments (the offset table excluded).
fn compressed_bytes(object: &InMemDicomObject) -> usize {
    match object.get(tags::PIXEL_DATA).map(|e| e.value()) {
        Some(Value::PixelSequence(sequence)) => sequence.fragments().iter().map(Vec::len).sum(),
        _ => 0,
    }
}

fn number(object: &InMemDicomObject, tag: Tag) -> Option<usize> {
    object
        .get(tag)
        .and_then(|e| e.to_int::<i64>().ok())
        .and_then(|n| usize::try_from(n).ok())
}

fn strings(object: &InMemDicomObject, tag: Tag) -> Vec<String> {
    object
        .get(tag)
        .and_then(|e| e.to_multi_str().ok())
        .map(|values| {
            values
                .iter()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_build_decodes_jpeg_rle_and_jpeg_2000_but_not_jpeg_ls() {
        for uid in [
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.51",
            "1.2.840.10008.1.2.4.57",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.91",
        ] {
            assert!(can_decode(uid), "{uid}");
        }
        for uid in [
            "1.2.840.10008.1.2.4.80",
            "1.2.840.10008.1.2.4.81",
            "1.2.840.10008.1.2.4.100",
        ] {
            assert!(is_encapsulated(uid) && !can_decode(uid), "{uid}");
        }
        assert!(!is_encapsulated(EXPLICIT_VR_LITTLE_ENDIAN));
        assert!(is_encapsulated("1.2.3.4"));
    }

    #[test]
    fn colour_is_rgb_after_a_colour_transforming_decoder_only() {
        assert_eq!(
            decoded_photometric("1.2.840.10008.1.2.4.50", 3, "YBR_FULL_422"),
            Some("RGB")
        );
        assert_eq!(
            decoded_photometric("1.2.840.10008.1.2.4.50", 3, "YBR_FULL"),
            Some("RGB")
        );
        assert_eq!(decoded_photometric("1.2.840.10008.1.2.4.90", 3, "YBR_RCT"), Some("RGB"));
        assert_eq!(decoded_photometric("1.2.840.10008.1.2.4.91", 3, "YBR_ICT"), Some("RGB"));
        assert_eq!(decoded_photometric("1.2.840.10008.1.2.5", 3, "YBR_FULL"), None);
        assert_eq!(decoded_photometric("1.2.840.10008.1.2.4.70", 3, "YBR_FULL"), None);
        assert_eq!(decoded_photometric("1.2.840.10008.1.2.4.50", 1, "MONOCHROME2"), None);
        assert_eq!(decoded_photometric("1.2.840.10008.1.2.4.50", 3, "RGB"), None);
    }
}
