//! The Redis store: a server for the suite, and the tests only a server store needs
//! (a restart mid-test, two spaces of one server, no key left behind).
//!
//! The suite starts its own `redis-server` on a free loopback port, unless
//! `LOCKSMITH_REDIS_URL` names one. Without either, the Redis tests fail with a message
//! that says so: they never skip silently.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use locksmith::{Error, Space};

use crate::{threads, unique, Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        (
            "redis::server_restart_gives_typed_errors_never_a_false_grant",
            restart,
        ),
        (
            "redis::two_spaces_of_one_server_exclude_each_other",
            two_spaces,
        ),
        (
            "redis::idle_primitives_leave_only_their_counter",
            no_key_leak,
        ),
        ("redis::waiter_is_woken_by_push_not_by_poll", push_wakeup),
        (
            "redis::same_hostname_other_boot_is_not_reaped",
            same_hostname_other_boot_is_not_reaped,
        ),
        (
            "redis::item9_sigkilled_waiter_on_this_host_is_skipped",
            killed_waiter_here,
        ),
        (
            "redis::item9_sigkilled_waiter_on_another_host_costs_at_most_the_claim_bound",
            killed_waiter_elsewhere,
        ),
        (
            "redis::item10_aof_restart_keeps_the_hold_and_the_waiters",
            aof_restart,
        ),
        (
            "redis::item10_a_step_whose_answer_was_lost_is_sent_again_and_applied_once",
            lost_answer,
        ),
        (
            "redis::item11_a_silent_server_times_out_within_the_deadline",
            silent_server,
        ),
        (
            "redis::item13_a_foreign_server_error_is_one_line",
            foreign_server,
        ),
        (
            "redis::issue19_item5_a_dropped_async_wait_does_not_wait_for_a_paused_server",
            dropped_wait_paused_server,
        ),
    ]
}

/// A URL with a fresh key prefix on the suite's server.
pub fn fresh_url() -> String {
    with_prefix(server_url(), &format!("t{}:", unique()))
}

fn with_prefix(url: &str, prefix: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}prefix={prefix}")
}

/// The suite's server: `LOCKSMITH_REDIS_URL`, or a `redis-server` started once for this
/// process (and killed with it).
fn server_url() -> &'static str {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    let url = URL.get_or_init(|| {
        if let Ok(url) = std::env::var("LOCKSMITH_REDIS_URL") {
            if !url.is_empty() {
                return Ok(url);
            }
        }
        let port = free_port();
        start_server(port)?;
        Ok(format!("redis://127.0.0.1:{port}/0"))
    });
    match url {
        Ok(url) => url,
        Err(e) => panic!("{e}"),
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    listener.local_addr().unwrap().port()
}

/// Starts `redis-server` on `port` from a thread that lives as long as the process, so
/// that the server, told to die with its parent thread, dies with the process; returns
/// once it accepts connections. Returns the server's pid.
fn start_server(port: u16) -> Result<u32, String> {
    start_server_with(port, &[])
}

