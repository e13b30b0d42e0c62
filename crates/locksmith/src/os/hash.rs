//! The stable name hash: FNV-1a, 64 bits. Unlike std's randomly keyed hasher, every
//! process and every build computes the same value, so hashes may be kept in shared
//! memory and files, and compared across processes.

/// FNV-1a of `bytes`.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a() {
        // The published FNV-1a test values: stores on disk and in shared memory keep
        // these hashes, so they may never change.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
