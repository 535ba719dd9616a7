//! The state digest: a hash of the `state` column family's contents that is kept up to date as entries apply,
//! so a node's status costs O(1) however large the state grows.
//!
//! The digest is the sum, modulo 2^256, of SHA-256 over each pair (key length, key, value length, value; lengths as
//! big-endian u64). A sum does not depend on the order pairs are added in, and removing a pair subtracts its term,
//! so applying an entry updates the digest with the pairs it replaces and the pairs it writes (Bellare and
//! Micciancio's AdHash). Two replicas with equal contents have equal digests; a difference anywhere changes the
//! digest except with negligible probability. The digest is stored next to `last_applied` in the same WriteBatch,
//! and a full recomputation ([`StateDigest::of_pairs`]) checks the running value on demand (`?verify=true` on the
//! status).

use sha2::{Digest, Sha256};

/// A 256-bit sum of per-pair hashes, as four little-endian 64-bit limbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateDigest([u64; 4]);

impl StateDigest {
    /// The digest of the empty state.
    pub const EMPTY: StateDigest = StateDigest([0; 4]);

    /// The digest of every pair `pairs` yields.
    pub fn of_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = Result<(K, V), rocksdb::Error>>,
    ) -> Result<StateDigest, rocksdb::Error> {
        let mut digest = StateDigest::EMPTY;
        for pair in pairs {
            let (key, value) = pair?;
            digest.add(key.as_ref(), value.as_ref());
        }
        Ok(digest)
    }

    /// Adds a pair that is now in the state.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        self.add_term(PairTerm::of(key, value));
    }

    /// Removes a pair that was in the state.
    pub fn remove(&mut self, key: &[u8], value: &[u8]) {
        self.remove_term(PairTerm::of(key, value));
    }

    /// Adds a pair that is now in the state, by its term.
    pub fn add_term(&mut self, term: PairTerm) {
        let mut carry = false;
        for (limb, t) in self.0.iter_mut().zip(term.0) {
            let (sum, c1) = limb.overflowing_add(t);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            *limb = sum;
            carry = c1 || c2;
        }
    }

    /// Removes a pair that was in the state, by its term (what [`PairTerm::of`] gave when it was added).
    pub fn remove_term(&mut self, term: PairTerm) {
        let mut borrow = false;
        for (limb, t) in self.0.iter_mut().zip(term.0) {
            let (diff, b1) = limb.overflowing_sub(t);
            let (diff, b2) = diff.overflowing_sub(u64::from(borrow));
            *limb = diff;
            borrow = b1 || b2;
        }
    }

    /// The stored form: 32 bytes, most significant first.
    pub fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, limb) in out.chunks_exact_mut(8).zip(self.0.iter().rev()) {
            chunk.copy_from_slice(&limb.to_be_bytes());
        }
        out
    }

    /// Reads the stored form; None when `bytes` is not 32 bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Option<StateDigest> {
        if bytes.len() != 32 {
            return None;
        }
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().rev().zip(bytes.chunks_exact(8)) {
            *limb = u64::from_be_bytes(chunk.try_into().expect("chunks of 8"));
        }
        Some(StateDigest(limbs))
    }

    /// Lower-case hex of the stored form.
    pub fn hex(self) -> String {
        hex::encode(self.to_bytes())
    }
}

/// One pair's share of the digest: SHA-256 of the pair, as four little-endian limbs of the 256-bit big-endian
/// number it spells. Kept by whoever wants to remove the pair later without reading its value back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairTerm([u64; 4]);

impl PairTerm {
    /// The term of `key` holding `value`.
    pub fn of(key: &[u8], value: &[u8]) -> PairTerm {
        let mut hasher = Sha256::new();
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key);
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value);
        let hash = hasher.finalize();
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().rev().zip(hash.chunks_exact(8)) {
            *limb = u64::from_be_bytes(chunk.try_into().expect("chunks of 8"));
        }
        PairTerm(limbs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> StateDigest {
        StateDigest::of_pairs(pairs.iter().map(|(k, v)| Ok::<_, rocksdb::Error>((k.as_bytes(), v.as_bytes()))))
            .expect("no read errors")
    }

    #[test]
    fn order_of_additions_does_not_matter() {
        assert_eq!(of(&[("a", "1"), ("b", "2"), ("c", "3")]), of(&[("c", "3"), ("a", "1"), ("b", "2")]));
    }

    #[test]
    fn replacing_a_value_equals_building_the_result_from_scratch() {
        let mut running = of(&[("a", "1"), ("b", "2")]);
        running.remove(b"b", b"2");
        running.add(b"b", b"20");
        running.add(b"c", b"3");
        assert_eq!(running, of(&[("a", "1"), ("b", "20"), ("c", "3")]));
        running.remove(b"a", b"1");
        running.remove(b"b", b"20");
        running.remove(b"c", b"3");
        assert_eq!(running, StateDigest::EMPTY);
    }

    #[test]
    fn contents_change_the_digest_and_key_value_boundaries_count() {
        assert_ne!(of(&[("a", "1")]), of(&[("a", "2")]));
        assert_ne!(of(&[("ab", "c")]), of(&[("a", "bc")]));
        assert_ne!(of(&[("a", "1"), ("a", "1")]), of(&[("a", "1")]));
    }

    #[test]
    fn carries_and_borrows_cross_limbs() {
        // A thousand additions of one 256-bit term carry out of the lower limbs; as many removals restore zero.
        let mut d = StateDigest::EMPTY;
        for _ in 0..1000 {
            d.add(b"k", b"v");
        }
        for _ in 0..1000 {
            d.remove(b"k", b"v");
        }
        assert_eq!(d, StateDigest::EMPTY);
        let max = StateDigest([u64::MAX; 4]);
        let mut wrapped = max;
        wrapped.add(b"k", b"v");
        wrapped.remove(b"k", b"v");
        assert_eq!(wrapped, max);
    }

    #[test]
    fn stored_form_round_trips() {
        let d = of(&[("x", "y"), ("z", "w")]);
        assert_eq!(StateDigest::from_bytes(&d.to_bytes()), Some(d));
        assert_eq!(StateDigest::from_bytes(&[0; 31]), None);
        assert_eq!(d.hex().len(), 64);
    }
}
