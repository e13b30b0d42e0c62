//! Benchmarks of locksmith and the side-by-side comparison with peers (issue 6).