/// [`start_server`] with more arguments, which override the suite's defaults.
fn start_server_with(port: u16, extra: &[&str]) -> Result<u32, String> {
    let mut args = vec!["--port".to_owned(), port.to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let pid = spawn_via_keeper(args)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err(format!("redis-server on port {port} did not come up"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `redis-server` with `args` (besides the suite's defaults) from the thread
/// that keeps the servers; returns its pid.
fn spawn_via_keeper(args: Vec<String>) -> Result<u32, String> {
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::spawn(move || {
            let mut children: Vec<Child> = Vec::new();
            for (args, reply) in rx {
                children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
                let spawned = spawn_server(&args);
                let _ = reply.send(spawned.as_ref().map(Child::id).map_err(Clone::clone));
                if let Ok(child) = spawned {
                    children.push(child);
                }
            }
            // Keep this thread (the servers' parent) alive for the process's life.
            loop {
                std::thread::park();
            }
        });
        std::sync::Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((args, reply))
        .map_err(|e| e.to_string())?;
    answer.recv().map_err(|e| e.to_string())?
}

/// A server's arguments, and where to say how starting it went.
type SpawnRequest = (Vec<String>, mpsc::Sender<Result<u32, String>>);

fn spawn_server(args: &[String]) -> Result<Child, String> {
    let mut cmd = Command::new("redis-server");
    // The test's own arguments come last: they override these defaults.
    cmd.args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--dir", &std::env::temp_dir().to_string_lossy()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only calls prctl,
    // which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        format!(
            "the Redis tests need a server: set LOCKSMITH_REDIS_URL, or install redis-server \
             (apt-get install redis-server); starting redis-server failed: {e}"
        )
    })
}

fn kill(pid: u32) {
    // SAFETY: kill(2) with a pid this process started; no memory is touched.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// The keys of `prefix` on the server of `url`.
fn keys(url: &str, prefix: &str) -> Vec<String> {
    let server = url.split('?').next().unwrap();
    let mut conn = redis::Client::open(server)
        .unwrap()
        .get_connection()
        .unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)
        .unwrap();
    keys.sort();
    keys
}

fn restart(_: &Store) {
    // A private server: this test kills it.
    let port = free_port();
    let pid = start_server(port).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("redis://127.0.0.1:{port}/0?prefix=restart:");
    let space = Space::open(&url).unwrap();
    let lock = space.lock("x");
    let held = lock.acquire().unwrap();
    assert!(held.token() >= 1);
    // A waiter blocked behind the holder when the server goes away: it keeps trying
    // until its deadline, which passes before the server is back.
    let waiter = std::thread::spawn({
        let lock = space.lock("x");
        move || lock.acquire_timeout(Duration::from_secs(3))
    });
    eventually_waiting(&space, "x");
    kill(pid);
    // While the server is down: typed errors, never a grant.
    let other = std::thread::spawn({
        let space = space.clone();
        move || {
            let lock = space.lock("x");
            (
                lock.try_acquire().map(|g| g.is_some()),
                lock.acquire_timeout(Duration::from_millis(200))
                    .map(|g| g.is_some()),
            )
        }
    })
    .join()
    .unwrap();
    assert!(
        matches!(other.0, Err(Error::Backend(_))),
        "try_acquire with the server down: {:?}",
        other.0
    );
    assert!(
        matches!(other.1, Err(Error::Backend(_))),
        "acquire_timeout with the server down: {:?}",
        other.1
    );
    match waiter.join().unwrap() {
        Err(Error::Backend(_)) => {}
        other => panic!("a waiter whose server went away: {other:?}"),
    }
    assert!(matches!(held.release(), Err(Error::Backend(_))));
    Space::open(&url).expect_err("opening a space of a server that is down fails");
    // Back up (empty: it keeps nothing on disk): the same space works again.
    let pid = start_server(port).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let guard = loop {
        match lock.try_acquire() {
            Ok(Some(g)) => break g,
            Ok(None) => panic!("nobody holds x on the restarted server"),
            Err(Error::Backend(_)) if Instant::now() < deadline => {}
            Err(e) => panic!("the space did not recover: {e}"),
        }
    };
    // Wake-ups work again too (the subscriber reconnected).
    let woken = std::thread::spawn({
        let lock = space.lock("x");
        move || {
            lock.acquire_timeout(Duration::from_secs(60))
                .map(|g| g.is_some())
        }
    });
    eventually_waiting(&space, "x");
    guard.release().unwrap();
    assert!(woken.join().unwrap().unwrap());
    kill(pid);
}

fn eventually_waiting(space: &Space, name: &str) {
    crate::eventually("a waiter is queued", || {
        space.waiting(name).unwrap_or(0) == 1
    });
}

fn two_spaces(_: &Store) {
    const THREADS: usize = 4;
    const INCREMENTS: u64 = 200;
    let url = fresh_url();
    let spaces = [Space::open(&url).unwrap(), Space::open(&url).unwrap()];
    let value = Arc::new(AtomicU64::new(0));
    threads(THREADS, {
        let (spaces, value) = (spaces.clone(), value.clone());
        move |i| {
            let lock = spaces[i % 2].lock("counter");
            for _ in 0..INCREMENTS {
                let _g = lock.acquire().unwrap();
                let v = value.load(Ordering::SeqCst);
                std::thread::yield_now();
                value.store(v + 1, Ordering::SeqCst);
            }
        }
    });
    assert_eq!(value.load(Ordering::SeqCst), THREADS as u64 * INCREMENTS);
    let g = spaces[0].lock("counter").acquire().unwrap();
    assert_eq!(g.token(), THREADS as u64 * INCREMENTS + 1);
    let other = spaces[1].lock("counter");
    let free = std::thread::spawn(move || other.try_acquire().unwrap().is_some());
    assert!(!free.join().unwrap(), "the other space sees the hold");
}

fn no_key_leak(_: &Store) {
    let prefix = format!("leak{}:", unique());
    let url = with_prefix(server_url(), &prefix);
    let space = Space::open(&url).unwrap();
    assert!(keys(&url, &prefix).is_empty());
    {
        let lock = space.lock("lock");
        let g = lock.acquire().unwrap();
        // A waiter that gives up leaves the queue (and its keys) behind it.
        let gave_up = std::thread::spawn({
            let lock = space.lock("lock");
            move || lock.acquire_timeout(Duration::from_millis(50)).unwrap()
        });
        assert!(gave_up.join().unwrap().is_none());
        drop(g);
        let r = space.rlock("rlock");
        let (a, b) = (r.acquire().unwrap(), r.acquire().unwrap());
        drop((a, b));
        let sem = space.bounded_semaphore("sem", 2);
        let permits = (sem.acquire().unwrap(), sem.acquire().unwrap());
        drop(permits);
        let event = space.event("event");
        event.set().unwrap();
        event.clear().unwrap();
        let avg = space.averager("avg");
        avg.add(1.0).unwrap();
        assert_eq!(avg.pop().unwrap(), Some(1.0));
        let rw = space.rwlock("rw");
        let readers = (rw.read().unwrap(), rw.read().unwrap());
        drop(readers);
        drop(rw.write().unwrap());
        assert_eq!(space.barrier("barrier", 1).wait().unwrap(), 0);
        let cond = space.condition("cond");
        let mut g = cond.acquire().unwrap();
        assert!(!cond
            .wait_timeout(&mut g, Duration::from_millis(10))
            .unwrap());
        drop(g);
    }
    let left = keys(&url, &prefix);
    let all = [
        "avg", "barrier", "cond", "event", "lock", "rlock", "rw", "sem",
    ];
    let expected: Vec<String> = all.iter().map(|n| format!("{prefix}{{{n}}}")).collect();
    // The averager too: it has no counter, but its name keeps its kind until removed.
    assert_eq!(left, expected, "only the fencing counters and kinds stay");
    let mut names = space.names().unwrap();
    names.sort();
    assert_eq!(names, all);
    assert!(space.remove("avg").unwrap());
    let left = keys(&url, &prefix);
    assert_eq!(
        left,
        expected[1..],
        "a removed name without a counter leaves nothing"
    );
}

fn push_wakeup(_: &Store) {
    // A release wakes the waiter by message, well before the fallback poll: each of
    // these hand-offs would take about a second if it waited for the poll, so ten
    // take well over seven seconds without push and milliseconds with it.
    let space = Space::open(&fresh_url()).unwrap();
    let lock = space.lock("handoff");
    let start = Instant::now();
    for _ in 0..10 {
        let g = lock.acquire().unwrap();
        let waiter = std::thread::spawn({
            let lock = space.lock("handoff");
            move || drop(lock.acquire().unwrap())
        });
        eventually_waiting(&space, "handoff");
        drop(g);
        waiter.join().unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(7),
        "ten hand-offs took {:?}: the waiters were not woken by push",
        start.elapsed()
    );
}

// TLS ----------------------------------------------------------------------------------

/// The tests only the TLS store needs.
#[cfg(feature = "redis-tls")]
pub fn tls_tests() -> Vec<Test> {
    vec![(
        "tls::a_server_certificate_from_an_unknown_ca_is_refused",
        unknown_ca,
    )]
}

/// A URL with a fresh key prefix on the suite's TLS server: `rediss://localhost`, the
/// server's certificate checked against a CA made for this run, and a client
/// certificate (the server asks for one).
#[cfg(feature = "redis-tls")]
pub fn fresh_tls_url() -> String {
    with_prefix(&tls_server().url, &format!("t{}:", unique()))
}

#[cfg(feature = "redis-tls")]
struct TlsServer {
    /// The URL, with `cacert`, `cert` and `key`.
    url: String,
    /// The same, trusting only the system's CAs.
    without_ca: String,
}

/// The directory of this run's TLS certificates.
#[cfg(feature = "redis-tls")]
fn tls_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("redis-tls-{}", std::process::id()))
}

