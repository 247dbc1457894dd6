//! Reconnect delays: capped exponential backoff with jitter.

use std::time::Duration;

/// Capped exponential backoff with jitter (a small xorshift; no need for
/// cryptographic randomness).
pub(super) struct Jitter(u64);

impl Jitter {
    pub(super) fn new(seed: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in seed.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
        Jitter((nanos ^ hash) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// The delay before attempt `failures` (1-based): min·2^(n-1), capped at
    /// max, then a random point in its upper half.
    pub(super) fn backoff(&mut self, failures: u32, min: Duration, max: Duration) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        let base = min.saturating_mul(1u32 << exponent).min(max);
        let half = base / 2;
        let span = (base - half).as_millis() as u64;
        let extra = if span == 0 {
            0
        } else {
            self.next() % (span + 1)
        };
        half + Duration::from_millis(extra)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut jitter = Jitter::new("x");
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for failures in 1..40 {
            let delay = jitter.backoff(failures, min, max);
            let exponent = (failures - 1).min(20);
            let base = min.saturating_mul(1 << exponent).min(max);
            assert!(delay >= base / 2 && delay <= base, "{failures}: {delay:?}");
        }
    }
}
