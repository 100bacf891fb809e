//! Inpainting masks (1 = inpaint). Generated masks are ellipsoids that live in
//! patient space (millimetres), so the same blob cuts adjacent slices
//! coherently; they are clipped to the brain (threshold + largest connected
//! component over the whole series).

use super::noise::slice_rng;
use rand::Rng;
use std::collections::VecDeque;

/// Where a slice's pixels are in patient space, as plain numbers (the output
/// stage reads them from Image Position/Orientation (Patient) and Pixel Spacing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SliceGeometry {
    /// Patient position of the centre of the first (top-left) pixel, mm.
    pub origin_mm: [f64; 3],
    /// Direction of increasing column index (first triple of Image Orientation).
    pub row_direction: [f64; 3],
    /// Direction of increasing row index (second triple of Image Orientation).
    pub column_direction: [f64; 3],
    /// [spacing between rows, spacing between columns] in mm, as Pixel Spacing.
    pub pixel_spacing_mm: [f64; 2],
}

impl SliceGeometry {
    /// Patient position of pixel (row, col).
    pub fn position(&self, row: usize, col: usize) -> [f64; 3] {
        let [dr, dc] = self.pixel_spacing_mm;
        std::array::from_fn(|k| {
            self.origin_mm[k] + self.row_direction[k] * col as f64 * dc + self.column_direction[k] * row as f64 * dr
        })
    }

    /// An axial slice at height `z` with `spacing` mm pixels (for tests and benches).
    pub fn axial(z: f64, spacing: f64) -> SliceGeometry {
        SliceGeometry {
            origin_mm: [0.0, 0.0, z],
            row_direction: [1.0, 0.0, 0.0],
            column_direction: [0.0, 1.0, 0.0],
            pixel_spacing_mm: [spacing, spacing],
        }
    }
}

/// One slice's pixels as the mask generator sees them.
pub struct MaskSlice<'a> {
    pub rows: usize,
    pub cols: usize,
    pub values: &'a [f32],
    pub geometry: SliceGeometry,
}

/// The brain: pixels above 20% of the series' robust maximum (99th percentile
/// of non-zero values), then the largest 6-connected component across slices
/// in the order given (adjacent slices are neighbours).
pub fn brain_mask(slices: &[MaskSlice]) -> Vec<Vec<u8>> {
    let mut nonzero: Vec<f32> = slices
        .iter()
        .flat_map(|s| s.values.iter().copied().filter(|v| *v > 0.0 && v.is_finite()))
        .collect();
    nonzero.sort_by(f32::total_cmp);
    let robust_max = super::tensor::percentile(&nonzero, 99.0);
    let threshold = 0.2 * robust_max;
    let above: Vec<Vec<bool>> = slices
        .iter()
        .map(|s| s.values.iter().map(|&v| v > threshold && robust_max > 0.0).collect())
        .collect();
    let mut label: Vec<Vec<u32>> = slices.iter().map(|s| vec![0; s.rows * s.cols]).collect();
    let (mut best, mut best_size, mut next) = (0u32, 0usize, 1u32);
    for z in 0..slices.len() {
        for start in 0..above[z].len() {
            if !above[z][start] || label[z][start] != 0 {
                continue;
            }
            let size = flood(slices, &above, &mut label, (z, start), next);
            if size > best_size {
                (best, best_size) = (next, size);
            }
            next += 1;
        }
    }
    label
        .iter()
        .map(|l| l.iter().map(|&v| u8::from(best != 0 && v == best)).collect())
        .collect()
}

fn flood(slices: &[MaskSlice], above: &[Vec<bool>], label: &mut [Vec<u32>], start: (usize, usize), id: u32) -> usize {
    let mut queue = VecDeque::from([start]);
    label[start.0][start.1] = id;
    let mut size = 0;
    while let Some((z, i)) = queue.pop_front() {
        size += 1;
        let (rows, cols) = (slices[z].rows, slices[z].cols);
        let (r, c) = (i / cols, i % cols);
        let mut visit = |z2: usize, r2: usize, c2: usize| {
            if slices[z2].rows != rows || slices[z2].cols != cols {
                return;
            }
            let j = r2 * cols + c2;
            if above[z2][j] && label[z2][j] == 0 {
                label[z2][j] = id;
                queue.push_back((z2, j));
            }
        };
        if r > 0 {
            visit(z, r - 1, c);
        }
        if r + 1 < rows {
            visit(z, r + 1, c);
        }
        if c > 0 {
            visit(z, r, c - 1);
        }
        if c + 1 < cols {
            visit(z, r, c + 1);
        }
        if z > 0 {
            visit(z - 1, r, c);
        }
        if z + 1 < slices.len() {
            visit(z + 1, r, c);
        }
    }
    size
}

/// An axis-aligned ellipsoid in patient space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ellipsoid {
    pub centre_mm: [f64; 3],
    pub radii_mm: [f64; 3],
}