/// Removes this run's TLS certificates (the server read them when it started).
#[cfg(feature = "redis-tls")]
pub fn remove_tls_files() {
    let _ = std::fs::remove_dir_all(tls_dir());
}

/// The suite's TLS server, started once for this process (and killed with it), with
/// certificates made by the `openssl` command in a directory of its own.
#[cfg(feature = "redis-tls")]
fn tls_server() -> &'static TlsServer {
    static SERVER: OnceLock<Result<TlsServer, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        let dir = tls_dir();
        make_certificates(&dir)?;
        let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let port = free_port();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
        ];
        spawn_via_keeper(args.iter().map(|a| a.to_string()).collect())?;
        let base = format!("rediss://localhost:{port}/0");
        let client = format!("cert={}&key={}", file("client.pem"), file("client.key"));
        let server = TlsServer {
            url: format!("{base}?cacert={}&{client}", file("ca.pem")),
            without_ca: format!("{base}?{client}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Space::open(&server.url) {
                Ok(_) => return Ok(server),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "the TLS redis-server on port {port} did not come up \
                         (redis-server must be built with TLS): {e}"
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    match server {
        Ok(server) => server,
        Err(e) => panic!("{e}"),
    }
}

/// A CA, a server certificate for localhost and 127.0.0.1, and a client certificate,
/// each with its key, in `dir`.
#[cfg(feature = "redis-tls")]
fn make_certificates(dir: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .map_err(|e| e.to_string())?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let openssl = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("the TLS tests need the openssl command: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=locksmith test CA"],
        ]
        .concat()
        .into_iter()
        .chain(["-keyout", "ca.key", "-out", "ca.pem"])
        .collect::<Vec<_>>(),
    )?;
    for (name, cn, ext) in [
        ("server", "localhost", Some("server.ext")),
        ("client", "locksmith test client", None),
    ] {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subject = format!("/CN={cn}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-subj", &subject, "-keyout", &key, "-out", &csr]);
        openssl(&req)?;
        let mut sign = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
        ];
        let serial = if ext.is_some() { "1" } else { "2" };
        sign.extend([serial, "-days", "2", "-out", &pem]);
        if let Some(ext) = ext {
            sign.extend(["-extfile", ext]);
        }
        openssl(&sign)?;
    }
    Ok(())
}

