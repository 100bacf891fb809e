//! `pixel_decode` on real compressed files from the pydicom wheel (written by
//! dcmtk, GDCM and vendors): every decodable one becomes Explicit VR Little
//! Endian whose pixels equal pydicom's own decode of the original (its
//! pylibjpeg plugins: IJG-derived libjpeg, OpenJPEG; RLE in numpy), exactly
//! for lossless syntaxes and within a stated bound for lossy JPEG; one this
//! build cannot decode is refused with an error that names its syntax. And
//! `synthd deid` decodes compressed images that match a pixel signature,
//! blanks the rectangles and writes them uncompressed.

mod common;

use common::{pydicom_test_files, python};
use dicom_dictionary_std::tags;
use std::path::Path;
use std::process::Command;
use synthd::pixel_decode::{decode_to_native, DecodeError, EXPLICIT_VR_LITTLE_ENDIAN};

/// Compares each decoded file with pydicom's decode of its original (pairs
/// of arguments); prints one JSON line per pair. pydicom's default `as_rgb`
/// gives a YBR image as RGB.
const COMPARE: &str = r#"
import sys, json, numpy as np, pydicom
args = sys.argv[1:]
for original, decoded in zip(args[0::2], args[1::2]):
    original, decoded = pydicom.dcmread(original), pydicom.dcmread(decoded)
    a, b = original.pixel_array.astype(np.int64), decoded.pixel_array.astype(np.int64)
    same_shape = a.shape == b.shape
    diff = np.abs(a - b) if same_shape else np.zeros(1)
    print(json.dumps({
        "same_shape": same_shape,
        "max": int(diff.max()),
        "mean": float(diff.mean()),
        "transfer_syntax": decoded.file_meta.TransferSyntaxUID,
        "photometric": decoded.PhotometricInterpretation,
        "planar": int(decoded.get("PlanarConfiguration", 0)),
    }))
"#;

