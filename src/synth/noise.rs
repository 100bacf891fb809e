//! Per-slice noise. Each slice gets its own ChaCha20 stream seeded from
//! (pipeline seed, slice id, variant) through SHA-256, so a slice draws the
//! same noise whatever batch it lands in, in whatever order, on however many
//! threads.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use sha2::{Digest, Sha256};

/// Domain separation, so these seeds never collide with other uses of the hash.
const DOMAIN: &[u8] = b"synthd/noise/v1";

/// The RNG for one slice of one variant; `purpose` separates independent
/// streams of the same slice (sampler noise vs generated masks).
pub fn slice_rng(seed: u64, slice_id: &str, variant: u32, purpose: &str) -> ChaCha20Rng {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    hasher.update(seed.to_le_bytes());
    // Lengths first, so ("ab", "c") and ("a", "bc") differ.
    hasher.update((slice_id.len() as u64).to_le_bytes());
    hasher.update(slice_id.as_bytes());
    hasher.update(variant.to_le_bytes());
    hasher.update((purpose.len() as u64).to_le_bytes());
    hasher.update(purpose.as_bytes());
    ChaCha20Rng::from_seed(hasher.finalize().into())
}

/// Fills `out` with standard normal draws.
pub fn fill_normal(rng: &mut ChaCha20Rng, out: &mut [f32]) {
    for value in out {
        *value = StandardNormal.sample(rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_stream_and_each_input_matters() {
        let draw = |seed, id: &str, variant| {
            let mut out = [0.0f32; 8];
            fill_normal(&mut slice_rng(seed, id, variant, "sampler"), &mut out);
            out
        };
        assert_eq!(draw(1, "1.2.3", 0), draw(1, "1.2.3", 0));
        assert_ne!(draw(1, "1.2.3", 0), draw(2, "1.2.3", 0));
        assert_ne!(draw(1, "1.2.3", 0), draw(1, "1.2.4", 0));
        assert_ne!(draw(1, "1.2.3", 0), draw(1, "1.2.3", 1));
    }
}