/// The server's certificate really is checked: without the run's CA, a client
/// refuses the server (no space opens), where the same URL with it works.
#[cfg(feature = "redis-tls")]
fn unknown_ca(_: &Store) {
    let server = tls_server();
    match Space::open(&server.without_ca) {
        Err(Error::Backend(_)) => {}
        other => panic!("a server certificate from an unknown CA was accepted: {other:?}"),
    }
    let space = Space::open(&server.url).unwrap();
    assert!(space.lock("x").try_acquire().unwrap().is_some());
}

/// Item 12.2: a holder that shares this host's name but not its boot id is another
/// machine (a cloned VM, containers given one `--hostname`, hosts all called
/// `localhost`), not this one before a reboot: its hold lasts until its lease ends.
/// The holder is this process with its recorded boot id changed in Redis, as another
/// machine of the same name would have written it.
fn same_hostname_other_boot_is_not_reaped(_: &Store) {
    let prefix = format!("t{}:", unique());
    let url = with_prefix(server_url(), &prefix);
    let space = Space::open(&url).unwrap();
    let held = space
        .lock("deploy")
        .lease(Duration::from_secs(600))
        .acquire()
        .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    // The owner is `"o":"HOST/BOOT/…` (Lua's JSON writes `/` as `\/`).
    let owner_start = format!("\"o\":\"{}\\/", host.trim());
    let server = url.split('?').next().unwrap();
    let mut conn = redis::Client::open(server)
        .unwrap()
        .get_connection()
        .unwrap();
    // Nobody waits: the record is the prefix's only key.
    let [key]: [String; 1] = keys(&url, &prefix).try_into().unwrap();
    let record: String = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    let at = record
        .find(&owner_start)
        .expect("the record names this host")
        + owner_start.len();
    let end = at + record[at..].find("\\/").unwrap();
    // Another boot id, the same hostname.
    let other_boot = if &record[at..end] == "1" { "2" } else { "1" };
    let forged = format!("{}{other_boot}{}", &record[..at], &record[end..]);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&forged)
        .arg("KEEPTTL")
        .query(&mut conn)
        .unwrap();
    let other = Space::open(&url).unwrap();
    let holders = other.holders("deploy").unwrap();
    assert_eq!(
        holders[0].process,
        locksmith::Liveness::Unknown,
        "{holders:?}"
    );
    // A bound for the negative only: the old code gave the lock away in ~10 ms.
    let stolen = other
        .lock("deploy")
        .acquire_timeout(Duration::from_secs(2))
        .unwrap();
    assert!(
        stolen.is_none(),
        "a holder with this hostname and another boot id lost its lock"
    );
    held.release().unwrap();
    let guard = other
        .lock("deploy")
        .acquire_timeout(Duration::from_secs(60))
        .unwrap()
        .expect("free once released");
    assert!(!guard.previous_owner_died());
}