/// One Python run for all pairs (starting pydicom costs seconds here).
fn compare(pairs: &[(std::path::PathBuf, std::path::PathBuf)]) -> Vec<serde_json::Value> {
    let mut command = Command::new(python());
    command.args(["-c", COMPARE]);
    for (original, decoded) in pairs {
        command.arg(original).arg(decoded);
    }
    let output = command
        .output()
        .expect("python with pydicom runs (scripts/setup.sh installs it)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn decode(name: &str, dir: &Path) -> Result<std::path::PathBuf, DecodeError> {
    // Read as synthd reads its inputs (some of these files need its leniency).
    let mut object = synthd::deid::read::read_instance(&pydicom_test_files().join(name)).unwrap();
    decode_to_native(&mut object, EXPLICIT_VR_LITTLE_ENDIAN)?;
    let path = dir.join(name);
    object.write_to_file(&path).unwrap();
    Ok(path)
}

/// (file, its syntax, largest difference from pydicom's decode allowed,
/// Photometric Interpretation after decoding)
const DECODABLE: &[(&str, &str, i64, &str)] = &[
    ("SC_rgb_jpeg_gdcm.dcm", "JPEG Lossless SV1", 0, "RGB"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000 lossless", 0, "MONOCHROME2"),
    ("examples_jpeg2k.dcm", "JPEG 2000 lossless, YBR_RCT", 0, "RGB"),
    ("GDCMJ2K_TextGBR.dcm", "JPEG 2000 lossless, YBR_RCT", 0, "RGB"),
    ("693_J2KI.dcm", "JPEG 2000 (lossy)", 0, "MONOCHROME2"),
    ("JPEG2000.dcm", "JPEG 2000 (lossy)", 0, "MONOCHROME2"),
    ("MR_small_RLE.dcm", "RLE", 0, "MONOCHROME2"),
    ("SC_rgb_rle.dcm", "RLE, RGB", 0, "RGB"),
    ("SC_rgb_rle_2frame.dcm", "RLE, RGB, 2 frames", 0, "RGB"),
    ("SC_rgb_rle_16bit_2frame.dcm", "RLE, RGB 16-bit, 2 frames", 0, "RGB"),
    (
        "SC_rgb_jpeg_dcmtk.dcm",
        "JPEG Baseline, YBR_FULL",
        LOSSY_JPEG_BOUND,
        "RGB",
    ),
    (
        "SC_rgb_jpeg_lossy_gdcm.dcm",
        "JPEG Baseline, YBR_FULL",
        LOSSY_JPEG_BOUND,
        "RGB",
    ),
    (
        "SC_jpeg_no_color_transform.dcm",
        "JPEG Baseline, no colour transform",
        LOSSY_JPEG_BOUND,
        "RGB",
    ),
    (
        "SC_rgb_small_odd_jpeg.dcm",
        "JPEG Baseline, 3x3",
        LOSSY_JPEG_BOUND,
        "RGB",
    ),
    (
        "SC_rgb_jpeg_app14_dcmd.dcm",
        "JPEG Baseline, Adobe APP14",
        LOSSY_JPEG_BOUND,
        "RGB",
    ),
    (
        "SC_jpeg_no_color_transform_2.dcm",
        "JPEG Baseline, RGB components",
        LOSSY_JPEG_BOUND,
        "RGB",
    ),
];

/// Lossy JPEG has no single correct decode: ISO 10918-1 fixes the coded
/// coefficients, not the inverse DCT's arithmetic nor the rounding of the
/// YCbCr → RGB transform, and jpeg-decoder (integer IDCT) and libjpeg differ
/// in both. Each may put a sample one step off (ISO 10918-2's accuracy test
/// allows an IDCT output one off the reference), and the colour transform
/// may add one more: so at most 2, and rarely (mean difference below 0.05).
/// A wrong colour transform or chroma layout shows up as tens or hundreds.
const LOSSY_JPEG_BOUND: i64 = 2;

#[test]
fn compressed_pydicom_files_decode_to_little_endian_equal_to_pydicom() {
    let dir = tempfile::tempdir().unwrap();
    let pairs: Vec<_> = DECODABLE
        .iter()
        .map(|&(name, what, ..)| {
            let decoded = decode(name, dir.path()).unwrap_or_else(|e| panic!("{name} ({what}): {e}"));
            (pydicom_test_files().join(name), decoded)
        })
        .collect();
    let seen = compare(&pairs);
    assert_eq!(seen.len(), DECODABLE.len());
    for (&(name, what, bound, photometric), seen) in DECODABLE.iter().zip(&seen) {
        println!("{name}: {seen}");
        assert_eq!(seen["transfer_syntax"], EXPLICIT_VR_LITTLE_ENDIAN, "{name}");
        assert_eq!(seen["same_shape"], true, "{name}: {seen}");
        assert!(seen["max"].as_i64().unwrap() <= bound, "{name} ({what}): {seen}");
        assert!(seen["mean"].as_f64().unwrap() < 0.05, "{name} ({what}): {seen}");
        assert_eq!(seen["photometric"], photometric, "{name}");
        assert_eq!(seen["planar"], 0, "{name}");
    }
}

#[test]
fn a_lossy_source_stays_declared_lossy_with_ratio_and_method_when_it_was_silent() {
    let dir = tempfile::tempdir().unwrap();
    // JPEG Baseline that already says 01: kept as it was.
    let decoded = dicom_object::open_file(decode("SC_rgb_jpeg_dcmtk.dcm", dir.path()).unwrap()).unwrap();
    assert_eq!(
        decoded
            .element(tags::LOSSY_IMAGE_COMPRESSION)
            .unwrap()
            .to_str()
            .unwrap(),
        "01"
    );
    // The same file with Lossy Image Compression removed: declared again.
    let mut silent = synthd::deid::read::read_instance(&pydicom_test_files().join("SC_rgb_jpeg_dcmtk.dcm")).unwrap();
    silent.remove_element(tags::LOSSY_IMAGE_COMPRESSION);
    silent.remove_element(tags::LOSSY_IMAGE_COMPRESSION_RATIO);
    silent.remove_element(tags::LOSSY_IMAGE_COMPRESSION_METHOD);
    decode_to_native(&mut silent, EXPLICIT_VR_LITTLE_ENDIAN).unwrap();
    let text = |tag| silent.element(tag).unwrap().to_str().unwrap().to_string();
    assert_eq!(text(tags::LOSSY_IMAGE_COMPRESSION), "01");
    assert_eq!(text(tags::LOSSY_IMAGE_COMPRESSION_METHOD), "ISO_10918_1");
    let ratio: f64 = text(tags::LOSSY_IMAGE_COMPRESSION_RATIO).trim().parse().unwrap();
    assert!(ratio > 1.0, "{ratio}");
    // A lossless source is not declared lossy.
    let lossless = dicom_object::open_file(decode("SC_rgb_rle.dcm", dir.path()).unwrap()).unwrap();
    assert!(lossless.element(tags::LOSSY_IMAGE_COMPRESSION).is_err());
}

#[test]
fn a_syntax_without_a_decoder_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let error = decode("MR_small_jpeg_ls_lossless.dcm", dir.path()).unwrap_err();
    assert!(error.is_unsupported(), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("1.2.840.10008.1.2.4.80") && message.contains("JPEG-LS") && message.contains("decompress"),
        "{message}"
    );
    // Syntaxes with a decoder that cannot read these images: 12-bit lossy
    // JPEG (jpeg-decoder reads 8-bit lossy only), 32-bit RLE (dicom-rs's
    // adapters read 8 and 16-bit samples). Unsupported, not broken.
    for (name, uid, feature) in [
        ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51", "12-bit lossy JPEG"),
        ("rtdose_rle.dcm", "1.2.840.10008.1.2.5", "32 bits allocated"),
    ] {
        let error = decode(name, dir.path()).unwrap_err();
        assert!(error.is_unsupported(), "{name}: {error}");
        let message = error.to_string();
        assert!(message.contains(uid) && message.contains(feature), "{name}: {message}");
    }
}

/// Checks each cleaned output against pydicom's decode of its original
/// (found by image size) with the signature's rectangles zeroed; prints one
/// JSON line per output. Arguments: the rectangles as JSON, then originals,
/// `--`, then outputs.
const CLEANED: &str = r#"
import sys, json, numpy as np, pydicom
rectangles = json.loads(sys.argv[1])
split = sys.argv.index("--")
originals = [pydicom.dcmread(p) for p in sys.argv[2:split]]
for path in sys.argv[split + 1:]:
    out = pydicom.dcmread(path)
    size = f"{out.Rows}x{out.Columns}"
    original = next(o for o in originals if f"{o.Rows}x{o.Columns}" == size)
    expected = original.pixel_array.astype(np.int64)
    got = out.pixel_array.astype(np.int64)
    inside = np.zeros(got.shape[:2], dtype=bool)
    for x, y, w, h in rectangles[size]:
        inside[y:y + h, x:x + w] = True
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    print(json.dumps({
        "size": size,
        "same_shape": expected.shape == got.shape,
        "inside_max": int(np.abs(got[inside]).max()),
        "inside_before": int(np.abs(expected[inside]).max()),
        "outside_max": int(np.abs(got[~inside] - expected[~inside]).max()),
        "outside_mean": float(np.abs(got[~inside] - expected[~inside]).mean()),
        "transfer_syntax": out.file_meta.TransferSyntaxUID,
        "photometric": out.PhotometricInterpretation,
        "burned_in": out.BurnedInAnnotation,
        "lossy": out.get("LossyImageCompression", ""),
        "clean_pixel_data": "113101" in codes,
    }))
"#;

#[test]
fn deid_decodes_matching_compressed_images_cleans_them_and_quarantines_what_it_cannot_decode() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let names = [
        "examples_jpeg2k.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ];
    for name in names {
        std::fs::copy(pydicom_test_files().join(name), input.join(name)).unwrap();
    }
    // US and OT need a signature by default; MR is made to need one here.
    let pipeline = dir.path().join("clean.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"clean\"\n[match]\nmodality = [\"US\", \"OT\", \"MR\"]\n[deid]\nclean_pixel_data = {:?}\n\
             [deid.burned_in_unknown]\nMR = \"clean\"\n[output]\ndeidentified_source = true\n",
            common::repo("fixtures/deid/pydicom-signatures.toml")
        ),
    )
    .unwrap();
    let output = dir.path().join("out");
    let key = common::key(dir.path(), "site.key");
    let result = common::synthd(&[
        "deid",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
        "--pipeline",
        pipeline.to_str().unwrap(),
    ]);
    // Exit 3: finished, with a quarantine.
    assert_eq!(result.status.code(), Some(3), "{}", common::stderr(&result));
    let outputs = common::files_under(&output);
    assert_eq!(outputs.len(), 2, "{outputs:?}");

    let reasons: Vec<serde_json::Value> = common::files_under(&dir.path().join("out-quarantine"))
        .into_iter()
        .filter(|p| p.ends_with("reason.json"))
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!(reasons[0]["code"], "unsupported-transfer-syntax", "{}", reasons[0]);
    let message = reasons[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("1.2.840.10008.1.2.4.80") && message.contains("decompress"),
        "{}",
        reasons[0]
    );

    let rectangles = r#"{"480x640": [[0, 0, 640, 40], [540, 430, 100, 50]], "100x100": [[10, 20, 30, 15]]}"#;
    let mut command = Command::new(python());
    command.args(["-c", CLEANED, rectangles]);
    command.args(names[..2].iter().map(|n| pydicom_test_files().join(n)));
    command.arg("--").args(&outputs);
    let run = command.output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let seen: Vec<serde_json::Value> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(seen.len(), 2);
    for seen in &seen {
        println!("{seen}");
        let lossy_jpeg = seen["size"] == "100x100";
        assert_eq!(seen["same_shape"], true, "{seen}");
        assert!(seen["inside_before"].as_i64().unwrap() > 0, "nothing to clean: {seen}");
        assert_eq!(seen["inside_max"], 0, "the signature's rectangles are zero: {seen}");
        let bound = if lossy_jpeg { LOSSY_JPEG_BOUND } else { 0 };
        assert!(seen["outside_max"].as_i64().unwrap() <= bound, "{seen}");
        assert!(seen["outside_mean"].as_f64().unwrap() < 0.05, "{seen}");
        assert_eq!(seen["transfer_syntax"], EXPLICIT_VR_LITTLE_ENDIAN, "{seen}");
        assert_eq!(seen["photometric"], "RGB", "{seen}");
        assert_eq!(seen["burned_in"], "NO", "{seen}");
        assert_eq!(seen["clean_pixel_data"], true, "{seen}");
        // The JPEG source was lossy and says so; the lossless JPEG 2000 one said 00.
        assert_eq!(seen["lossy"], if lossy_jpeg { "01" } else { "00" }, "{seen}");
    }
}