impl Ellipsoid {
    pub fn contains(&self, point: [f64; 3]) -> bool {
        (0..3)
            .map(|k| ((point[k] - self.centre_mm[k]) / self.radii_mm[k]).powi(2))
            .sum::<f64>()
            <= 1.0
    }
}

/// Seeded ellipsoids centred on brain pixels, `count` of them with diameters
/// drawn from `diameter_mm`, rasterised on every slice and clipped to the
/// brain. The seed stream depends on (seed, series key, variant) only.
pub fn generate(
    slices: &[MaskSlice],
    seed: u64,
    series_key: &str,
    variant: u32,
    count: u32,
    diameter_mm: [f32; 2],
) -> Vec<Vec<u8>> {
    let brain = brain_mask(slices);
    let brain_pixels: Vec<(usize, usize)> = brain
        .iter()
        .enumerate()
        .flat_map(|(z, m)| m.iter().enumerate().filter(|(_, v)| **v != 0).map(move |(i, _)| (z, i)))
        .collect();
    if brain_pixels.is_empty() {
        return brain;
    }
    let mut rng = slice_rng(seed, series_key, variant, "mask");
    let (low, high) = (
        diameter_mm[0].min(diameter_mm[1]) as f64,
        diameter_mm[0].max(diameter_mm[1]) as f64,
    );
    let ellipsoids: Vec<Ellipsoid> = (0..count)
        .map(|_| {
            let (z, i) = brain_pixels[rng.random_range(0..brain_pixels.len())];
            let cols = slices[z].cols;
            let centre_mm = slices[z].geometry.position(i / cols, i % cols);
            let radii_mm = std::array::from_fn(|_| {
                let d = if high > low { rng.random_range(low..=high) } else { low };
                d / 2.0
            });
            Ellipsoid { centre_mm, radii_mm }
        })
        .collect();
    slices
        .iter()
        .zip(&brain)
        .map(|(s, b)| {
            (0..s.rows * s.cols)
                .map(|i| {
                    let inside = b[i] != 0
                        && ellipsoids
                            .iter()
                            .any(|e| e.contains(s.geometry.position(i / s.cols, i % s.cols)));
                    u8::from(inside)
                })
                .collect()
        })
        .collect()
}

/// Feather weights inside the mask: 0 at the edge rising to 1 at `feather_px`
/// pixels in (city-block distance to the nearest unmasked pixel); 0 outside.
pub fn feather_weights(mask: &[u8], rows: usize, cols: usize, feather_px: u32) -> Vec<f32> {
    if feather_px == 0 {
        return mask.iter().map(|&m| f32::from(m != 0)).collect();
    }
    let mut distance = vec![u32::MAX; mask.len()];
    let mut queue = VecDeque::new();
    for (i, &m) in mask.iter().enumerate() {
        if m == 0 {
            distance[i] = 0;
            queue.push_back(i);
        }
    }
    while let Some(i) = queue.pop_front() {
        let (r, c) = (i / cols, i % cols);
        let d = distance[i] + 1;
        let mut relax = |j: usize| {
            if distance[j] > d {
                distance[j] = d;
                queue.push_back(j);
            }
        };
        if r > 0 {
            relax(i - cols);
        }
        if r + 1 < rows {
            relax(i + cols);
        }
        if c > 0 {
            relax(i - 1);
        }
        if c + 1 < cols {
            relax(i + 1);
        }
    }
    distance
        .iter()
        .map(|&d| {
            if d == 0 {
                0.0
            } else {
                (d as f32 / feather_px as f32).min(1.0)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feather_rises_from_the_mask_edge_and_is_zero_outside() {
        // A 1 × 7 strip masked in columns 1..=5.
        let mask = [0, 1, 1, 1, 1, 1, 0];
        let w = feather_weights(&mask, 1, 7, 2);
        assert_eq!(w, vec![0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0]);
        let hard = feather_weights(&mask, 1, 7, 0);
        assert_eq!(hard, vec![0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn pixel_positions_follow_dicom_orientation_and_spacing() {
        // Row direction along +x with 0.5 mm between columns, column direction along +y with 2 mm between rows.
        let g = SliceGeometry {
            origin_mm: [10.0, 20.0, 30.0],
            row_direction: [1.0, 0.0, 0.0],
            column_direction: [0.0, 1.0, 0.0],
            pixel_spacing_mm: [2.0, 0.5],
        };
        assert_eq!(g.position(3, 4), [12.0, 26.0, 30.0]);
        let e = Ellipsoid {
            centre_mm: [12.0, 26.0, 30.0],
            radii_mm: [1.0, 1.0, 1.0],
        };
        assert!(e.contains(g.position(3, 4)) && e.contains(g.position(3, 5)) && !e.contains(g.position(4, 4)));
    }
}