// Issue 12: stalls -----------------------------------------------------------------------

/// Starts this test binary as a waiter queued for `name` until it is killed; with
/// `other_host`, in UTS, PID and mount namespaces of its own under another hostname, so
/// that nobody can prove it dead (its owner is on "another host"). Killing the returned
/// child SIGKILLs the waiter (`unshare --kill-child`).
fn queued_waiter(url: &str, name: &str, other_host: bool) -> Child {
    let role = ["queue", url, name].join(&crate::processes::SEP.to_string());
    let exe = std::env::current_exe().unwrap();
    let mut cmd = if other_host {
        let mut cmd = Command::new("unshare");
        cmd.args(["--uts", "--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(&exe)
            .env(
                "LOCKSMITH_CHILD_HOSTNAME",
                format!("elsewhere-{}", unique()),
            );
        cmd
    } else {
        Command::new(&exe)
    };
    cmd.env("LOCKSMITH_CHILD", role)
        .stdin(Stdio::null())
        .spawn()
        .expect("cannot start a waiter process")
}

/// A waiter process queued behind a holder is SIGKILLed, a second waiter queues behind
/// it, and the holder releases: the second waiter gets the lock, with the very next
/// token (nobody held it in between), well within its generous deadline (on 1eb87fd it
/// waited about 30 s, past the deadline).
fn killed_waiter(other_host: bool) {
    let url = fresh_url();
    let space = Space::open(&url).unwrap();
    let lock = space.lock("line");
    let held = lock.acquire().unwrap();
    let mut first = queued_waiter(&url, "line", other_host);
    crate::eventually("the first waiter queued", || {
        space.waiting("line").unwrap_or(0) == 1
    });
    let second = std::thread::spawn({
        let lock = space.lock("line");
        move || {
            let got = lock.acquire_timeout(Duration::from_secs(20));
            (got.map(|g| g.map(|g| g.token())), Instant::now())
        }
    });
    crate::eventually("the second waiter queued", || {
        space.waiting("line").unwrap_or(0) == 2
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let token = held.token();
    let released = Instant::now();
    held.release().unwrap();
    let (got, at) = second.join().unwrap();
    eprintln!(
        "killed waiter ({}): the next waiter got the lock {:?} after the release",
        if other_host {
            "another host"
        } else {
            "this host"
        },
        at.saturating_duration_since(released)
    );
    assert_eq!(
        got.unwrap(),
        Some(token + 1),
        "the waiter behind a killed one gets the lock next"
    );
    if !other_host {
        // Proven dead: its place is gone. (Another host's is only skipped, and goes
        // 30 s later.)
        assert_eq!(
            space.waiting("line").unwrap(),
            0,
            "the killed waiter's place is gone"
        );
    }
}

fn killed_waiter_here(_: &Store) {
    killed_waiter(false);
}

fn killed_waiter_elsewhere(_: &Store) {
    killed_waiter(true);
}

/// A directory of its own under the system's temporary directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "locksmith-{what}-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server with an append-only file synced on every write is SIGKILLed and started
/// again (same port, same directory) while a lock is held and two waiters wait (and a
/// third, between them, dies meanwhile): the holder's release succeeds, the live
/// waiters keep waiting through the outage and get the lock afterwards, in turn (the
/// dead one's restored place skipped within the 60 s hang guard, at most 4 s by
/// design), and nobody is granted it while the holder holds it.
fn aof_restart(_: &Store) {
    let dir = TempDir::new("aof");
    let port = free_port();
    let args = [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        dir.0.to_str().unwrap(),
    ];
    let pid = start_server_with(port, &args).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("redis://127.0.0.1:{port}/0?prefix=aof:");
    let space = Space::open(&url).unwrap();
    let lock = space.lock("x");
    let held = lock.acquire().unwrap();
    let holding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let waiter = |queued: usize| {
        let (lock, holding) = (space.lock("x"), holding.clone());
        let w = std::thread::spawn(move || {
            let g = lock.acquire_timeout(Duration::from_secs(60));
            let early = holding.load(Ordering::SeqCst);
            (g.map(|g| g.map(|g| g.token())), early)
        });
        crate::eventually("the waiter queued", || {
            space.waiting("x").unwrap_or(0) == queued
        });
        w
    };
    // Between the two, a waiter on "another host" that dies while the server is down:
    // its place comes back with the file and must not hold the second one up for long.
    let first = waiter(1);
    let mut doomed = queued_waiter(&url, "x", true);
    crate::eventually("the doomed waiter queued", || {
        space.waiting("x").unwrap_or(0) == 2
    });
    let waiters = [first, waiter(3)];
    kill(pid);
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let pid = start_server_with(port, &args).unwrap_or_else(|e| panic!("{e}"));
    let token = held.token();
    holding.store(false, Ordering::SeqCst);
    held.release()
        .expect("the holder's release after the server came back");
    let mut tokens = Vec::new();
    for w in waiters {
        let (got, early) = w.join().unwrap();
        let got = got.expect("a waiter through the restart");
        assert!(
            !early,
            "a waiter was granted the lock while the holder held it"
        );
        tokens.push(got.expect("a waiter got the lock"));
    }
    tokens.sort();
    assert_eq!(
        tokens,
        [token + 1, token + 2],
        "each waiter in turn, after the holder"
    );
    // (The dead waiter's place is skipped, not yet gone: it goes 30 s later.)
    kill(pid);
}

/// A TCP listener that accepts connections and never answers; it keeps them open.
fn silent_listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for conn in listener.incoming().flatten() {
            open.push(conn);
        }
    });
    port
}

/// A loopback relay to a real server.
struct Relay {
    port: u16,
    /// Set: from then on it passes nothing on, either way, on old connections and new
    /// ones (a server that accepts and never answers).
    silent: Arc<std::sync::atomic::AtomicBool>,
    /// Set: the next answer from the server is dropped and its connection cut (the
    /// step happened, its answer was lost); then it clears itself.
    cut: Arc<std::sync::atomic::AtomicBool>,
}

fn relay_to(upstream: &str) -> Relay {
    use std::io::{Read, Write};
    let upstream = upstream.to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pump = |mut from: std::net::TcpStream,
                mut to: std::net::TcpStream,
                silent: Arc<std::sync::atomic::AtomicBool>,
                cut: Option<Arc<std::sync::atomic::AtomicBool>>| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if cut
                    .as_ref()
                    .is_some_and(|c| c.swap(false, Ordering::SeqCst))
                {
                    let _ = to.shutdown(std::net::Shutdown::Both);
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    return;
                }
                if !silent.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            // Keep the other side open: a silent server does not hang up either.
            let _ = to.shutdown(std::net::Shutdown::Write);
            std::mem::forget(to);
        });
    };
    std::thread::spawn({
        let (silent, cut) = (silent.clone(), cut.clone());
        move || {
            let mut held = Vec::new();
            for client in listener.incoming().flatten() {
                if silent.load(Ordering::SeqCst) {
                    held.push(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let (to_server, to_client) =
                    (server.try_clone().unwrap(), client.try_clone().unwrap());
                pump(client, to_server, silent.clone(), None);
                pump(server, to_client, silent.clone(), Some(cut.clone()));
            }
        }
    });
    Relay { port, silent, cut }
}

/// Runs `f` on a thread; its result, or a panic if it takes longer than the generous
/// `guard` (it hung).
fn within<T: Send + 'static>(guard: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(guard)
        .unwrap_or_else(|_| panic!("no answer within {guard:?}: hung"))
}

