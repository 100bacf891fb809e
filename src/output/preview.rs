//! A PNG contact sheet per synthetic series: rows of source | mask overlay |
//! synthetic, for the slices with the most inpainted pixels, so a person can
//! judge the result at a glance.

use std::io;
use std::path::Path;

/// One slice of the sheet, in real-world values, with its mask.
pub struct PreviewSlice<'a> {
    pub rows: usize,
    pub columns: usize,
    pub source: &'a [f32],
    pub synthetic: &'a [f32],
    pub mask: &'a [u8],
}

/// The most rows a sheet shows.
pub const MAX_ROWS: usize = 6;

/// Renders up to [`MAX_ROWS`] slices (those with the largest masks, in
/// their original order) into an RGB PNG at `path`, written durably.
pub fn write_contact_sheet(
    path: &Path,
    slices: &[PreviewSlice<'_>],
    window: (f64, f64),
    caption: &[String],
) -> io::Result<()> {
    let mut chosen: Vec<usize> = (0..slices.len()).collect();
    chosen.sort_by_key(|&i| std::cmp::Reverse(slices[i].mask.iter().filter(|&&m| m != 0).count()));
    chosen.truncate(MAX_ROWS);
    chosen.sort_unstable();
    if chosen.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no slices to preview"));
    }
    let tile_w = slices[chosen[0]].columns;
    let tile_h = slices[chosen[0]].rows;
    if chosen
        .iter()
        .any(|&i| slices[i].columns != tile_w || slices[i].rows != tile_h)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "slices of one series differ in size",
        ));
    }
    let gap = 2;
    let width = tile_w * 3 + gap * 2;
    let tiles_height = tile_h * chosen.len() + gap * (chosen.len() - 1);
    let strip = super::font::strip_height(caption.len());
    let height = tiles_height + strip;
    let mut rgb = vec![0u8; width * height * 3];
    super::font::draw_lines(&mut rgb, width, tiles_height, caption);
    let (center, window_width) = window;
    let low = center - window_width / 2.0;
    let gray = |value: f32| -> u8 { (((value as f64 - low) / window_width).clamp(0.0, 1.0) * 255.0).round() as u8 };
    for (row, &index) in chosen.iter().enumerate() {
        let slice = &slices[index];
        let top = row * (tile_h + gap);
        for y in 0..tile_h {
            for x in 0..tile_w {
                let i = y * tile_w + x;
                let source = gray(slice.source[i]);
                let synthetic = gray(slice.synthetic[i]);
                let inside = slice.mask[i] != 0;
                let overlay = if inside {
                    [source / 2 + 127, source / 2, source / 2]
                } else {
                    [source; 3]
                };
                for (column, pixel) in [[source; 3], overlay, [synthetic; 3]].into_iter().enumerate() {
                    let px = column * (tile_w + gap) + x;
                    let offset = ((top + y) * width + px) * 3;
                    rgb[offset..offset + 3].copy_from_slice(&pixel);
                }
            }
        }
    }
    let mut encoded = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut encoded, width as u32, height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(io::Error::other)?;
        writer.write_image_data(&rgb).map_err(io::Error::other)?;
    }
    crate::fsutil::write_atomic(path, &encoded, 0o640).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheet_has_three_tiles_per_row() {
        let dir = tempfile::tempdir().unwrap();
        let source = vec![100.0f32; 16];
        let synthetic = vec![200.0f32; 16];
        let mut mask = vec![0u8; 16];
        mask[5] = 1;
        let slice = PreviewSlice {
            rows: 4,
            columns: 4,
            source: &source,
            synthetic: &synthetic,
            mask: &mask,
        };
        let path = dir.path().join("preview.png");
        write_contact_sheet(&path, &[slice], (150.0, 200.0), &[]).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (4 * 3 + 4, 4));
        // A caption adds a text strip below the tiles.
        let slice = PreviewSlice {
            rows: 4,
            columns: 4,
            source: &source,
            synthetic: &synthetic,
            mask: &mask,
        };
        write_contact_sheet(&path, &[slice], (150.0, 200.0), &["QC PASS".to_string()]).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!(reader.info().height, 4 + crate::output::font::strip_height(1) as u32);
    }
}
