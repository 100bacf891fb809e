//! The fidelity check on every synthetic instance: the fill's in-mask mean
//! and standard deviation, the same for a ring of surrounding tissue, and,
//! when healthy tissue is painted over healthy tissue, for the original it
//! replaced. The fill's bias is judged against the original when there is
//! one, else against the ring (a lesion removed from a SEG); a lesion fill is
//! meant to differ from its surroundings and is measured, not judged.
//! Values are real-world (after Rescale Slope/Intercept).

use serde::{Deserialize, Serialize};

/// Ring width around the mask, in pixels.
pub const RING_PX: usize = 3;
/// Below this many masked pixels an instance's numbers are too noisy to judge.
pub const MIN_PIXELS: u64 = 50;

/// What the fill is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reference {
    /// The original under the mask (healthy over healthy).
    Original,
    /// The surrounding tissue (healthy over a lesion).
    Ring,
    /// Not judged (a lesion fill).
    None,
}

/// One instance's numbers, as its manifest row's `qc` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qc {
    /// Pixels under the mask.
    pub pixels: u64,
    pub fill_mean: f64,
    pub fill_std: f64,
    /// None when no tissue surrounds the mask.
    pub ring_mean: Option<f64>,
    pub ring_std: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_std: Option<f64>,
    pub reference: Reference,
    /// (fill mean − reference mean) / |reference mean|; None when not judged.
    pub fill_bias: Option<f64>,
}

impl Qc {
    /// Within `max_fill_bias`, or not judged (no reference, too few pixels).
    pub fn passes(&self, max_fill_bias: f32) -> bool {
        match self.fill_bias {
            Some(bias) if self.pixels >= MIN_PIXELS => bias.abs() <= f64::from(max_fill_bias),
            _ => true,
        }
    }
}

/// The tissue threshold of a series: ring pixels darker than 20 % of its
/// robust maximum (99th percentile of positive values) are background, not
/// tissue, and would drag the ring mean down at the edge of the head.
pub fn tissue_threshold<'a>(slices: impl IntoIterator<Item = &'a [f32]>) -> f32 {
    let mut positive: Vec<f32> = slices
        .into_iter()
        .flat_map(|s| s.iter().copied().filter(|v| *v > 0.0 && v.is_finite()))
        .collect();
    positive.sort_by(f32::total_cmp);
    0.2 * crate::synth::tensor::percentile(&positive, 99.0)
}

/// Mean and standard deviation (population) of `values`; None when empty.
fn moments(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut n, mut sum, mut squares) = (0u64, 0.0, 0.0);
    for v in values {
        n += 1;
        sum += v;
        squares += v * v;
    }
    (n > 0).then(|| {
        let mean = sum / n as f64;
        (mean, (squares / n as f64 - mean * mean).max(0.0).sqrt())
    })
}

/// The numbers of one instance; None when its mask is empty.
pub fn measure(
    source: &[f32],
    synthetic: &[f32],
    mask: &[u8],
    (rows, cols): (usize, usize),
    reference: Reference,
    tissue: f32,
) -> Option<Qc> {
    let inside = || mask.iter().enumerate().filter(|(_, m)| **m != 0).map(|(i, _)| i);
    let (fill_mean, fill_std) = moments(inside().map(|i| f64::from(synthetic[i])))?;
    let ring = ring(mask, rows, cols);
    let ring_moments = moments(
        ring.iter()
            .enumerate()
            .filter(|(i, r)| **r && source[*i] > tissue)
            .map(|(i, _)| f64::from(source[i])),
    );
    let original = (reference == Reference::Original)
        .then(|| moments(inside().map(|i| f64::from(source[i]))))
        .flatten();
    let reference_mean = match reference {
        Reference::Original => original.map(|m| m.0),
        Reference::Ring => ring_moments.map(|m| m.0),
        Reference::None => None,
    };
    Some(Qc {
        pixels: inside().count() as u64,
        fill_mean,
        fill_std,
        ring_mean: ring_moments.map(|m| m.0),
        ring_std: ring_moments.map(|m| m.1),
        original_mean: original.map(|m| m.0),
        original_std: original.map(|m| m.1),
        reference,
        fill_bias: reference_mean
            .filter(|m| m.abs() > f64::EPSILON)
            .map(|m| (fill_mean - m) / m.abs()),
    })
}

/// Pixels outside the mask within [`RING_PX`] (chessboard distance) of it.
fn ring(mask: &[u8], rows: usize, cols: usize) -> Vec<bool> {
    let mut ring = vec![false; mask.len()];
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m != 0) {
        let (r, c) = (i / cols, i % cols);
        for rr in r.saturating_sub(RING_PX)..(r + RING_PX + 1).min(rows) {
            for cc in c.saturating_sub(RING_PX)..(c + RING_PX + 1).min(cols) {
                let j = rr * cols + cc;
                if mask[j] == 0 {
                    ring[j] = true;
                }
            }
        }
    }
    ring
}

