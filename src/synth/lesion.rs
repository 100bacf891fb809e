//! Generated multi-component lesions, defined in patient space (mm): nested,
//! irregular components (e.g. a necrotic core inside an enhancing rim inside
//! oedema), placed in brain tissue, drawn once per study and variant and
//! rasterised onto every series of the study with that series' own geometry,
//! so a study's T1 and FLAIR show the same lesion.
//!
//! Each boundary is a star-shaped surface around the lesion centre: along a
//! unit direction u, component k ends at r_k(u), with
//! r_1(u) = d₁/2 · (1 + a·f₁(u)) and r_k(u) = r_{k−1}(u) + t_k · (1 + a·f_k(u)),
//! where d₁ is the innermost diameter, t_k the shell thicknesses, a the
//! irregularity (< 1) and f_k a smooth random function of u in [−1, 1]; every
//! shell has positive thickness, so the components nest by construction and
//! are exclusive.

use super::mask::{brain_mask, MaskSlice, SliceGeometry};
use super::noise::slice_rng;
use crate::config::pipeline::LesionSpec;
use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// A slice's rows, columns and geometry: what rasterising needs.
pub type SliceFrame = (usize, usize, SliceGeometry);

/// Cosine terms in each boundary's modulation.
const TERMS: usize = 4;
/// Candidate centres tried before the best one found is taken.
const PLACEMENT_TRIES: usize = 64;

/// A smooth random function of the direction: Σ a_j cos(ω_j k_j·u + φ_j),
/// with Σ|a_j| = 1, so its values lie in [−1, 1].
#[derive(Debug, Clone, PartialEq)]
struct Modulation {
    terms: Vec<([f64; 3], f64, f64)>,
}

impl Modulation {
    fn draw(rng: &mut ChaCha20Rng) -> Modulation {
        let mut terms: Vec<([f64; 3], f64, f64)> = (0..TERMS)
            .map(|_| {
                let k = unit(rng);
                let frequency = rng.random_range(1.0..3.0);
                let wave = [k[0] * frequency, k[1] * frequency, k[2] * frequency];
                (
                    wave,
                    rng.random_range(0.1..1.0),
                    rng.random_range(0.0..std::f64::consts::TAU),
                )
            })
            .collect();
        let total: f64 = terms.iter().map(|t| t.1).sum();
        for term in &mut terms {
            term.1 /= total;
        }
        Modulation { terms }
    }

    fn at(&self, u: [f64; 3]) -> f64 {
        self.terms
            .iter()
            .map(|(k, a, phase)| a * (k[0] * u[0] + k[1] * u[1] + k[2] * u[2] + phase).cos())
            .sum()
    }
}

/// A uniformly distributed unit vector.
fn unit(rng: &mut ChaCha20Rng) -> [f64; 3] {
    let z: f64 = rng.random_range(-1.0..1.0);
    let phi: f64 = rng.random_range(0.0..std::f64::consts::TAU);
    let s = (1.0 - z * z).sqrt();
    [s * phi.cos(), s * phi.sin(), z]
}

/// One lesion: a centre and, per component (innermost first), its base
/// size (innermost: radius; others: shell thickness) and modulation.
#[derive(Debug, Clone, PartialEq)]
pub struct Lesion {
    pub centre_mm: [f64; 3],
    sizes_mm: Vec<f64>,
    shapes: Vec<Modulation>,
    irregularity: f64,
}

impl Lesion {
    /// The largest distance from the centre any component reaches.
    pub fn outer_radius_mm(&self) -> f64 {
        self.sizes_mm.iter().sum::<f64>() * (1.0 + self.irregularity)
    }

    /// 0 outside, else the component (1 = innermost) at `point`.
    pub fn label_at(&self, point: [f64; 3]) -> u8 {
        let d = [
            point[0] - self.centre_mm[0],
            point[1] - self.centre_mm[1],
            point[2] - self.centre_mm[2],
        ];
        let distance = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
        if distance > self.outer_radius_mm() {
            return 0;
        }
        if distance == 0.0 {
            return 1;
        }
        let u = [d[0] / distance, d[1] / distance, d[2] / distance];
        let mut boundary = 0.0;
        for (k, (size, shape)) in self.sizes_mm.iter().zip(&self.shapes).enumerate() {
            boundary += size * (1.0 + self.irregularity * shape.at(u));
            if distance <= boundary {
                return k as u8 + 1;
            }
        }
        0
    }
}

/// The lesions of one study and variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Lesions {
    pub lesions: Vec<Lesion>,
}

