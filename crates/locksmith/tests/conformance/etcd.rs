//! The etcd store: a three-node cluster for the suite, and the tests only a
//! replicated store needs (a leader killed, a member paused, a holder killed, two
//! prefixes of one cluster, no key left behind).
//!
//! The suite starts its own three-node cluster (`etcd`, from Debian's etcd-server) on
//! free loopback ports with its data in a temporary directory; without the `etcd`
//! command the etcd tests fail and say so: they never skip.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use locksmith::{Error, Space};

use crate::{threads, unique, Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        (
            "etcd::leader_killed_mid_test_no_false_grant_tokens_rise",
            leader_killed,
        ),
        ("etcd::member_paused_steps_go_on", member_paused),
        (
            "etcd::holder_process_killed_its_hold_lapses_with_its_lease",
            holder_killed,
        ),
        (
            "etcd::two_prefixes_of_one_cluster_do_not_see_each_other",
            two_prefixes,
        ),
        (
            "etcd::idle_primitives_leave_only_their_counter",
            no_key_leak,
        ),
        (
            "etcd::waiter_is_woken_by_the_watch_not_by_poll",
            push_wakeup,
        ),
    ]
}

/// A URL with a fresh key prefix on the suite's cluster.
pub fn fresh_url() -> String {
    suite_cluster().url(&format!("t{}/", unique()))
}

/// Where the clusters of this run keep their data: under `/dev/shm` where there is one
/// (the members fsync every commit, which on a shared test machine's disk is most of a
/// step's time), else the system's temporary directory.
fn data_root() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Removes the data of this run's clusters (the suite's cluster is never dropped; its
/// members die with this process).
pub fn remove_data() {
    let mine = format!("locksmith-etcd-{}-", std::process::id());
    if let Ok(dir) = std::fs::read_dir(data_root()) {
        for entry in dir.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&mine) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn suite_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(Cluster::start) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    listener.local_addr().unwrap().port()
}

/// One member of a test cluster.
struct Member {
    client: u16,
    args: Vec<String>,
    pid: Mutex<Option<u32>>,
}

