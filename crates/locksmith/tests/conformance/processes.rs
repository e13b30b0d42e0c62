//! Cross-process tests, with real processes: this binary re-executed in a child role.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use locksmith::{Liveness, Space};

use crate::{unique, Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        ("process::n_processes_times_m_increments", counter),
        (
            "process::a_forked_child_uses_the_space_it_inherited",
            fork_inherited,
        ),
        (
            "process::sync_and_async_holders_count_exactly",
            mixed_counter,
        ),
        ("process::semaphore_of_k_across_processes", semaphore_limit),
        ("process::sigkilled_holder_is_recovered", sigkill_holder),
        (
            "process::sigkilled_plain_holder_is_recovered",
            sigkill_plain_holder,
        ),
        (
            "process::plain_lease_and_queued_holds_stay_exclusive_and_fenced",
            mixed_holds,
        ),
        ("process::event_wakes_another_process", event_wakes),
        (
            "process::release_wakes_an_async_waiter_in_another_process",
            async_waiter_woken,
        ),
        ("process::barrier_phases_across_processes", barrier_phases),
        (
            "process::pid_namespace_holder_is_not_reaped",
            pid_namespace_holder_is_not_reaped,
        ),
        (
            "process::zombie_leader_with_live_threads_is_not_reaped",
            zombie_leader_with_live_threads_is_not_reaped,
        ),
        (
            "process::holder_hidden_by_hidepid_is_not_reaped",
            holder_hidden_by_hidepid_is_not_reaped,
        ),
    ]
}

pub const SEP: char = '\u{1f}';

/// Issue 19 item 14: a child forked after its parent used a store (and while it holds
/// a lock of it) uses the `Space` it inherited, and a fresh one, and the parent's keeps
/// working. The child process is this binary re-executed, so the fork happens in a
/// process whose only other threads are the store's own (idle at the time).
fn fork_inherited(store: &Store) {
    let url = (store.fresh_url)();
    let child = spawn(&["fork-inherit", &url], Stdio::null());
    wait_ok(child, "fork-inherit");
}

/// The child side of [`fork_inherited`]: forks, and answers the grandchild's verdict.
fn fork_inherit(space: &Space, url: &str) -> i32 {
    let timeout = Duration::from_secs(30);
    drop(space.lock("x").acquire().unwrap());
    let held = space.lock("p").acquire().unwrap();
    // SAFETY: this process runs no thread of its own besides the store's helpers,
    // which hold no lock between steps; the grandchild only uses the spaces and
    // leaves with _exit, never returning into this code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let uses = |space: &Space, which: &str| -> Result<(), String> {
            let lock = space.lock("x");
            let guard = lock
                .acquire_timeout(timeout)
                .map_err(|e| format!("{which}: acquire: {e}"))?
                .ok_or(format!("{which}: acquire timed out"))?;
            guard
                .release()
                .map_err(|e| format!("{which}: release: {e}"))?;
            match space.lock("p").try_acquire() {
                Ok(None) => Ok(()),
                other => Err(format!("{which}: the parent's hold: {other:?}")),
            }
        };
        // Both at once: a fresh space opened before the inherited one is used.
        let verdict = Space::open(url)
            .map_err(|e| format!("fresh: open: {e}"))
            .and_then(|fresh| {
                uses(space, "inherited")?;
                uses(&fresh, "fresh")?;
                uses(space, "inherited again")
            });
        let code = match verdict {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("grandchild: {e}");
                3
            }
        };
        // SAFETY: ends the grandchild at once, running no destructor of what it
        // shares with its parent (the parent's guard among them).
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: reaps the child forked above, with a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        eprintln!("child: the forked grandchild failed ({status:#x})");
        return 3;
    }
    // The parent's space is unharmed.
    held.release().unwrap();
    let again = space.lock("x").acquire_timeout(timeout).unwrap();
    assert!(again.is_some(), "the parent's space works after the fork");
    0
}

/// Starts this test binary in a child role.
fn spawn(role: &[&str], stdout: Stdio) -> Child {
    spawn_under(&[], role, stdout)
}

