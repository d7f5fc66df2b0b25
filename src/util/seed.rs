//! Seeds derived from text, and seeded samples: the portable randomness every stage shares.
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// A u64 from the sha256 of `text`: a stable seed (or uniform draw) named by what it is for.
pub fn from_text(text: &str) -> u64 {
    let h = crate::util::io::sha256_hex(text.as_bytes());
    u64::from_str_radix(&h[..16], 16).expect("hex")
}

/// A seeded sample of `n` items (all when there are no more), kept in their original order.
pub fn sample_in_order<T: Clone>(items: &[T], n: usize, seed: u64) -> Vec<T> {
    if items.len() <= n {
        return items.to_vec();
    }
    let mut idx: Vec<usize> = (0..items.len()).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let mut keep = idx[..n].to_vec();
    keep.sort_unstable();
    keep.into_iter().map(|i| items[i].clone()).collect()
}
