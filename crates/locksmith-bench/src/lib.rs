//! Benchmarks of locksmith and the side-by-side comparison with peers (issue 6).
//!
//! The crate has four parts:
//!
//! - [`record`]: the results format. Every runner, Rust or Python, writes one JSON object
//!   per measured row into `bench/out/*.jsonl`.
//! - [`measure`] and [`harness`]: timing loops (median and percentiles, never a mean) and
//!   the generic scenario runners. A runner is written once and is given a system through a
//!   small trait ([`harness::ProcLock`], [`harness::Signal`]), so adding a system to a
//!   scenario is one call.
//! - [`peers`]: the systems users would pick instead of locksmith, measured in the same run
//!   on the same machine; and [`locksmith_rows`]: the hook where locksmith's own rows go.
//! - [`report`]: turns the JSON lines into `bench/RESULTS.md` and an SVG chart.
//!
//! The binary `locksmith-bench` drives it all (`run`, `report`, `machine`); `bench/compare.sh`
//! drives the binary and the Python peers.

pub mod harness;
pub mod locksmith_rows;
pub mod measure;
pub mod peers;
pub mod record;
pub mod report;
pub mod scenario;
pub mod shared;
pub mod svg;
