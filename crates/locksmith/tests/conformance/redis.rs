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
    let pid = spawn_via_keeper(vec!["--port".into(), port.to_string()])?;
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
    cmd.args(args)
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--dir", &std::env::temp_dir().to_string_lossy()])
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
    // A waiter blocked behind the holder when the server goes away.
    let waiter = std::thread::spawn({
        let lock = space.lock("x");
        move || lock.acquire_timeout(Duration::from_secs(120))
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
