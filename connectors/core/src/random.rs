//! Randomness for jitter: spreading retries and scheduled starts so that many of them do
//! not all fire at once. Not for anything secret.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// A number in `[0, 1)`, different at each call.
pub fn random_fraction() -> f64 {
    // Each `RandomState` is seeded afresh (per process, then advanced per instance), and
    // the clock separates calls further; SipHash mixes both.
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_in_range_and_vary() {
        let values: Vec<f64> = (0..100).map(|_| random_fraction()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let mut distinct = values.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        assert!(distinct.len() > 90);
    }
}