/// A three-node etcd cluster on loopback, its data in a directory of its own (removed
/// when the cluster is dropped; the members die with this process).
pub struct Cluster {
    members: Vec<Member>,
    dir: std::path::PathBuf,
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        let dir = data_root().join(format!(
            "locksmith-etcd-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
            .collect();
        let token = format!("locksmith-{}", unique());
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let data = dir.join(&name);
            let args: Vec<String> = [
                "--name",
                &name,
                "--data-dir",
                data.to_str().unwrap(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                &token,
                "--initial-cluster-state",
                "new",
                "--log-level",
                "error",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            members.push(Member {
                client: *client,
                args,
                pid: Mutex::new(None),
            });
        }
        let cluster = Cluster { members, dir };
        for i in 0..3 {
            cluster.start_member(i)?;
        }
        // Up once a space opens and a step commits (a leader was elected).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Space::open(&cluster.url("ready/")).and_then(|s| s.event("up").set());
            match ready {
                Ok(()) => return Ok(cluster),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("the test etcd cluster did not come up: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The cluster's URL with `prefix`, every member named.
    pub fn url(&self, prefix: &str) -> String {
        self.url_with(prefix, "")
    }

    fn url_with(&self, prefix: &str, more: &str) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        format!("etcd://{}?prefix={prefix}{more}", hosts.join(","))
    }

    fn start_member(&self, i: usize) -> Result<(), String> {
        let pid = spawn_via_keeper(self.members[i].args.clone())?;
        *self.members[i].pid.lock().unwrap() = Some(pid);
        Ok(())
    }

    fn signal(&self, i: usize, signal: i32) {
        let pid = self.members[i]
            .pid
            .lock()
            .unwrap()
            .expect("a running member");
        // SAFETY: kill(2) with a pid this process started; no memory is touched.
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }

    fn kill(&self, i: usize) {
        self.signal(i, libc::SIGKILL);
        *self.members[i].pid.lock().unwrap() = None;
    }

    /// The index of the member that leads now, asked of the members themselves.
    fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.pid.lock().unwrap().is_none() {
                    continue;
                }
                let status = block(async move {
                    let mut c = etcd_client::Client::connect(
                        [format!("http://127.0.0.1:{}", m.client)],
                        Some(
                            etcd_client::ConnectOptions::new()
                                .with_timeout(Duration::from_secs(2))
                                .with_connect_timeout(Duration::from_secs(2)),
                        ),
                    )
                    .await?;
                    c.status().await
                });
                if let Ok(s) = status {
                    if s.header().map(|h| h.member_id()) == Some(s.leader()) {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no member leads");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every key under `prefix`, as text.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect();
        let prefix = prefix.to_owned();
        let mut keys: Vec<String> = block(async move {
            let mut c = etcd_client::Client::connect(endpoints, None).await?;
            let resp = c
                .get(
                    prefix,
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_keys_only(),
                    ),
                )
                .await?;
            Ok::<_, etcd_client::Error>(
                resp.kvs()
                    .iter()
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                    .collect(),
            )
        })
        .unwrap();
        keys.sort();
        keys
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].pid.lock().unwrap().is_some() {
                self.kill(i);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `fut` to completion on a runtime of its own.
fn block<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(fut)
}

/// Starts `etcd` with `args` from a thread that lives as long as the process, so that
/// the member, told to die with its parent thread, dies with the process; returns its
/// pid.
fn spawn_via_keeper(args: Vec<String>) -> Result<u32, String> {
    type Request = (Vec<String>, mpsc::Sender<Result<u32, String>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            let mut children: Vec<Child> = Vec::new();
            for (args, reply) in rx {
                children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
                let spawned = spawn_member(&args);
                let _ = reply.send(spawned.as_ref().map(Child::id).map_err(Clone::clone));
                if let Ok(child) = spawned {
                    children.push(child);
                }
            }
            loop {
                std::thread::park();
            }
        });
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((args, reply))
        .map_err(|e| e.to_string())?;
    answer.recv().map_err(|e| e.to_string())?
}

fn spawn_member(args: &[String]) -> Result<Child, String> {
    let mut cmd = Command::new("etcd");
    cmd.args(args)
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
            "the etcd tests need the etcd command: install Debian's etcd-server \
             (scripts/test-deps does); starting etcd failed: {e}"
        )
    })
}

/// Holders in turn on a private cluster, each checking that nobody else is inside,
/// while `fault` disturbs the cluster: no two holders at once, every token larger than
/// the last, and the work goes on within its deadlines.
fn through_fault(what: &str, fault: impl FnOnce(&Cluster, &dyn Fn() -> u64)) {
    const THREADS: usize = 3;
    let cluster = Arc::new(Cluster::start().unwrap_or_else(|e| panic!("{e}")));
    let url = cluster.url("fault/");
    let space = Space::open(&url).unwrap();
    let inside = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let faulted = Arc::new(AtomicBool::new(false));
    let after_fault = Arc::new(AtomicU64::new(0));
    let workers = std::thread::spawn({
        let (inside, last, stop, done) = (inside.clone(), last.clone(), stop.clone(), done.clone());
        let (faulted, after_fault) = (faulted.clone(), after_fault.clone());
        let space = space.clone();
        move || {
            threads(THREADS, move |_| {
                let lock = space.lock("x");
                let mut errors = 0;
                while !stop.load(Ordering::SeqCst) {
                    let guard = match lock.acquire_timeout(Duration::from_secs(20)) {
                        Ok(Some(g)) => g,
                        Ok(None) => panic!("no grant within 20 s"),
                        // A typed error while the cluster elects a leader is allowed.
                        Err(Error::Backend(_)) => {
                            errors += 1;
                            continue;
                        }
                        Err(e) => panic!("{e}"),
                    };
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    let token = guard.token();
                    let before = last.swap(token, Ordering::SeqCst);
                    assert!(token > before, "token {token} after {before}");
                    std::thread::sleep(Duration::from_millis(2));
                    inside.store(false, Ordering::SeqCst);
                    match guard.release() {
                        Ok(()) => {}
                        Err(Error::Backend(_)) => errors += 1,
                        Err(e) => panic!("release: {e}"),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    if faulted.load(Ordering::SeqCst) {
                        after_fault.fetch_add(1, Ordering::SeqCst);
                    }
                }
                errors
            })
        }
    });
    crate::eventually("work is under way", || done.load(Ordering::SeqCst) >= 20);
    fault(&cluster, &|| done.load(Ordering::SeqCst));
    faulted.store(true, Ordering::SeqCst);
    crate::eventually(&format!("work goes on after {what}"), || {
        after_fault.load(Ordering::SeqCst) >= 20
    });
    stop.store(true, Ordering::SeqCst);
    let errors: Vec<u32> = workers.join().unwrap();
    eprintln!(
        "{what}: {} holds, {errors:?} typed errors",
        done.load(Ordering::SeqCst)
    );
    let g = space.lock("x").acquire().unwrap();
    assert!(g.token() > last.load(Ordering::SeqCst), "tokens still rise");
}

/// The leader is SIGKILLed while holders and waiters work, and later restarted: nobody
/// is granted a held lock, tokens keep rising, and the waiters recover within their
/// deadlines (the client fails over to the other members).
fn leader_killed(_: &Store) {
    through_fault("the leader was killed and restarted", |cluster, done| {
        let leader = cluster.leader();
        cluster.kill(leader);
        let before = done();
        crate::eventually("work goes on without the old leader", || {
            done() >= before + 20
        });
        // Back from its data directory, it rejoins as a follower.
        cluster.start_member(leader).unwrap();
    });
}

/// A member is SIGSTOPped (the leader: the harder case, its clients' requests hang
/// until they time out, and the others elect a new leader) and later resumed.
fn member_paused(_: &Store) {
    through_fault("the leader was paused", |cluster, done| {
        let leader = cluster.leader();
        cluster.signal(leader, libc::SIGSTOP);
        let before = done();
        crate::eventually("work goes on while the leader is paused", || {
            done() >= before + 20
        });
        cluster.signal(leader, libc::SIGCONT);
    });
}

/// A holder process (posing as another host, so that nobody can prove it dead) is
/// SIGKILLed: its hold lapses with its space's etcd lease (2 s here), and the next
/// holder is told the previous one died.
fn holder_killed(_: &Store) {
    let url = suite_cluster().url_with(&format!("kill{}/", unique()), "&ttl=2");
    let space = Space::open(&url).unwrap();
    let role = ["hold", &url, "held"].join(&crate::processes::SEP.to_string());
    let mut child = Command::new("unshare")
        .args(["--uts", "--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(std::env::current_exe().unwrap())
        .env("LOCKSMITH_CHILD", role)
        .env(
            "LOCKSMITH_CHILD_HOSTNAME",
            format!("elsewhere-{}", unique()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot start a holder process");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let token: u64 = line
        .trim()
        .strip_prefix("held ")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("the holder said {line:?}"));
    let lock = space.lock("held");
    assert!(lock.try_acquire().unwrap().is_none(), "the child holds it");
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let guard = lock
        .acquire_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("the dead holder's hold lapsed with its lease");
    eprintln!(
        "holder killed: the lock was free again after {:?}",
        killed.elapsed()
    );
    assert!(guard.previous_owner_died(), "the next holder is told");
    assert!(guard.token() > token);
}

/// Two spaces of one cluster with different prefixes share nothing.
fn two_prefixes(_: &Store) {
    let cluster = suite_cluster();
    let (a, b) = (format!("a{}/", unique()), format!("b{}/", unique()));
    let (sa, sb) = (
        Space::open(&cluster.url(&a)).unwrap(),
        Space::open(&cluster.url(&b)).unwrap(),
    );
    let ga = sa.lock("same").acquire().unwrap();
    let gb = sb
        .lock("same")
        .try_acquire()
        .unwrap()
        .expect("the other prefix's lock is its own");
    assert_eq!((ga.token(), gb.token()), (1, 1));
    sb.event("only-b").set().unwrap();
    assert_eq!(sa.names().unwrap(), ["same"]);
    assert_eq!(sb.names().unwrap(), ["only-b", "same"]);
    assert_eq!(sa.force_release("same").unwrap(), 1);
    assert_eq!(sb.holders("same").unwrap().len(), 1, "b's hold stands");
    drop(gb);
}

/// A primitive nobody holds, waits for or has set leaves only its record with its
/// counter: the keys of the prefix are counted before and after.
fn no_key_leak(_: &Store) {
    let cluster = suite_cluster();
    let prefix = format!("leak{}/", unique());
    let space = Space::open(&cluster.url(&prefix)).unwrap();
    assert!(cluster.keys(&prefix).is_empty());
    {
        let lock = space.lock("lock");
        let g = lock.acquire().unwrap();
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
        drop((sem.acquire().unwrap(), sem.acquire().unwrap()));
        let event = space.event("event");
        event.set().unwrap();
        event.clear().unwrap();
        let rw = space.rwlock("rw");
        drop((rw.read().unwrap(), rw.read().unwrap()));
        drop(rw.write().unwrap());
        assert_eq!(space.barrier("barrier", 1).wait().unwrap(), 0);
        let cond = space.condition("cond");
        let mut g = cond.acquire().unwrap();
        assert!(!cond
            .wait_timeout(&mut g, Duration::from_millis(10))
            .unwrap());
        drop(g);
    }
    let all = ["barrier", "cond", "event", "lock", "rlock", "rw", "sem"];
    let expected: Vec<String> = all.iter().map(|n| format!("{prefix}r/{n}")).collect();
    assert_eq!(cluster.keys(&prefix), expected, "only the records stay");
    let reclaimed = space.reclaim_idle().unwrap();
    assert_eq!(
        cluster.keys(&prefix),
        [format!("{prefix}floor")],
        "reclaimed: only the floor stays"
    );
    assert_eq!(reclaimed, all.len());
    assert!(
        space.lock("lock").acquire().unwrap().token() > 1,
        "tokens count on"
    );
}

/// A release wakes the waiter through the watch stream, well before the fallback
/// check: ten hand-offs would take ten seconds and more waiting for it.
fn push_wakeup(_: &Store) {
    let space = Space::open(&fresh_url()).unwrap();
    let other = Space::open(&fresh_url()).unwrap();
    drop(other);
    let lock = space.lock("handoff");
    let start = Instant::now();
    for _ in 0..10 {
        let g = lock.acquire().unwrap();
        let waiter = std::thread::spawn({
            let lock = space.lock("handoff");
            move || drop(lock.acquire().unwrap())
        });
        crate::eventually("a waiter is queued", || {
            space.waiting("handoff").unwrap_or(0) == 1
        });
        drop(g);
        waiter.join().unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(7),
        "ten hand-offs took {:?}: the waiters were not woken by the watch",
        start.elapsed()
    );
}