impl Lesions {
    /// Draws `spec.count` lesions from (seed, study key, variant), centred in
    /// the brain of `reference` (one series of the study, its slices in
    /// order) where their outer boundary stays inside it when possible.
    pub fn generate(spec: &LesionSpec, seed: u64, study_key: &str, variant: u32, reference: &[MaskSlice]) -> Lesions {
        let brain = brain_mask(reference);
        let brain_pixels: Vec<(usize, usize)> = brain
            .iter()
            .enumerate()
            .flat_map(|(z, m)| m.iter().enumerate().filter(|(_, v)| **v != 0).map(move |(i, _)| (z, i)))
            .collect();
        let mut rng = slice_rng(seed, study_key, variant, "lesion");
        let irregularity = f64::from(spec.irregularity).min(0.9);
        let lesions = (0..spec.count)
            .map(|_| {
                let sizes_mm: Vec<f64> = spec
                    .components
                    .iter()
                    .enumerate()
                    .map(|(k, c)| {
                        let [low, high] = [f64::from(c.size_mm[0]), f64::from(c.size_mm[1])];
                        let size = if high > low { rng.random_range(low..=high) } else { low };
                        // The innermost size is a diameter, the others shell thicknesses.
                        if k == 0 {
                            size / 2.0
                        } else {
                            size
                        }
                    })
                    .collect();
                let shapes = spec.components.iter().map(|_| Modulation::draw(&mut rng)).collect();
                let mut lesion = Lesion {
                    centre_mm: [0.0; 3],
                    sizes_mm,
                    shapes,
                    irregularity,
                };
                lesion.centre_mm = place(&mut rng, reference, &brain, &brain_pixels, lesion.outer_radius_mm());
                lesion
            })
            .collect();
        Lesions { lesions }
    }

    /// 0 outside every lesion, else the innermost component any lesion puts at `point`.
    pub fn label_at(&self, point: [f64; 3]) -> u8 {
        self.lesions
            .iter()
            .map(|l| l.label_at(point))
            .filter(|&k| k != 0)
            .min()
            .unwrap_or(0)
    }

    /// The label map (0 = none, k = component k) of each slice, in its own geometry.
    pub fn rasterise(&self, slices: &[SliceFrame]) -> Vec<Vec<u8>> {
        slices
            .iter()
            .map(|&(rows, cols, geometry)| {
                let mut labels = vec![0u8; rows * cols];
                for lesion in &self.lesions {
                    draw(lesion, rows, cols, &geometry, &mut labels);
                }
                labels
            })
            .collect()
    }
}