/// Starts this test binary in a child role, through the command `wrapper` (for example
/// `unshare --pid --fork`), which runs it with its arguments appended.
fn spawn_under(wrapper: &[&str], role: &[&str], stdout: Stdio) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(exe);
            cmd
        }
        None => Command::new(exe),
    };
    cmd.env("LOCKSMITH_CHILD", role.join(&SEP.to_string()))
        .stdin(Stdio::piped())
        .stdout(stdout)
        .spawn()
        .expect("cannot start a child process")
}

fn wait_ok(mut child: Child, what: &str) -> String {
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{what}: child failed with {status}");
    out
}

/// The child processes of one test. Any still running when the test ends, a failed
/// assertion included, are killed and reaped, so no child outlives its test (a barrier
/// party whose sibling failed would otherwise wait for ever).
struct Kids(Vec<Child>);

impl Kids {
    fn spawn(n: usize, role: &[&str], stdout: impl Fn() -> Stdio) -> Kids {
        Kids((0..n).map(|_| spawn(role, stdout())).collect())
    }

    fn add(&mut self, role: &[&str], stdout: Stdio) -> &mut Kids {
        self.0.push(spawn(role, stdout));
        self
    }

    /// Waits for each child in turn; each must succeed. Returns what each printed.
    fn wait_all(&mut self, what: &str) -> Vec<String> {
        let mut outs = Vec::new();
        while !self.0.is_empty() {
            outs.push(wait_ok(self.0.remove(0), what));
        }
        outs
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("locksmith-{tag}-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The child side: `role` names what to do; returns the exit code.
pub fn child_main(role: &str) -> i32 {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and changes only this process's
    // own death signal: if the test process dies, so does this child.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // A child posing as another host (in a UTS namespace of its own).
    if let Ok(name) = std::env::var("LOCKSMITH_CHILD_HOSTNAME") {
        // SAFETY: sethostname reads `len` bytes from a live buffer.
        if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
            eprintln!("child: sethostname: {}", std::io::Error::last_os_error());
            return 2;
        }
    }
    let args: Vec<&str> = role.split(SEP).collect();
    let space = match Space::open(args.get(1).copied().unwrap_or("")) {
        Ok(space) => space,
        Err(e) => {
            eprintln!("child: {e}");
            return 2;
        }
    };
    match args.as_slice() {
        ["fork-inherit", url] => fork_inherit(&space, url),
        ["counter", _, name, file, m] => {
            let lock = space.lock(name);
            for _ in 0..m.parse::<u32>().unwrap() {
                let _guard = lock.acquire().unwrap();
                let v: u64 = std::fs::read_to_string(file)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                std::fs::write(file, (v + 1).to_string()).unwrap();
            }
            0
        }
        ["async-counter", _, name, file, m] => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let lock = space.lock(name);
            let m: u32 = m.parse().unwrap();
            rt.block_on(async {
                // Several tasks at once, so async holders also contend among themselves.
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let (lock, file) = (lock.clone(), file.to_string());
                        tokio::spawn(async move {
                            for _ in 0..m / 4 {
                                lock.run(|| async {
                                    let v: u64 = std::fs::read_to_string(&file)
                                        .unwrap()
                                        .trim()
                                        .parse()
                                        .unwrap();
                                    tokio::task::yield_now().await;
                                    std::fs::write(&file, (v + 1).to_string()).unwrap();
                                })
                                .await
                                .unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            0
        }
        ["async-acquire", _, name] => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let lock = space.lock(name);
            // A hang guard only: the holder releases as soon as this waiter is queued.
            let acquired = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(120), lock.acquire_async()).await
            });
            match acquired {
                Ok(Ok(guard)) => {
                    println!("acquired {}", guard.token());
                    0
                }
                Ok(Err(e)) => {
                    eprintln!("child: {e}");
                    5
                }
                Err(_) => 6,
            }
        }
        ["semaphore", _, name, k, dir, m] => {
            let k: usize = k.parse().unwrap();
            let sem = space.semaphore(name, k as u32);
            let mine = Path::new(dir).join(std::process::id().to_string());
            for _ in 0..m.parse::<u32>().unwrap() {
                let _permit = sem.acquire().unwrap();
                std::fs::write(&mine, "").unwrap();
                let inside = std::fs::read_dir(dir).unwrap().count();
                std::fs::remove_file(&mine).unwrap();
                if inside > k {
                    eprintln!("{inside} holders of a semaphore of {k}");
                    return 3;
                }
            }
            0
        }
        ["queue", _, name] => {
            // Waits in the queue until killed.
            let got = space.lock(name).acquire_timeout(Duration::from_secs(600));
            eprintln!("child: a queued waiter was not killed: {got:?}");
            5
        }
        ["hold", _, name] => {
            let guard = space
                .lock(name)
                .lease(Duration::from_secs(600))
                .acquire()
                .unwrap();
            println!("held {}", guard.token());
            // Hold until killed.
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            0
        }
        ["hold-plain", _, name] => {
            // No lease, no tag: the hold a store may take on its fast path.
            let guard = space.lock(name).acquire().unwrap();
            println!("held {}", guard.token());
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            0
        }
        ["mixed", _, name, file, m] => mixed_child(&space, name, file, m.parse().unwrap()),
        ["hold-hidden", _, name] => {
            // Not dumpable: a process without CAP_SYS_PTRACE may not look at this one,
            // so a `/proc` mounted with hidepid hides it even from its own user.
            // SAFETY: PR_SET_DUMPABLE takes a flag and changes only this process.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) };
            let guard = space
                .lock(name)
                .lease(Duration::from_secs(600))
                .acquire()
                .unwrap();
            println!("held {}", guard.token());
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            0
        }
        ["judge", _, name, pid] => {
            // Run where the holder's /proc entry is hidden: say what the holder looks
            // like and whether the lock can be had.
            let visible = std::path::Path::new(&format!("/proc/{pid}")).exists();
            let process = match space.holders(name).unwrap().first() {
                Some(h) => h.process.as_str(),
                None => "none",
            };
            let got = space
                .lock(name)
                .acquire_timeout(Duration::from_secs(2))
                .unwrap()
                .is_some();
            println!("visible={visible} process={process} got={got}");
            0
        }
        ["hold-then-leader-exits", _, name] => {
            let guard = space
                .lock(name)
                .lease(Duration::from_secs(600))
                .acquire()
                .unwrap();
            println!("held {}", guard.token());
            std::mem::forget(guard);
            // The process lives on in this thread until told to die (holding the lock).
            std::thread::spawn(|| {
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                std::process::exit(0);
            });
            // The group leader (this thread) ends alone: it becomes a zombie while the
            // process runs. SYS_exit ends the calling thread only, unwinding nothing.
            // SAFETY: no Rust frame of this thread runs again; the memory it borrowed
            // stays mapped (the process lives), and nothing waits for this thread.
            unsafe { libc::syscall(libc::SYS_exit, 0) };
            unreachable!("SYS_exit returned")
        }
        ["event", _, name] => {
            let set = space
                .event(name)
                .wait_timeout(Duration::from_secs(120))
                .unwrap();
            if set {
                0
            } else {
                4
            }
        }
        ["barrier", _, name, parties] => {
            let index = space
                .barrier(name, parties.parse().unwrap())
                .wait()
                .unwrap();
            println!("{index}");
            0
        }
        _ => {
            eprintln!("child: unknown role {role:?}");
            2
        }
    }
}

fn counter(store: &Store) {
    const PROCESSES: usize = 3;
    const INCREMENTS: u32 = 100;
    let url = (store.fresh_url)();
    let dir = temp_dir("counter");
    let file = dir.join("n");
    std::fs::write(&file, "0").unwrap();
    let m = INCREMENTS.to_string();
    let role = ["counter", &url, "counter", file.to_str().unwrap(), &m];
    Kids::spawn(PROCESSES, &role, Stdio::null).wait_all("counter");
    let total: u64 = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    assert_eq!(total, PROCESSES as u64 * u64::from(INCREMENTS));
    let _ = std::fs::remove_dir_all(dir);
}

fn mixed_counter(store: &Store) {
    const INCREMENTS: u32 = 80;
    let url = (store.fresh_url)();
    let dir = temp_dir("mixed");
    let file = dir.join("n");
    std::fs::write(&file, "0").unwrap();
    let (path, m) = (file.to_str().unwrap(), INCREMENTS.to_string());
    Kids(Vec::new())
        .add(&["counter", &url, "counter", path, &m], Stdio::null())
        .add(&["async-counter", &url, "counter", path, &m], Stdio::null())
        .add(&["async-counter", &url, "counter", path, &m], Stdio::null())
        .wait_all("counter");
    let total: u64 = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    assert_eq!(total, 3 * u64::from(INCREMENTS));
    let _ = std::fs::remove_dir_all(dir);
}

fn semaphore_limit(store: &Store) {
    let url = (store.fresh_url)();
    let dir = temp_dir("semaphore");
    let role = ["semaphore", &url, "pool", "2", dir.to_str().unwrap(), "30"];
    Kids::spawn(4, &role, Stdio::null).wait_all("semaphore holder");
    let _ = std::fs::remove_dir_all(dir);
}

fn sigkill_holder(store: &Store) {
    let url = (store.fresh_url)();
    let mut kids = Kids::spawn(1, &["hold", &url, "deploy"], Stdio::piped);
    let child = &mut kids.0[0];
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let token: u64 = line
        .trim()
        .strip_prefix("held ")
        .expect("the child holds")
        .parse()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let space = Space::open(&url).unwrap();
    let guard = space
        .lock("deploy")
        .acquire_timeout(Duration::from_secs(60))
        .unwrap()
        .expect("the dead holder's lock is recovered");
    assert!(guard.previous_owner_died());
    assert!(guard.token() > token);
}

/// A holder killed while it holds a plain Lock (no lease, no tag: a store's fast path
/// takes such holds, outside its records) is recovered like any other: the next holder
/// is told, and its token is larger.
fn sigkill_plain_holder(store: &Store) {
    let url = (store.fresh_url)();
    let mut kids = Kids::spawn(1, &["hold-plain", &url, "deploy"], Stdio::piped);
    let token = held_token(&mut kids.0[0]);
    let child = &mut kids.0[0];
    child.kill().unwrap();
    child.wait().unwrap();
    let space = Space::open(&url).unwrap();
    // A hang guard only: a store without liveness checks waits for its default lease.
    let guard = space
        .lock("deploy")
        .acquire_timeout(Duration::from_secs(120))
        .unwrap()
        .expect("the dead holder's lock is recovered");
    assert!(guard.previous_owner_died());
    assert!(guard.token() > token, "{} after {token}", guard.token());
}

/// One `mixed` child: `m` critical sections on `name`, taken in turn as a plain
/// blocking hold, a lease hold, a polled try and a plain hold that ends by
/// force-release. Each reads `file` ("count token" of the last section), checks that
/// its own token is larger, and writes both back incremented: a lost update or a token
/// that went back fails the test.
fn mixed_child(space: &Space, name: &str, file: &str, m: u32) -> i32 {
    let lock = space.lock(name);
    let leased = space.lock(name).lease(Duration::from_secs(60));
    for i in 0..m {
        let guard = match i % 4 {
            0 | 3 => lock.acquire().unwrap(),
            1 => leased.acquire().unwrap(),
            _ => loop {
                if let Some(g) = lock.try_acquire().unwrap() {
                    break g;
                }
                std::thread::yield_now();
            },
        };
        let text = std::fs::read_to_string(file).unwrap();
        let (count, last) = text.trim().split_once(' ').unwrap();
        let (count, last): (u64, u64) = (count.parse().unwrap(), last.parse().unwrap());
        if guard.token() <= last {
            eprintln!("child: token {} after {last}", guard.token());
            return 3;
        }
        std::fs::write(file, format!("{} {}", count + 1, guard.token())).unwrap();
        if i % 4 == 3 {
            // Its own hold, so nobody else is inside: the break ends the section.
            assert_eq!(space.force_release(name).unwrap(), 1);
            assert!(matches!(
                guard.release(),
                Err(locksmith::Error::LeaseLost { .. })
            ));
        } else {
            guard.release().unwrap();
        }
    }
    0
}

/// Processes mixing plain holds (a store's fast path), lease holds, polled tries and
/// force-releases, while this process keeps looking at the holders and the queue:
/// every section is exclusive and every token larger than the last.
fn mixed_holds(store: &Store) {
    const PROCESSES: usize = 3;
    const SECTIONS: u32 = 120;
    let url = (store.fresh_url)();
    let dir = temp_dir("mixed-holds");
    let file = dir.join("n");
    std::fs::write(&file, "0 0").unwrap();
    let m = SECTIONS.to_string();
    let role = ["mixed", &url, "counter", file.to_str().unwrap(), &m];
    let mut kids = Kids::spawn(PROCESSES, &role, Stdio::null);
    let space = Space::open(&url).unwrap();
    for _ in 0..300 {
        if kids.0.iter_mut().all(|k| k.try_wait().unwrap().is_some()) {
            break;
        }
        // Each look moves a fast hold into the store's record.
        assert!(space.holders("counter").unwrap().len() <= 1);
        let _ = space.waiting("counter").unwrap();
        let _ = space.lock("counter").is_locked().unwrap();
        std::thread::yield_now();
    }
    kids.wait_all("mixed holder");
    let text = std::fs::read_to_string(&file).unwrap();
    let count: u64 = text.split_once(' ').unwrap().0.parse().unwrap();
    assert_eq!(count, PROCESSES as u64 * u64::from(SECTIONS));
    let _ = std::fs::remove_dir_all(dir);
}

fn event_wakes(store: &Store) {
    let url = (store.fresh_url)();
    let mut kids = Kids::spawn(1, &["event", &url, "ready"], Stdio::null);
    Space::open(&url).unwrap().event("ready").set().unwrap();
    kids.wait_all("event waiter");
}

/// `url` with its store's re-check interval made as long as the store allows, so that
/// a waiter that gets in before the hang guard was woken rather than polling (sqlite:
/// an hour; shm: its cap of 1.6 s, so there it shows the hand-off only).
fn slow_polling(url: &str) -> String {
    let join = if url.contains('?') { '&' } else { '?' };
    if url.starts_with("sqlite:") {
        format!("{url}{join}poll=3600000")
    } else if url.starts_with("shm:") {
        format!("{url}{join}check_ms=60000")
    } else {
        url.to_owned()
    }
}

fn async_waiter_woken(store: &Store) {
    let url = slow_polling(&(store.fresh_url)());
    let space = Space::open(&url).unwrap();
    let held = space.lock("wake").acquire().unwrap();
    let mut kids = Kids::spawn(1, &["async-acquire", &url, "wake"], Stdio::piped);
    crate::eventually("the child queues for the lock", || {
        space.waiting("wake").unwrap() == 1
    });
    let token = held.token();
    held.release().unwrap();
    let out = kids.wait_all("async waiter");
    let got: u64 = out[0]
        .trim()
        .strip_prefix("acquired ")
        .expect("the child acquired")
        .parse()
        .unwrap();
    assert!(got > token);
}

fn barrier_phases(store: &Store) {
    let url = (store.fresh_url)();
    let mut indices: Vec<u32> = Kids::spawn(3, &["barrier", &url, "phase", "3"], Stdio::piped)
        .wait_all("barrier party")
        .iter()
        .map(|out| out.trim().parse().unwrap())
        .collect();
    indices.sort();
    assert_eq!(indices, [0, 1, 2]);
}

/// Reads the child's `held TOKEN` line.
fn held_token(child: &mut Child) -> u64 {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("held ")
        .unwrap_or_else(|| panic!("the child does not hold: {line:?}"))
        .parse()
        .unwrap()
}

/// Tells a `hold` child to go (it reads a line on stdin).
fn let_go(child: &mut Child) {
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
}

/// Item 12.1: a live holder in another PID namespace (a container sharing the store)
/// is never taken for dead, although its pid means nothing (or another process) here.
fn pid_namespace_holder_is_not_reaped(store: &Store) {
    let url = (store.fresh_url)();
    let mut kids = Kids(vec![spawn_under(
        &["unshare", "--pid", "--fork", "--mount-proc"],
        &["hold", &url, "deploy"],
        Stdio::piped(),
    )]);
    let token = held_token(&mut kids.0[0]);
    let space = Space::open(&url).unwrap();
    let holders = space.holders("deploy").unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].process, Liveness::Unknown, "{holders:?}");
    // The holder lives (it waits for its line): nobody else may get the lock. The
    // timeout is a bound for the negative only; the old code gave it away in ~5 ms.
    let lock = space.lock("deploy");
    let stolen = lock.acquire_timeout(Duration::from_secs(2)).unwrap();
    assert!(
        stolen.is_none(),
        "a live holder in another PID namespace lost its lock"
    );
    let_go(&mut kids.0[0]);
    kids.wait_all("holder in a PID namespace");
    let guard = lock
        .acquire_timeout(Duration::from_secs(60))
        .unwrap()
        .expect("the lock is free once its holder released it");
    assert!(!guard.previous_owner_died());
    assert!(guard.token() > token);
}