fn assert_timed_out(what: &str, e: &Error) {
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Backend(_)) && msg.contains("timed out waiting for the Redis server"),
        "{what}: {msg}"
    );
    assert!(!msg.contains('\n'), "{what}: not one line: {msg:?}");
}

/// The upstream address (`host:port`) of the suite's server.
fn upstream() -> String {
    let rest = server_url().trim_start_matches("redis://");
    let rest = rest.rsplit('@').next().unwrap();
    rest.split('/').next().unwrap().to_owned()
}

/// Steps whose answer is lost on a cut connection (they reached the server) are sent
/// again on a fresh connection, and count once: a semaphore's permit is taken once,
/// given back once, a re-entered RLock's count goes down by one (on 1eb87fd the first
/// acquisition failed with "unexpected end of file").
fn lost_answer(_: &Store) {
    let prefix = format!("lost{}:", unique());
    let relay = relay_to(&upstream());
    let space = Space::open(&format!(
        "redis://127.0.0.1:{}/0?prefix={prefix}",
        relay.port
    ))
    .unwrap();
    let direct = Space::open(&with_prefix(server_url(), &prefix)).unwrap();
    let cut = |what: &str, f: &mut dyn FnMut()| {
        relay.cut.store(true, Ordering::SeqCst);
        f();
        assert!(
            !relay.cut.load(Ordering::SeqCst),
            "{what}: no answer was cut"
        );
    };
    let sem = space.semaphore("s", 3);
    let mut permit = None;
    cut("acquire", &mut || {
        permit = Some(sem.acquire().expect("an acquisition whose answer was lost"))
    });
    assert_eq!(
        direct.holders("s").unwrap().len(),
        1,
        "one permit taken, not two"
    );
    let mut permit = permit;
    cut("release", &mut || {
        permit
            .take()
            .unwrap()
            .release()
            .expect("a release whose answer was lost")
    });
    assert!(
        direct.holders("s").unwrap().is_empty(),
        "the permit is back"
    );
    // Re-entry: one release of two takes the count down by one.
    let rlock = space.rlock("r");
    let outer = rlock.acquire().unwrap();
    let mut inner = Some(rlock.acquire().unwrap());
    cut("inner release", &mut || {
        inner.take().unwrap().release().expect("an inner release")
    });
    let holders = direct.holders("r").unwrap();
    assert_eq!(holders.len(), 1, "the outer hold stays");
    assert_eq!(holders[0].count, 1, "the count went down by one");
    outer.release().unwrap();
    assert!(direct.holders("r").unwrap().is_empty());
}