/// Draws one lesion onto a slice, visiting only the pixels its bounding
/// sphere can reach; where lesions overlap the innermost component wins.
fn draw(lesion: &Lesion, rows: usize, cols: usize, g: &SliceGeometry, labels: &mut [u8]) {
    let radius = lesion.outer_radius_mm();
    let offset: [f64; 3] = std::array::from_fn(|k| lesion.centre_mm[k] - g.origin_mm[k]);
    let dot = |a: [f64; 3], b: [f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    let normal = cross(g.row_direction, g.column_direction);
    if dot(offset, normal).abs() > radius {
        return;
    }
    let [dr, dc] = g.pixel_spacing_mm;
    let (row, col) = (dot(offset, g.column_direction) / dr, dot(offset, g.row_direction) / dc);
    let span = |centre: f64, spacing: f64, n: usize| {
        let low = ((centre - radius / spacing).floor().max(0.0) as usize).min(n);
        let high = ((centre + radius / spacing).ceil() + 1.0).clamp(0.0, n as f64) as usize;
        low..high
    };
    for r in span(row, dr, rows) {
        for c in span(col, dc, cols) {
            let k = lesion.label_at(g.position(r, c));
            let cell = &mut labels[r * cols + c];
            if k != 0 && (*cell == 0 || k < *cell) {
                *cell = k;
            }
        }
    }
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// A centre on a brain pixel whose sphere of `radius` stays in the brain
/// (checked along 26 directions); the best of the candidates tried when
/// none does. The middle of the reference when it has no brain at all.
fn place(
    rng: &mut ChaCha20Rng,
    slices: &[MaskSlice],
    brain: &[Vec<u8>],
    brain_pixels: &[(usize, usize)],
    radius: f64,
) -> [f64; 3] {
    if brain_pixels.is_empty() {
        let middle = &slices[slices.len() / 2];
        return middle.geometry.position(middle.rows / 2, middle.cols / 2);
    }
    let directions: Vec<[f64; 3]> = (0..27)
        .filter(|&i| i != 13)
        .map(|i| {
            let d = [(i / 9) as f64 - 1.0, ((i / 3) % 3) as f64 - 1.0, (i % 3) as f64 - 1.0];
            let n = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
            [d[0] / n, d[1] / n, d[2] / n]
        })
        .collect();
    let frames: Vec<SliceFrame> = slices.iter().map(|s| (s.rows, s.cols, s.geometry)).collect();
    let mut best = ([0.0; 3], usize::MAX);
    for _ in 0..PLACEMENT_TRIES {
        let (z, i) = brain_pixels[rng.random_range(0..brain_pixels.len())];
        let centre = slices[z].geometry.position(i / slices[z].cols, i % slices[z].cols);
        let outside = directions
            .iter()
            .filter(|u| {
                let p = std::array::from_fn(|k| centre[k] + radius * u[k]);
                locate(&frames, p).is_none_or(|(z, i)| brain[z][i] == 0)
            })
            .count();
        if outside < best.1 {
            best = (centre, outside);
        }
        if outside == 0 {
            break;
        }
    }
    best.0
}

/// Label maps of a reference stack carried through patient space onto the
/// slices of another series (another geometry, slice spacing or in-plane
/// spacing) of the same Frame of Reference: each target pixel takes the
/// label of the nearest reference pixel, 0 where it lies outside the
/// reference stack. So one SEG, drawn on one series, marks the same tissue
/// on every series of the study.
pub fn carry_labels(reference: &[SliceFrame], labels: &[Vec<u8>], target: &[SliceFrame]) -> Vec<Vec<u8>> {
    target
        .iter()
        .map(|&(rows, cols, geometry)| {
            let mut out = vec![0u8; rows * cols];
            for (index, cell) in out.iter_mut().enumerate() {
                let point = geometry.position(index / cols, index % cols);
                if let Some((z, i)) = locate(reference, point) {
                    *cell = labels[z].get(i).copied().unwrap_or(0);
                }
            }
            out
        })
        .collect()
}

/// The slice and pixel of `slices` nearest `point`, when it lies within the
/// stack (within half a slice gap of a slice plane and on its pixels).
fn locate(slices: &[SliceFrame], point: [f64; 3]) -> Option<(usize, usize)> {
    let dot = |a: [f64; 3], b: [f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    let along = |g: &SliceGeometry, p: [f64; 3]| {
        let offset = std::array::from_fn(|k| p[k] - g.origin_mm[k]);
        (
            dot(offset, cross(g.row_direction, g.column_direction)),
            dot(offset, g.column_direction) / g.pixel_spacing_mm[0],
            dot(offset, g.row_direction) / g.pixel_spacing_mm[1],
        )
    };
    let (z, (distance, row, col)) = slices
        .iter()
        .map(|s| along(&s.2, point))
        .enumerate()
        .min_by(|a, b| a.1 .0.abs().total_cmp(&b.1 .0.abs()))?;
    let gap = if slices.len() > 1 {
        let a = &slices[z.saturating_sub(1).min(slices.len() - 2)];
        let b = &slices[z.saturating_sub(1).min(slices.len() - 2) + 1];
        along(&a.2, b.2.origin_mm).0.abs()
    } else {
        1.0
    };
    let (rows, cols, _) = slices[z];
    let (r, c) = (row.round(), col.round());
    let inside =
        distance.abs() <= gap / 2.0 + 1e-6 && r >= 0.0 && c >= 0.0 && (r as usize) < rows && (c as usize) < cols;
    inside.then(|| (z, r as usize * cols + c as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::pipeline::LesionComponent;
    use crate::synth::condition::CondChannel;

    fn spec() -> LesionSpec {
        let component = |plane: &str, size_mm: [f32; 2]| LesionComponent {
            plane: CondChannel::try_from(plane.to_string()).unwrap(),
            size_mm,
        };
        LesionSpec {
            count: 1,
            irregularity: 0.3,
            components: vec![
                component("label:necrosis", [6.0, 8.0]),
                component("label:enhancing", [2.0, 3.0]),
                component("label:edema", [4.0, 6.0]),
            ],
        }
    }

    /// A FAKE head: a bright ball of radius 40 mm around the origin, on axial
    /// slices of `spacing` mm pixels every `gap` mm.
    fn head(spacing: f64, gap: f64, n: usize) -> (Vec<Vec<f32>>, Vec<SliceFrame>) {
        let size = (100.0 / spacing) as usize;
        let mut values = Vec::new();
        let mut geometry = Vec::new();
        for z in 0..n {
            let mut g = SliceGeometry::axial(-(n as f64 - 1.0) * gap / 2.0 + z as f64 * gap, spacing);
            g.origin_mm = [-50.0, -50.0, g.origin_mm[2]];
            let v = (0..size * size)
                .map(|i| {
                    let p = g.position(i / size, i % size);
                    if p.iter().map(|x| x * x).sum::<f64>() < 40.0 * 40.0 {
                        500.0
                    } else {
                        0.0
                    }
                })
                .collect();
            values.push(v);
            geometry.push((size, size, g));
        }
        (values, geometry)
    }

    fn views<'a>(values: &'a [Vec<f32>], geometry: &[SliceFrame]) -> Vec<MaskSlice<'a>> {
        values
            .iter()
            .zip(geometry)
            .map(|(v, &(rows, cols, geometry))| MaskSlice {
                rows,
                cols,
                values: v,
                geometry,
            })
            .collect()
    }

    #[test]
    fn components_nest_inside_the_brain_and_the_draw_is_seeded_per_study() {
        let (values, geometry) = head(2.0, 2.0, 40);
        let reference = views(&values, &geometry);
        let lesions = Lesions::generate(&spec(), 7, "study-a", 0, &reference);
        assert_eq!(lesions, Lesions::generate(&spec(), 7, "study-a", 0, &reference));
        assert_ne!(lesions, Lesions::generate(&spec(), 7, "study-b", 0, &reference));
        assert_ne!(lesions, Lesions::generate(&spec(), 7, "study-a", 1, &reference));
        let lesion = &lesions.lesions[0];
        let c = lesion.centre_mm;
        assert!(
            c.iter().map(|x| x * x).sum::<f64>().sqrt() + 0.85 * lesion.outer_radius_mm() < 40.0,
            "{c:?}"
        );
        // Along any ray from the centre, labels go 1, 2, 3, 0 and never back.
        for i in 0..50 {
            let u = unit(&mut slice_rng(1, "ray", i, "test"));
            let mut last = 1;
            for step in 0..300 {
                let d = step as f64 * 0.1;
                let k = lesion.label_at(std::array::from_fn(|a| c[a] + d * u[a]));
                let rank = if k == 0 { 4 } else { k };
                assert!(rank >= last, "ray {i}: component {k} after {last} at {d} mm");
                last = rank;
            }
            assert_eq!(last, 4, "ray {i} leaves the lesion");
        }
        let labels = lesions.rasterise(&geometry);
        for k in 1..=3u8 {
            assert!(labels.iter().flatten().any(|&v| v == k), "component {k} drawn");
        }
    }

    #[test]
    fn the_same_lesion_voxels_in_patient_space_on_two_geometries() {
        // Series A: 1 mm pixels, 2 mm slices; series B: 2 mm pixels, 4 mm
        // slices, so every B pixel centre is also an A pixel centre.
        let (values, a) = head(1.0, 2.0, 41);
        let (_, b) = head(2.0, 4.0, 21);
        let lesions = Lesions::generate(&spec(), 3, "study", 0, &views(&values, &a));
        let (la, lb) = (lesions.rasterise(&a), lesions.rasterise(&b));
        let mut shared = 0;
        for (zb, (rows, cols, gb)) in b.iter().enumerate() {
            let za = 2 * zb;
            assert_eq!(a[za].2.origin_mm[2], gb.origin_mm[2]);
            for r in 0..*rows {
                for c in 0..*cols {
                    assert_eq!(a[za].2.position(2 * r, 2 * c), gb.position(r, c));
                    let (va, vb) = (la[za][2 * r * a[za].1 + 2 * c], lb[zb][r * cols + c]);
                    assert_eq!(va, vb, "slice {zb} pixel ({r}, {c})");
                    shared += usize::from(vb != 0);
                }
            }
        }
        assert!(shared > 100, "the lesion covers {shared} shared voxels");
    }

    #[test]
    fn labels_drawn_on_one_series_carry_to_another_geometry() {
        // A SEG drawn on series A (1 mm pixels, 2 mm slices) carried to
        // series B (2 mm pixels, 4 mm slices, 1 mm further along z than A's
        // first slice), checked against the lesion drawn directly on B.
        let (values, a) = head(1.0, 2.0, 41);
        let (_, mut b) = head(2.0, 4.0, 20);
        for frame in &mut b {
            frame.2.origin_mm[2] += 1.0;
        }
        let lesions = Lesions::generate(&spec(), 5, "study", 0, &views(&values, &a));
        let carried = carry_labels(&a, &lesions.rasterise(&a), &b);
        let direct = lesions.rasterise(&b);
        let (mut agree, mut lesion_voxels) = (0usize, 0usize);
        for (c, d) in carried.iter().flatten().zip(direct.iter().flatten()) {
            lesion_voxels += usize::from(*d != 0);
            agree += usize::from(*d != 0 && c == d);
        }
        assert!(lesion_voxels > 50, "{lesion_voxels}");
        // Nearest-neighbour at 1 mm: only voxels at component borders may differ.
        assert!(agree * 10 >= lesion_voxels * 8, "{agree} of {lesion_voxels} agree");
        // Outside the reference stack nothing is carried.
        let (_, mut far) = head(2.0, 4.0, 3);
        for frame in &mut far {
            frame.2.origin_mm[2] += 500.0;
        }
        let none = carry_labels(&a, &lesions.rasterise(&a), &far);
        assert!(none.iter().flatten().all(|&v| v == 0));
    }
}
