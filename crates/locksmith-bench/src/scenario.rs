//! The scenarios every results table is organised by.
//!
//! Each scenario has a stable id (what runners write into the `scenario` field of a
//! [`Record`](crate::record::Record)), a title, the unit its rows use and whether a lower
//! or a higher number is better.

/// Whether a smaller or a larger number is better for a scenario's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// A time: ns/op, µs per round trip.
    Lower,
    /// A rate: cycles/s.
    Higher,
}

/// One scenario: a table in RESULTS.md.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Stable id written in every record of this scenario.
    pub id: &'static str,
    /// Title of the table.
    pub title: &'static str,
    /// The unit every row of this scenario uses.
    pub unit: &'static str,
    /// Whether lower or higher is better.
    pub better: Better,
    /// What exactly one operation is, said once under the table.
    pub what: &'static str,
}

/// Uncontended acquire+release in one process.
pub const UNCONTENDED: &str = "uncontended";
/// Two processes contending for one lock.
pub const CONTENTION: &str = "contention2";
/// Hand-off latency between two processes.
pub const HANDOFF: &str = "handoff";
/// Event/Semaphore ping-pong between two processes.
pub const PINGPONG: &str = "pingpong";
/// Barrier of two processes.
pub const BARRIER: &str = "barrier";
/// Async acquire+release.
pub const ASYNC: &str = "async";
/// Other primitives in one process (RLock, BoundedSemaphore, Averager).
pub const PRIMITIVES: &str = "primitives";
/// Opening a named primitive.
pub const OPEN: &str = "open";
/// Cost per operation with 10 and 1,000,000 names in one store.
pub const NAMES: &str = "names";
/// locksmith's Python modules against the ones they replace: paired ratios.
pub const PYTHON: &str = "python";
/// The unit of a ratio row: ours / the peer's.
pub const RATIO: &str = "×";

/// Every scenario, in the order RESULTS.md shows them.
pub const ALL: &[Scenario] = &[
    Scenario {
        id: UNCONTENDED,
        title: "Uncontended Lock acquire+release, one process",
        unit: "ns/op",
        better: Better::Lower,
        what: "one op = acquire then release of a free lock (store peers: the round trips a lock needs)",
    },
    Scenario {
        id: CONTENTION,
        title: "Two processes contending for one Lock",
        unit: "cycles/s",
        better: Better::Higher,
        what: "total acquire+release cycles per second of both processes together, each looping on the same lock",
    },
    Scenario {
        id: HANDOFF,
        title: "Hand-off latency between processes",
        unit: "µs",
        better: Better::Lower,
        what: "time from release in process A to the return of acquire in process B, which was already waiting",
    },
    Scenario {
        id: PINGPONG,
        title: "Event/Semaphore ping-pong between two processes",
        unit: "µs",
        better: Better::Lower,
        what: "one round trip: A signals B, B signals back, A sees it",
    },
    Scenario {
        id: BARRIER,
        title: "Barrier of two processes",
        unit: "µs",
        better: Better::Lower,
        what: "one barrier generation: both processes pass wait()",
    },
    Scenario {
        id: ASYNC,
        title: "Async acquire+release, uncontended",
        unit: "ns/op",
        better: Better::Lower,
        what: "one op = an awaited acquire and a release (Twisted: one DeferredLock.run of a ready function)",
    },
    Scenario {
        id: PRIMITIVES,
        title: "Other primitives, one process",
        unit: "ns/op",
        better: Better::Lower,
        what: "one op = acquire+release (RLock, semaphores) or one add (Averager)",
    },
    Scenario {
        id: OPEN,
        title: "Opening a named primitive",
        unit: "ns/op",
        better: Better::Lower,
        what: "open an existing named primitive and close the handle",
    },
    Scenario {
        id: NAMES,
        title: "Cost per operation at 10 and 1,000,000 names",
        unit: "ns/op",
        better: Better::Lower,
        what: "uncontended acquire+release on one name while the store holds 10 or 1,000,000 others",
    },
    Scenario {
        id: PYTHON,
        title: "Python: locksmith's modules against the ones they replace",
        unit: RATIO,
        better: Better::Lower,
        what: "one row = ours / the peer's time, measured from Python: both run in \
               alternating batches of the same length (about 0.2 ms each), and each number is \
               a median (p10, p90) of the per-pair ratios, so the machine's load cancels out \
               of it; below 1, ours is faster. The note gives both sides' medians",
    },
];

/// Looks a scenario up by id.
pub fn find(id: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|s| s.id == id)
}
