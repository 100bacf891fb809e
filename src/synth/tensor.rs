//! Real-world pixel values ↔ model tensors: intensity normalisation per the
//! manifest, aspect-preserving resampling into the model's H×W (with the
//! padded box remembered), and the exact inverse back to stored integers.

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

/// Where a slice sits inside the model's H×W grid after an aspect-preserving
/// resize: rows/cols [top, top+height) × [left, left+width); the rest is padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub rows: usize,
    pub cols: usize,
    pub grid_height: usize,
    pub grid_width: usize,
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

impl Placement {
    pub fn fit(rows: usize, cols: usize, grid_height: usize, grid_width: usize) -> Placement {
        let scale = (grid_height as f64 / rows as f64).min(grid_width as f64 / cols as f64);
        let height = ((rows as f64 * scale).round() as usize).clamp(1, grid_height);
        let width = ((cols as f64 * scale).round() as usize).clamp(1, grid_width);
        Placement {
            rows,
            cols,
            grid_height,
            grid_width,
            top: (grid_height - height) / 2,
            left: (grid_width - width) / 2,
            height,
            width,
        }
    }

    /// Slice (rows×cols) → grid (H×W), bilinear, padding filled with `pad`.
    pub fn to_grid(&self, values: &[f32], pad: f32) -> Vec<f32> {
        let mut grid = vec![pad; self.grid_height * self.grid_width];
        for r in 0..self.height {
            for c in 0..self.width {
                let y = (r as f64 + 0.5) * self.rows as f64 / self.height as f64 - 0.5;
                let x = (c as f64 + 0.5) * self.cols as f64 / self.width as f64 - 0.5;
                grid[(self.top + r) * self.grid_width + self.left + c] = bilinear(values, self.rows, self.cols, y, x);
            }
        }
        grid
    }

    /// Grid (H×W) → slice (rows×cols), bilinear over the box only.
    pub fn from_grid(&self, grid: &[f32]) -> Vec<f32> {
        let mut boxed = Vec::with_capacity(self.height * self.width);
        for r in 0..self.height {
            let start = (self.top + r) * self.grid_width + self.left;
            boxed.extend_from_slice(&grid[start..start + self.width]);
        }
        let mut out = vec![0.0; self.rows * self.cols];
        for r in 0..self.rows {
            for c in 0..self.cols {
                let y = (r as f64 + 0.5) * self.height as f64 / self.rows as f64 - 0.5;
                let x = (c as f64 + 0.5) * self.width as f64 / self.cols as f64 - 0.5;
                out[r * self.cols + c] = bilinear(&boxed, self.height, self.width, y, x);
            }
        }
        out
    }

    /// A slice mask (1 = inpaint) on the grid: a grid pixel is masked when any
    /// slice pixel it covers is, so the model always sees the whole region.
    pub fn mask_to_grid(&self, mask: &[u8]) -> Vec<f32> {
        let mut grid = vec![0.0; self.grid_height * self.grid_width];
        for r in 0..self.rows {
            for c in 0..self.cols {
                if mask[r * self.cols + c] != 0 {
                    let gr = (r * self.height / self.rows).min(self.height - 1);
                    let gc = (c * self.width / self.cols).min(self.width - 1);
                    grid[(self.top + gr) * self.grid_width + self.left + gc] = 1.0;
                }
            }
        }
        grid
    }
}

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
    fn placement_pads_the_short_side_and_round_trips_smooth_images() {
        let p = Placement::fit(64, 32, 32, 32);
        assert_eq!((p.height, p.width, p.top, p.left), (32, 16, 0, 8));
        let image: Vec<f32> = (0..64 * 32).map(|i| (i / 32) as f32).collect();
        let grid = p.to_grid(&image, -1.0);
        assert_eq!(grid[0], -1.0);
        let back = p.from_grid(&grid);
        let worst = back.iter().zip(&image).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst <= 1.0, "{worst}");
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
