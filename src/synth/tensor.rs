//! Real-world pixel values ↔ model tensors: intensity normalisation per the
//! manifest, aspect-preserving resampling into the model's H×W (with the
//! placement remembered), and the exact inverse back to stored integers.

use super::manifest::{Intensity, IntensityScope};

/// The linear map from real-world values to model units: [lower, upper] → range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub lower: f32,
    pub upper: f32,
    pub range: [f32; 2],
}

impl Normalization {
    /// Percentile statistics over the non-zero values given (all values when
    /// none is non-zero), as numpy's linear-interpolated percentile.
    pub fn from_values<'a>(intensity: &Intensity, slices: impl IntoIterator<Item = &'a [f32]>) -> Normalization {
        let mut values: Vec<f32> = Vec::new();
        let mut all: Vec<f32> = Vec::new();
        for slice in slices {
            values.extend(slice.iter().copied().filter(|v| *v != 0.0 && v.is_finite()));
            if values.is_empty() {
                all.extend(slice.iter().copied().filter(|v| v.is_finite()));
            }
        }
        if values.is_empty() {
            values = all;
        }
        values.sort_by(f32::total_cmp);
        let lower = percentile(&values, intensity.lower_percentile);
        let mut upper = percentile(&values, intensity.upper_percentile);
        if upper <= lower {
            // A flat image: any positive width keeps the map invertible.
            upper = lower + 1.0;
        }
        Normalization {
            lower,
            upper,
            range: intensity.range,
        }
    }

    fn scale(&self) -> f32 {
        (self.range[1] - self.range[0]) / (self.upper - self.lower)
    }

    /// Real-world value → model units, clipped to the range.
    pub fn forward(&self, value: f32) -> f32 {
        let clipped = value.clamp(self.lower, self.upper);
        self.range[0] + (clipped - self.lower) * self.scale()
    }

    /// Model units → real-world value (the inverse of `forward` on [lower, upper]).
    pub fn inverse(&self, value: f32) -> f32 {
        self.lower + (value - self.range[0]) / self.scale()
    }
}

/// Normalisations for each slice of a series, per the manifest's scope.
pub fn normalizations(intensity: &Intensity, slices: &[&[f32]]) -> Vec<Normalization> {
    match intensity.scope {
        IntensityScope::Volume => {
            let n = Normalization::from_values(intensity, slices.iter().copied());
            vec![n; slices.len()]
        }
        IntensityScope::Slice => slices
            .iter()
            .map(|s| Normalization::from_values(intensity, std::iter::once(*s)))
            .collect(),
    }
}

/// numpy.percentile (linear) of sorted values; 0 for none.
pub fn percentile(sorted: &[f32], q: f64) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    let position = q / 100.0 * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let fraction = position - below as f64;
    (sorted[below] as f64 + (sorted[above] as f64 - sorted[below] as f64) * fraction) as f32
}

/// How a slice maps onto the model's H×W grid, exactly as the demo model's
/// training code does it (`to_model_grid` in fixtures/models/train/common.py;
/// docs/model-contract.md "Intensities and geometry"): the grid has isotropic
/// spacing s = max(rows·Δr / H, cols·Δc / W), so the slice's longer physical
/// side fills it and aspect is kept; pixel centres are aligned on the image
/// centre, grid pixel (r, c) ↦ slice ((r − (H−1)/2)·s/Δr + (rows−1)/2,
/// (c − (W−1)/2)·s/Δc + (cols−1)/2); grid pixels outside the slice are padding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub rows: usize,
    pub cols: usize,
    pub grid_height: usize,
    pub grid_width: usize,
    /// Slice pixels per grid pixel, [along rows, along columns] (s/Δr, s/Δc).
    pub zoom: [f64; 2],
}

/// σ of the Gaussian anti-aliasing pre-filter, in slice pixels per zoom unit.
const PREFILTER_SIGMA_PER_ZOOM: f64 = 0.4;

impl Placement {
    /// The placement of a rows×cols slice with Pixel Spacing [Δr, Δc] (mm).
    pub fn fit(
        rows: usize,
        cols: usize,
        pixel_spacing_mm: [f64; 2],
        grid_height: usize,
        grid_width: usize,
    ) -> Placement {
        let [dr, dc] = pixel_spacing_mm;
        let spacing = (rows as f64 * dr / grid_height as f64).max(cols as f64 * dc / grid_width as f64);
        Placement {
            rows,
            cols,
            grid_height,
            grid_width,
            zoom: [spacing / dr, spacing / dc],
        }
    }

