//! Where two byte strings differ, fast: whole chunks are compared with one
//! slice comparison (a `memcmp`), and only differing chunks byte by byte.
//!
//! The fuzz targets compare all of guest memory (72 KiB) and the image
//! (32 KiB) after every input. Compared byte by byte, that loop is
//! instrumented for coverage like the code under test, and it cost most of
//! each input's time (measured with `perf`: `__sanitizer_cov_trace_cmp*`
//! in the harness's own loops).

/// Chunk size: most inputs change nothing, or a few hundred bytes.
const CHUNK: usize = 256;

/// The offsets at which `a` and `b` differ (over their common length).
pub fn changed_offsets(a: &[u8], b: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, (ca, cb)) in a.chunks(CHUNK).zip(b.chunks(CHUNK)).enumerate() {
        if ca == cb {
            continue;
        }
        let base = i * CHUNK;
        out.extend(
            ca.iter()
                .zip(cb)
                .enumerate()
                .filter(|(_, (x, y))| x != y)
                .map(|(j, _)| base + j),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_difference_and_nothing_else() {
        let a = vec![7u8; 1000];
        let mut b = a.clone();
        assert!(changed_offsets(&a, &b).is_empty());
        for at in [0, 255, 256, 511, 999] {
            b[at] ^= 1;
        }
        assert_eq!(changed_offsets(&a, &b), [0, 255, 256, 511, 999]);
    }
}