/// The pixel-weighted numbers of a whole series (for its summary and preview).
pub fn combine(instances: &[&Qc]) -> Option<Qc> {
    let first = instances.first()?;
    let pixels: u64 = instances.iter().map(|q| q.pixels).sum();
    let weighted = |f: &dyn Fn(&Qc) -> Option<f64>| -> Option<f64> {
        let (mut sum, mut weight) = (0.0, 0.0);
        for q in instances {
            if let Some(v) = f(q) {
                sum += v * q.pixels as f64;
                weight += q.pixels as f64;
            }
        }
        (weight > 0.0).then(|| sum / weight)
    };
    let fill_mean = weighted(&|q| Some(q.fill_mean))?;
    let original_mean = weighted(&|q| q.original_mean);
    let ring_mean = weighted(&|q| q.ring_mean);
    let reference_mean = match first.reference {
        Reference::Original => original_mean,
        Reference::Ring => ring_mean,
        Reference::None => None,
    };
    Some(Qc {
        pixels,
        fill_mean,
        fill_std: weighted(&|q| Some(q.fill_std))?,
        ring_mean,
        ring_std: weighted(&|q| q.ring_std),
        original_mean,
        original_std: weighted(&|q| q.original_std),
        reference: first.reference,
        fill_bias: reference_mean
            .filter(|m| m.abs() > f64::EPSILON)
            .map(|m| (fill_mean - m) / m.abs()),
    })
}

/// The folder under `paths.state` where the daemon records flagged series.
pub const FLAGS_DIR: &str = "qc-flagged";

/// One synthetic series written although its fidelity check failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    pub pipeline: String,
    /// The de-identified source Series Instance UID.
    pub series: String,
    pub message: String,
    /// UTC, RFC 3339.
    pub time: String,
}

/// Records a flagged series as `<state>/qc-flagged/<pipeline>-<series>-<n>.json`
/// (a replay rewrites the same file, so nothing is counted twice).
pub fn record_flag(
    state: &std::path::Path,
    pipeline: &str,
    series: &str,
    n: usize,
    message: &str,
) -> std::io::Result<()> {
    let dir = state.join(FLAGS_DIR);
    crate::fsutil::create_private_dir(&dir)?;
    let flag = Flag {
        pipeline: pipeline.to_string(),
        series: series.to_string(),
        message: message.to_string(),
        time: crate::quarantine::now_rfc3339(),
    };
    let json = serde_json::to_vec(&flag).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&dir.join(format!("{pipeline}-{series}-{n}.json")), &json, 0o640).map(drop)
}

/// Every recorded flag, newest first.
pub fn read_flags(state: &std::path::Path) -> Vec<Flag> {
    let Ok(entries) = std::fs::read_dir(state.join(FLAGS_DIR)) else {
        return Vec::new();
    };
    let mut flags: Vec<Flag> = entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect();
    flags.sort_by(|a: &Flag, b: &Flag| b.time.cmp(&a.time).then_with(|| a.series.cmp(&b.series)));
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_ring_and_original_are_measured_and_the_bias_judged() {
        // 12 × 12 tissue at 100, background 0 in the first two columns; an
        // 8 × 8 mask filled 15 % too bright over an original of 100.
        let (rows, cols) = (12, 12);
        let mut source = vec![100.0f32; rows * cols];
        let mut mask = vec![0u8; rows * cols];
        for r in 0..rows {
            source[r * cols] = 0.0;
            source[r * cols + 1] = 0.0;
        }
        for r in 2..10 {
            for c in 3..11 {
                mask[r * cols + c] = 1;
            }
        }
        let synthetic: Vec<f32> = source
            .iter()
            .zip(&mask)
            .map(|(&s, &m)| if m != 0 { 115.0 } else { s })
            .collect();
        let qc = measure(&source, &synthetic, &mask, (rows, cols), Reference::Original, 20.0).unwrap();
        assert_eq!(qc.pixels, 64);
        assert_eq!((qc.fill_mean, qc.fill_std), (115.0, 0.0));
        assert_eq!(
            (qc.ring_mean, qc.original_mean),
            (Some(100.0), Some(100.0)),
            "background left out"
        );
        assert!((qc.fill_bias.unwrap() - 0.15).abs() < 1e-9);
        assert!(!qc.passes(0.05) && qc.passes(0.2));
        let lesion = measure(&source, &synthetic, &mask, (rows, cols), Reference::None, 20.0).unwrap();
        assert!(lesion.fill_bias.is_none() && lesion.original_mean.is_none() && lesion.passes(0.0));
        let series = combine(&[&qc, &qc]).unwrap();
        assert_eq!((series.pixels, series.fill_bias), (128, qc.fill_bias));
        assert!(measure(
            &source,
            &synthetic,
            &vec![0; rows * cols],
            (rows, cols),
            Reference::Ring,
            20.0
        )
        .is_none());
    }
}