    /// The slice coordinates (row, col) of grid pixel (r, c).
    fn slice_coordinates(&self, r: usize, c: usize) -> (f64, f64) {
        (
            (r as f64 - (self.grid_height as f64 - 1.0) / 2.0) * self.zoom[0] + (self.rows as f64 - 1.0) / 2.0,
            (c as f64 - (self.grid_width as f64 - 1.0) / 2.0) * self.zoom[1] + (self.cols as f64 - 1.0) / 2.0,
        )
    }

    /// The grid coordinates (row, col) of slice pixel (r, c).
    fn grid_coordinates(&self, r: usize, c: usize) -> (f64, f64) {
        (
            (r as f64 - (self.rows as f64 - 1.0) / 2.0) / self.zoom[0] + (self.grid_height as f64 - 1.0) / 2.0,
            (c as f64 - (self.cols as f64 - 1.0) / 2.0) / self.zoom[1] + (self.grid_width as f64 - 1.0) / 2.0,
        )
    }

    /// Slice (rows×cols) → grid (H×W): Gaussian pre-filter with σ = 0.4·zoom
    /// per axis (edges replicated) against aliasing, then bilinear; grid
    /// pixels whose centre falls outside the slice get `pad`. This is scipy's
    /// `gaussian_filter(mode="nearest")` + `map_coordinates(order=1,
    /// mode="constant")`, which the model was trained on; a plain bilinear
    /// resize gives the model sharper, shifted images than it has seen.
    pub fn to_grid(&self, values: &[f32], pad: f32) -> Vec<f32> {
        let smooth = gaussian_prefilter(
            values,
            self.rows,
            self.cols,
            [
                PREFILTER_SIGMA_PER_ZOOM * self.zoom[0],
                PREFILTER_SIGMA_PER_ZOOM * self.zoom[1],
            ],
        );
        let (last_row, last_col) = ((self.rows - 1) as f64, (self.cols - 1) as f64);
        let mut grid = vec![pad; self.grid_height * self.grid_width];
        for r in 0..self.grid_height {
            for c in 0..self.grid_width {
                let (y, x) = self.slice_coordinates(r, c);
                if (0.0..=last_row).contains(&y) && (0.0..=last_col).contains(&x) {
                    grid[r * self.grid_width + c] = bilinear(&smooth, self.rows, self.cols, y, x);
                }
            }
        }
        grid
    }

    /// Grid (H×W) → slice (rows×cols), bilinear at the inverse of
    /// `to_grid`'s coordinates. Coordinates are held inside the grid pixels
    /// that lie on the slice, so edge pixels never blend in padding.
    pub fn from_grid(&self, grid: &[f32]) -> Vec<f32> {
        let (rows_on, cols_on) = (self.on_slice(0), self.on_slice(1));
        let mut out = vec![0.0; self.rows * self.cols];
        for r in 0..self.rows {
            for c in 0..self.cols {
                let (y, x) = self.grid_coordinates(r, c);
                let (y, x) = (y.clamp(rows_on.0, rows_on.1), x.clamp(cols_on.0, cols_on.1));
                out[r * self.cols + c] = bilinear(grid, self.grid_height, self.grid_width, y, x);
            }
        }
        out
    }

    /// The first and last grid index along `axis` (0 = rows) whose pixel
    /// centre lies on the slice.
    fn on_slice(&self, axis: usize) -> (f64, f64) {
        let (grid, slice) = if axis == 0 {
            (self.grid_height, self.rows)
        } else {
            (self.grid_width, self.cols)
        };
        let at = |g: usize| (g as f64 - (grid as f64 - 1.0) / 2.0) * self.zoom[axis] + (slice as f64 - 1.0) / 2.0;
        let inside = |g: &usize| (0.0..=(slice - 1) as f64).contains(&at(*g));
        let first = (0..grid).find(inside).unwrap_or(0);
        let last = (0..grid).rev().find(inside).unwrap_or(grid - 1);
        (first as f64, last as f64)
    }

    /// A slice mask (1 = inpaint) on the grid: a grid pixel is masked when
    /// the slice pixel nearest its centre is, or when it is the nearest grid
    /// pixel of any masked slice pixel, so the model always sees the whole
    /// region whether the grid is coarser or finer than the slice.
    pub fn mask_to_grid(&self, mask: &[u8]) -> Vec<f32> {
        let nearest = |v: f64, n: usize| (v.round().max(0.0) as usize).min(n - 1);
        let mut grid = vec![0.0; self.grid_height * self.grid_width];
        for r in 0..self.rows {
            for c in 0..self.cols {
                if mask[r * self.cols + c] != 0 {
                    let (y, x) = self.grid_coordinates(r, c);
                    grid[nearest(y, self.grid_height) * self.grid_width + nearest(x, self.grid_width)] = 1.0;
                }
            }
        }
        for r in 0..self.grid_height {
            for c in 0..self.grid_width {
                let (y, x) = self.slice_coordinates(r, c);
                let inside = (-0.5..self.rows as f64 - 0.5).contains(&y) && (-0.5..self.cols as f64 - 0.5).contains(&x);
                if inside && mask[nearest(y, self.rows) * self.cols + nearest(x, self.cols)] != 0 {
                    grid[r * self.grid_width + c] = 1.0;
                }
            }
        }
        grid
    }
}

