//! Differential test: random op sequences through the Rust model and through
//! `redis.lua` on a redis-server this test starts, comparing every reply and, after
//! every step, each name's holders, fencing counter and fixed kind.
//!
//! Both sides get the same inputs: ops come from the same generator as the model's
//! property tests, leases are ten years (so no hold lapses on either clock), no
//! waiter is left unclaimed longer than the script's claim time (a case takes
//! milliseconds), and every owner is alive. A blocked reply's retry time is the
//! client's own and is not compared; neither are wake sets (the script publishes them).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use super::{decode, encode, script_call, MAX_LEASE};
use crate::backend::model::{apply, Ctx, Kind, Op, PermitKind, Record, Reply};
use crate::backend::model_props::{case, cases, Driver, RawStep, NAMES};
use crate::os::clock::now_millis;
use crate::Result;

/// A redis-server on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    conn: redis::Connection,
}

impl Server {
    fn start() -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the differential test needs redis-server (apt-get install redis-server)");
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
        // A hang guard, not a synchronization: the server answers PING once it is up.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let conn = client
                .get_connection_with_timeout(Duration::from_secs(1))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).map(|_| c));
            match conn {
                Ok(conn) => return Server { child, conn },
                Err(_) if Instant::now() > deadline => {
                    let mut child = child;
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-server on port {port} did not come up");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The keys of `name` in case `case` (as `RedisBackend::resolve` lays them out).
fn keys(case: u64, name: usize) -> [String; 5] {
    let base = format!("diff{case}:{{n{name}}}");
    [
        base.clone(),
        format!("{base}:q"),
        format!("{base}:d"),
        format!("{base}:i"),
        format!("diff{case}:token-floor"),
    ]
}

/// A reply with what may differ between the two sides left out.
fn comparable(out: &Result<Reply>) -> String {
    match out {
        Ok(Reply::Blocked { .. }) => "Blocked".into(),
        Ok(Reply::Holders { holders, waiting }) => {
            let hs: Vec<_> = holders
                .iter()
                .map(|h| (h.token, &h.owner, h.mode, h.count, h.until.is_some()))
                .collect();
            format!("Holders {hs:?} waiting {waiting}")
        }
        other => format!("{other:?}"),
    }
}

/// The script's form of a fixed kind (`f` in its record).
fn kind_code(kind: Option<Kind>) -> Option<String> {
    Some(match kind? {
        Kind::Permits(k) => match k {
            PermitKind::Lock => "lock:0".into(),
            PermitKind::RLock => "rlock:0".into(),
            PermitKind::Semaphore { initial } => format!("sem:{initial}"),
            PermitKind::BoundedSemaphore { max } => format!("bsem:{max}"),
            PermitKind::RwLock => "rw:0".into(),
            PermitKind::Condition => "cond:0".into(),
        },
        Kind::Event => "event".into(),
        Kind::Barrier { parties } => format!("barrier:{parties}"),
        Kind::Averager => "avg".into(),
    })
}

/// The script's record's counter and kind; a name without a record counts from the
/// prefix's token floor.
fn lua_counter_and_kind(conn: &mut redis::Connection, keys: &[String; 5]) -> (u64, Option<String>) {
    let raw: Option<String> = redis::cmd("GET").arg(&keys[0]).query(conn).unwrap();
    let Some(raw) = raw else {
        let floor: Option<u64> = redis::cmd("GET").arg(&keys[4]).query(conn).unwrap();
        return (floor.unwrap_or(0), None);
    };
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    (
        v["t"].as_u64().unwrap_or(0),
        v["f"].as_str().map(str::to_owned),
    )
}

/// The model's side of a prefix: its records, and the token floor that a name without
/// a record counts on from (the stores' reclaiming, which the script does with the
/// floor key; the model itself never forgets a record).
struct Names {
    records: Vec<Option<Record>>,
    floor: u64,
}

impl Names {
    /// Applies `op` to `name` as a store does: a name without a record starts from the
    /// floor, and a record left with nothing to keep is dropped, as the script drops
    /// its key.
    fn apply(&mut self, name: usize, op: Op, ctx: &Ctx<'_>) -> Result<Reply> {
        let absent = self.records[name].is_none();
        let start = self.floor;
        let record = self.records[name].get_or_insert_with(|| Record {
            next_token: start,
            ..Record::default()
        });
        let out = apply(record, "n", op, ctx).map(|(r, _)| r);
        if record.state.is_none()
            && record.tag.is_none()
            && record.kind.is_none()
            && (record.next_token == 0 || (absent && record.next_token == start))
        {
            self.records[name] = None;
        }
        out
    }

    /// `reclaim_idle` for one name: an idle record is forgotten, kind and all, and the
    /// floor rises to its counter.
    fn reclaim(&mut self, name: usize) -> u64 {
        match &self.records[name] {
            Some(r) if r.state.is_none() && r.tag.is_none() => {
                self.floor = self.floor.max(r.next_token);
                self.records[name] = None;
                1
            }
            _ => 0,
        }
    }

    fn counter_and_kind(&self, name: usize) -> (u64, Option<String>) {
        match &self.records[name] {
            Some(r) => (r.next_token, kind_code(r.kind)),
            None => (self.floor, None),
        }
    }
}

fn run_case(server: &mut Server, case_no: u64, kinds: &[usize], steps: &[RawStep]) {
    let mut driver = Driver::new(kinds, |_| Some(MAX_LEASE));
    let mut names = Names {
        records: (0..NAMES).map(|_| None).collect(),
        floor: 0,
    };
    let mut granted: Vec<Vec<u64>> = vec![Vec::new(); NAMES];
    let mut log = Vec::new();
    for s in steps {
        let ctx = Ctx {
            now: now_millis(),
            is_dead: None,
            waiter_ttl: None,
        };
        let trail = |log: &[String]| log.join("\n");
        if s.kill {
            // Here: reclaim the name (`reclaim_idle`), which the model leaves to stores.
            let name = usize::from(s.name);
            log.push(format!("name {name}: reclaim"));
            let keys = keys(case_no, name);
            let lua = decode(
                script_call(&keys, &["reclaim".to_owned()])
                    .invoke(&mut server.conn)
                    .expect("the script runs"),
                "n",
            )
            .map(|(r, _)| r);
            let rust: Result<Reply> = Ok(Reply::Count(names.reclaim(name)));
            assert_eq!(
                comparable(&lua),
                comparable(&rust),
                "reclaim differs (left: redis.lua); steps:\n{}",
                trail(&log)
            );
            continue;
        }
        let (name, op) = driver.op(s);
        log.push(format!("name {name} owner {}: {op:?}", s.owner));
        let keys = keys(case_no, name);
        let values: Vec<redis::Value> = script_call(&keys, &encode(&op))
            .invoke(&mut server.conn)
            .expect("the script runs");
        let lua = decode(values, "n").map(|(r, _)| r);
        let rust = names.apply(name, op.clone(), &ctx);
        assert_eq!(
            comparable(&lua),
            comparable(&rust),
            "redis.lua (left) and the model (right) answer differently; steps:\n{}",
            trail(&log)
        );
        if let Ok(Reply::Granted(g)) = &lua {
            // Fencing tokens only rise, across reclaims too: a new grant's token is
            // above every earlier one of the name (a re-entry repeats its own).
            let seen = &mut granted[name];
            if !seen.contains(&g.token) {
                assert!(
                    seen.iter().all(|&t| t < g.token),
                    "token {} after {seen:?}; steps:\n{}",
                    g.token,
                    trail(&log)
                );
                seen.push(g.token);
            }
        }
        // The resulting state: holders (an op of its own, the same on both sides),
        // the fencing counter and the fixed kind.
        let lua_h = decode(
            script_call(&keys, &encode(&Op::Holders))
                .invoke(&mut server.conn)
                .unwrap(),
            "n",
        )
        .map(|(r, _)| r);
        let rust_h = names.apply(name, Op::Holders, &ctx);
        assert_eq!(
            comparable(&lua_h),
            comparable(&rust_h),
            "holders differ (left: redis.lua); steps:\n{}",
            trail(&log)
        );
        assert_eq!(
            lua_counter_and_kind(&mut server.conn, &keys),
            names.counter_and_kind(name),
            "counter or kind differ (left: redis.lua); steps:\n{}",
            trail(&log)
        );
        driver.saw(name, usize::from(s.owner), &op, &rust);
    }
}

/// Every reply, and the holders, counter and kind after every step, agree.
#[test]
fn redis_lua_agrees_with_the_model() {
    // One server for all cases (each case uses keys of its own), killed at the end
    // whatever the outcome: a runner rather than `proptest!`, which would need it static.
    let server = std::cell::RefCell::new((Server::start(), 0u64));
    let config = ProptestConfig {
        cases: cases(200),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let result = TestRunner::new(config).run(&case(50), |(kinds, steps)| {
        let (server, n) = &mut *server.borrow_mut();
        *n += 1;
        run_case(server, *n, &kinds, &steps);
        Ok(())
    });
    drop(server);
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Found by the differential test: Redis reads a missing key as `false`, which the
/// release fast path took for a record and failed on ("bad argument to 'match'"), so
/// releasing a name without a record (never used, or reclaimed) was a script error
/// instead of `NotHeld`.
#[test]
fn releasing_a_name_without_a_record_is_not_held() {
    let mut server = Server::start();
    let steps = [RawStep {
        name: 0,
        foreign: false,
        choice: 216, // a Release of a token never granted
        owner: 0,
        a: 0,
        flag: false,
        tick: None,
        kill: false,
    }];
    run_case(&mut server, 0, &[0, 0], &steps);
    let keys = keys(0, 1);
    let values: Vec<redis::Value> = script_call(&keys, &encode(&Op::Release { token: 7 }))
        .invoke(&mut server.conn)
        .expect("the script runs");
    assert!(matches!(
        decode(values, "n"),
        Err(crate::Error::NotHeld { .. })
    ));
}

/// The same `false`: once a reclaim had raised the token floor, any op that leaves
/// nothing to keep on a name without a record (a `check`, a `holders`, a refused
/// release) wrote that name a record of just the floor, a key per name looked at.
#[test]
fn looking_at_a_name_without_a_record_leaves_no_key() {
    let mut server = Server::start();
    let keys = keys(0, 0);
    redis::cmd("SET")
        .arg(&keys[4])
        .arg(5)
        .query::<()>(&mut server.conn)
        .unwrap();
    for op in [
        Op::Check { token: 1 },
        Op::Holders,
        Op::Release { token: 1 },
    ] {
        let _ = decode(
            script_call(&keys, &encode(&op))
                .invoke(&mut server.conn)
                .expect("the script runs"),
            "n",
        );
        let exists: bool = redis::cmd("EXISTS")
            .arg(&keys[0])
            .query(&mut server.conn)
            .unwrap();
        assert!(!exists, "{op:?} left a key for a name without a record");
    }
}