/// The state letter of `/proc/PID/stat`.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Item 12.3: a process whose main thread exited while its other threads run is alive
/// (its group leader shows as a zombie): `status` says so and no acquirer reaps it; once
/// the process really ends, the lock is recovered.
fn zombie_leader_with_live_threads_is_not_reaped(store: &Store) {
    let url = (store.fresh_url)();
    let mut kids = Kids::spawn(1, &["hold-then-leader-exits", &url, "deploy"], Stdio::piped);
    let token = held_token(&mut kids.0[0]);
    let pid = kids.0[0].id();
    crate::eventually("the holder's group leader is a zombie", || {
        proc_state(pid) == Some('Z')
    });
    let space = Space::open(&url).unwrap();
    let holders = space.holders("deploy").unwrap();
    assert_eq!(holders[0].process, Liveness::Alive, "{holders:?}");
    let lock = space.lock("deploy");
    let stolen = lock.acquire_timeout(Duration::from_secs(2)).unwrap();
    assert!(
        stolen.is_none(),
        "a live process with a zombie leader lost its lock"
    );
    let_go(&mut kids.0[0]);
    kids.wait_all("holder with a zombie leader");
    let guard = lock
        .acquire_timeout(Duration::from_secs(60))
        .unwrap()
        .expect("the dead holder's lock is recovered");
    assert!(guard.previous_owner_died());
    assert!(guard.token() > token);
}