/// scipy.ndimage.gaussian_filter of a float32 image, mode "nearest",
/// truncate 4: one 1-D pass per axis (rows first), each rounded to f32 as
/// scipy stores its intermediate in the input's dtype.
fn gaussian_prefilter(values: &[f32], rows: usize, cols: usize, sigma: [f64; 2]) -> Vec<f32> {
    let mut out = values.to_vec();
    for (axis, &s) in sigma.iter().enumerate() {
        if s <= 1e-15 {
            continue; // scipy skips an axis with σ ≈ 0
        }
        let weights = gaussian_kernel(s);
        let radius = (weights.len() / 2) as isize;
        let (n, stride, lines, line_stride) = if axis == 0 {
            (rows, cols, cols, 1)
        } else {
            (cols, 1, rows, cols)
        };
        let input = out.clone();
        for line in 0..lines {
            let base = line * line_stride;
            for i in 0..n {
                let mut sum = 0.0f64;
                for (k, w) in weights.iter().enumerate() {
                    let j = (i as isize + k as isize - radius).clamp(0, n as isize - 1) as usize;
                    sum += w * input[base + j * stride] as f64;
                }
                out[base + i * stride] = sum as f32;
            }
        }
    }
    out
}

/// scipy's `_gaussian_kernel1d(σ, 0, radius)` with radius = ⌊4σ + 0.5⌋.
fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as isize;
    let weights: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 / (sigma * sigma) * (x * x) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}

/// Bilinear interpolation at (y, x), held inside the image.
fn bilinear(values: &[f32], rows: usize, cols: usize, y: f64, x: f64) -> f32 {
    let y = y.clamp(0.0, (rows - 1) as f64);
    let x = x.clamp(0.0, (cols - 1) as f64);
    let (y0, x0) = (y.floor() as usize, x.floor() as usize);
    let (y1, x1) = ((y0 + 1).min(rows - 1), (x0 + 1).min(cols - 1));
    let (fy, fx) = (y - y0 as f64, x - x0 as f64);
    let at = |r: usize, c: usize| values[r * cols + c] as f64;
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
    let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
    (top * (1.0 - fy) + bottom * fy) as f32
}

/// How pixel data is stored: the integer range the output stage writes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredFormat {
    pub bits_stored: u16,
    pub signed: bool,
}

impl StoredFormat {
    pub fn min(&self) -> i64 {
        if self.signed {
            -(1i64 << (self.bits_stored - 1))
        } else {
            0
        }
    }

    pub fn max(&self) -> i64 {
        if self.signed {
            (1i64 << (self.bits_stored - 1)) - 1
        } else {
            (1i64 << self.bits_stored) - 1
        }
    }
}