/// A server that accepts connections but never answers: a waiter with a 200 ms
/// deadline, and an open, each give up with "timed out waiting for the server" (on
/// 1eb87fd each waited 20 s, then said "Resource temporarily unavailable").
fn silent_server(_: &Store) {
    let Relay { port, silent, .. } = relay_to(&upstream());
    let url = format!("redis://127.0.0.1:{port}/0?prefix=silent{}:", unique());
    let space = Space::open(&url).unwrap();
    let lock = space.lock("x");
    drop(lock.acquire().unwrap());
    silent.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let got = within(Duration::from_secs(30), move || {
        lock.acquire_timeout(Duration::from_millis(200))
            .map(|g| g.is_some())
    });
    eprintln!(
        "acquire_timeout(200ms), silent server: {:?}",
        started.elapsed()
    );
    assert_timed_out("acquire_timeout(200ms)", &got.unwrap_err());
    // Opening one: the step timeout of the URL.
    let port = silent_listener();
    let url = format!("redis://127.0.0.1:{port}/0?timeout=500ms");
    let started = Instant::now();
    let opened = within(Duration::from_secs(30), move || Space::open(&url).map(drop));
    eprintln!(
        "open with timeout=500ms, silent server: {:?}",
        started.elapsed()
    );
    assert_timed_out("open", &opened.unwrap_err());
}

