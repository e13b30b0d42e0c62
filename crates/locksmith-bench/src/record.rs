//! The results format: one JSON object per line in `bench/out/*.jsonl`.
//!
//! ```json
//! {"scenario":"handoff","system":"pthread mutex (PROCESS_SHARED)","primitive":"Lock",
//!  "median":9.8,"p10":7.1,"p90":14.0,"p99":31.2,"unit":"µs","n":400,"lang":"rust",
//!  "note":"fork, MAP_SHARED"}
//! ```
//!
//! - `median`, `p10`, `p90` (and `p99` where the scenario is a latency) are over `n`
//!   samples; what one sample is depends on the scenario (one timed batch of operations for
//!   ns/op, one hand-off or round trip for latencies, one timed run for cycles/s).
//! - A system whose name starts with `locksmith` is one of ours: RESULTS.md computes every
//!   other row's ratio against it.
//! - `skipped` rows carry only a note (e.g. Redis unreachable) and show up as such.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One measured row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Scenario id, one of [`crate::scenario::ALL`].
    pub scenario: String,
    /// The system measured, e.g. `parking_lot::Mutex` or `locksmith shm`.
    pub system: String,
    /// The primitive measured (Lock, RLock, Semaphore, Event, Barrier, Averager, ...).
    #[serde(default)]
    pub primitive: String,
    /// Median of the samples.
    pub median: f64,
    /// 10th percentile of the samples.
    #[serde(default)]
    pub p10: Option<f64>,
    /// 90th percentile of the samples.
    #[serde(default)]
    pub p90: Option<f64>,
    /// 99th percentile of the samples (latency scenarios).
    #[serde(default)]
    pub p99: Option<f64>,
    /// Unit of median and percentiles.
    pub unit: String,
    /// Number of samples.
    pub n: u64,
    /// Language of the runner (`rust`, `python`).
    #[serde(default)]
    pub lang: String,
    /// Free text: settings that matter when reading the number.
    #[serde(default)]
    pub note: String,
    /// The row was not measured; `note` says why.
    #[serde(default)]
    pub skipped: bool,
}

impl Record {
    /// Whether this row is one of locksmith's own.
    pub fn is_locksmith(&self) -> bool {
        self.system.starts_with("locksmith")
    }
}

/// Writes one record as a JSON line.
pub fn write_line(out: &mut dyn Write, rec: &Record) -> io::Result<()> {
    let line = serde_json::to_string(rec).map_err(io::Error::other)?;
    writeln!(out, "{line}")
}

/// A line that could not be read, with where it was.
#[derive(Debug, Clone)]
pub struct BadLine {
    /// File and line number.
    pub place: String,
    /// What was wrong.
    pub error: String,
}

/// Reads every `*.jsonl` file of a directory, in name order. Lines that are not records are
/// returned apart, never a panic.
pub fn read_dir(dir: &Path) -> io::Result<(Vec<Record>, Vec<BadLine>)> {
    let mut files: Vec<_> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut recs = Vec::new();
    let mut bad = Vec::new();
    for f in files {
        let file = fs::File::open(&f)?;
        for (i, line) in io::BufReader::new(file).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(&line) {
                Ok(r) if r.median.is_finite() => recs.push(r),
                Ok(_) => bad.push(BadLine {
                    place: format!("{}:{}", f.display(), i + 1),
                    error: "median is not a finite number".into(),
                }),
                Err(e) => bad.push(BadLine {
                    place: format!("{}:{}", f.display(), i + 1),
                    error: e.to_string(),
                }),
            }
        }
    }
    Ok((recs, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_defaults() {
        let r: Record = serde_json::from_str(
            r#"{"scenario":"uncontended","system":"x","median":1.5,"unit":"ns/op","n":3}"#,
        )
        .unwrap();
        assert_eq!(r.p10, None);
        assert!(!r.skipped);
        let mut buf = Vec::new();
        write_line(&mut buf, &r).unwrap();
        let back: Record = serde_json::from_slice(&buf).unwrap();
        assert_eq!(back, r);
    }
}