/// Real-world value → stored integer: the inverse of `stored·slope + intercept`,
/// rounded half away from zero and clipped to the stored range.
pub fn to_stored(value: f32, slope: f64, intercept: f64, format: StoredFormat) -> i64 {
    let slope = if slope == 0.0 { 1.0 } else { slope };
    let raw = ((value as f64 - intercept) / slope).round();
    if raw.is_nan() {
        return format.min().max(0);
    }
    (raw as i64).clamp(format.min(), format.max())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::manifest::IntensityMethod;

    fn intensity() -> Intensity {
        Intensity {
            method: IntensityMethod::Percentile,
            scope: IntensityScope::Volume,
            lower_percentile: 0.0,
            upper_percentile: 100.0,
            range: [-1.0, 1.0],
        }
    }

    #[test]
    fn normalization_round_trips_inside_its_window() {
        let values: Vec<f32> = (0..100).map(|v| v as f32 * 10.0).collect();
        let n = Normalization::from_values(&intensity(), [values.as_slice()]);
        assert_eq!((n.lower, n.upper), (10.0, 990.0));
        assert_eq!(n.forward(10.0), -1.0);
        assert!((n.forward(990.0) - 1.0).abs() < 1e-6);
        assert!((n.inverse(n.forward(500.0)) - 500.0).abs() < 1e-3);
    }

    #[test]
    fn volume_scope_shares_statistics_and_slice_scope_does_not() {
        let dim: Vec<f32> = (1..=10).map(|v| v as f32).collect();
        let bright: Vec<f32> = (1..=10).map(|v| v as f32 * 100.0).collect();
        let slices = [dim.as_slice(), bright.as_slice()];
        let volume = normalizations(&intensity(), &slices);
        assert_eq!(volume[0], volume[1]);
        assert_eq!((volume[0].lower, volume[0].upper), (1.0, 1000.0));
        let per_slice = normalizations(
            &Intensity {
                scope: IntensityScope::Slice,
                ..intensity()
            },
            &slices,
        );
        assert_eq!((per_slice[0].lower, per_slice[0].upper), (1.0, 10.0));
        assert_eq!((per_slice[1].lower, per_slice[1].upper), (100.0, 1000.0));
    }

    #[test]
    fn zero_background_is_left_out_of_the_percentiles() {
        let mut values = vec![0.0f32; 1000];
        values.extend((1..=100).map(|v| v as f32));
        let n = Normalization::from_values(&intensity(), [values.as_slice()]);
        assert_eq!(n.lower, 1.0);
    }

    #[test]
    fn placement_keeps_aspect_pads_and_round_trips_smooth_images() {
        // 64 rows × 32 columns of 1 mm on a 32×32 grid: s = 2 mm, the image
        // spans grid columns 8..24 and the rest is padding.
        let p = Placement::fit(64, 32, [1.0, 1.0], 32, 32);
        assert_eq!(p.zoom, [2.0, 2.0]);
        let image: Vec<f32> = (0..64 * 32).map(|i| (i / 32) as f32).collect();
        let grid = p.to_grid(&image, -1.0);
        assert_eq!(grid[0], -1.0);
        assert_eq!(grid[7], -1.0);
        assert!(grid[8] >= 0.0, "{}", grid[8]);
        assert_eq!(grid[24], -1.0);
        let back = p.from_grid(&grid);
        let error = |range: std::ops::Range<usize>| range.map(|i| (back[i] - image[i]).abs()).fold(0.0, f32::max);
        // A linear ramp comes back exactly away from the top and bottom rows
        // (where the pre-filter replicates the edge), and no pixel blends in
        // padding (which would pull it towards −1).
        assert!(error(4 * 32..60 * 32) <= 1e-4, "{}", error(4 * 32..60 * 32));
        assert!(error(0..64 * 32) <= 1.0, "{}", error(0..64 * 32));
    }

    #[test]
    fn anisotropic_pixels_keep_their_physical_aspect() {
        // 40 rows of 2 mm = 80 mm tall, 40 columns of 1 mm = 40 mm wide.
        let p = Placement::fit(40, 40, [2.0, 1.0], 20, 20);
        assert_eq!(p.zoom, [2.0, 4.0]);
        let grid = p.to_grid(&vec![1.0; 40 * 40], -1.0);
        let row: Vec<f32> = grid[10 * 20..11 * 20].to_vec();
        let inside = row.iter().filter(|&&v| v == 1.0).count();
        assert_eq!(inside, 10, "40 mm of 80 mm across 20 px: {row:?}");
    }

    #[test]
    fn masks_cover_the_region_on_coarser_and_finer_grids() {
        let mut mask = vec![0u8; 64 * 64];
        for r in 20..30 {
            for c in 30..40 {
                mask[r * 64 + c] = 1;
            }
        }
        for grid in [16, 32, 128] {
            let p = Placement::fit(64, 64, [1.0, 1.0], grid, grid);
            let on_grid = p.mask_to_grid(&mask);
            // Every masked slice pixel maps back to a masked grid pixel.
            let back = p.from_grid(&on_grid);
            for i in 0..mask.len() {
                if mask[i] != 0 {
                    assert!(back[i] > 0.0, "grid {grid}: pixel {i} lost");
                }
            }
            let count = on_grid.iter().filter(|&&v| v != 0.0).count();
            let expected = 100 * grid * grid / (64 * 64);
            assert!(
                count >= expected && count <= 3 * expected + 8,
                "grid {grid}: {count} vs {expected}"
            );
        }
    }

    #[test]
    fn stored_values_round_and_clip() {
        let u12 = StoredFormat {
            bits_stored: 12,
            signed: false,
        };
        assert_eq!(to_stored(100.4, 1.0, 0.0, u12), 100);
        assert_eq!(to_stored(5000.0, 1.0, 0.0, u12), 4095);
        assert_eq!(to_stored(-3.0, 1.0, 0.0, u12), 0);
        let s16 = StoredFormat {
            bits_stored: 16,
            signed: true,
        };
        assert_eq!(to_stored(-1024.0, 1.0, -1024.0, s16), 0);
        assert_eq!(to_stored(10.0, 2.0, 0.0, s16), 5);
    }
}