/// Something else than Redis on the port (here a web server's answer): the error is
/// one line.
fn foreign_server(_: &Store) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
                  Connection: close\r\n\r\nnot a web request\r\n",
            );
        }
    });
    let url = format!("redis://127.0.0.1:{port}/0?timeout=5s");
    let e = within(Duration::from_secs(30), move || Space::open(&url).map(drop))
        .expect_err("a web server is no Redis server");
    let msg = e.to_string();
    assert!(matches!(e, Error::Backend(_)), "{msg}");
    assert!(
        !msg.contains('\n') && !msg.contains('\r'),
        "not one line: {msg:?}"
    );
}

/// Stops a server (SIGSTOP) until dropped (SIGCONT).
struct Paused(u32);

impl Paused {
    fn new(pid: u32) -> Paused {
        // SAFETY: kill(2) with a pid this process started; no memory is touched.
        unsafe {
            libc::kill(pid as i32, libc::SIGSTOP);
        }
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: as in `Paused::new`.
        unsafe {
            libc::kill(self.0 as i32, libc::SIGCONT);
        }
    }
}

/// Issue 19 item 5: dropping an async wait, on a current-thread runtime, while the
/// server does not answer, returns at once (a blocking leave would take its 1 s cap,
/// and a step on the wire two step timeouts, 10 s here): the leaving is done in the
/// background once the server answers again, and a grant that reached the dropped
/// waiter meanwhile is given back.
fn dropped_wait_paused_server(_: &Store) {
    // A private server: this test stops it.
    let port = free_port();
    let pid = start_server(port).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("redis://127.0.0.1:{port}/0?prefix=paused:&timeout=5s");
    let space = Space::open(&url).unwrap();
    let lock = space.lock("x");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Far below either wait, far above a drop that only hands the leaving on.
    let prompt = Duration::from_millis(700);
    rt.block_on(async {
        // A queued waiter, dropped while the server is stopped.
        let held = lock.acquire_async().await.unwrap();
        let waiter = tokio::spawn({
            let lock = lock.clone();
            async move { lock.acquire_async().await.map(|g| g.token()) }
        });
        while space.waiting_async("x").await.unwrap() == 0 {
            tokio::task::yield_now().await;
        }
        let paused = Paused::new(pid);
        let start = Instant::now();
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        let took = start.elapsed();
        drop(paused);
        assert!(took < prompt, "dropping the queued waiter took {took:?}");
        while space.waiting_async("x").await.unwrap() != 0 {
            tokio::task::yield_now().await;
        }
        drop(held);
        assert!(!lock.is_locked_async().await.unwrap());

        // An acquisition whose step is on the wire, dropped by its timeout: the lock
        // is free, so the server grants it when it answers, and the grant is given
        // back.
        let paused = Paused::new(pid);
        let start = Instant::now();
        let cut = tokio::time::timeout(Duration::from_millis(100), lock.acquire_async()).await;
        let took = start.elapsed();
        drop(paused);
        assert!(cut.is_err(), "the server was stopped");
        assert!(
            took < Duration::from_millis(100) + prompt,
            "the drop took {took:?}"
        );
        loop {
            let holders = space.holders_async("x").await.unwrap();
            if holders.is_empty() && space.waiting_async("x").await.unwrap() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let g = lock.acquire_timeout_async(Duration::from_secs(60)).await;
        assert!(g.unwrap().is_some(), "nobody kept the lock");
    });
    kill(pid);
}