/// Item 12.3: a live holder whose `/proc` entry this process cannot read (`hidepid`) is
/// not provably dead: `status` says `unknown` and no acquirer reaps it.
fn holder_hidden_by_hidepid_is_not_reaped(store: &Store) {
    let url = (store.fresh_url)();
    let mut kids = Kids::spawn(1, &["hold-hidden", &url, "deploy"], Stdio::piped);
    held_token(&mut kids.0[0]);
    let pid = kids.0[0].id().to_string();
    // The judge: in a mount namespace of its own, with a /proc that hides other
    // processes (`hidepid=invisible`, a per-mount option since Linux 5.8; its `gid`,
    // whose members see everything, a group nobody here is in rather than root's), and
    // without CAP_SYS_PTRACE, which would see through it.
    let judge = spawn_under(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t proc -o hidepid=invisible,gid=4242 proc /proc && \
             exec setpriv --inh-caps -sys_ptrace --bounding-set -sys_ptrace \"$0\"",
        ],
        &["judge", &url, "deploy", &pid],
        Stdio::piped(),
    );
    let out = wait_ok(judge, "judge under hidepid");
    assert_eq!(out.trim(), "visible=false process=unknown got=false");
    let_go(&mut kids.0[0]);
    kids.wait_all("hidden holder");
}
