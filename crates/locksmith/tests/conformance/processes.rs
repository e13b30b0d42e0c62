//! Cross-process tests, with real processes: this binary re-executed in a child role.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use locksmith::Space;

use crate::{unique, Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        ("process::n_processes_times_m_increments", counter),
        (
            "process::sync_and_async_holders_count_exactly",
            mixed_counter,
        ),
        ("process::semaphore_of_k_across_processes", semaphore_limit),
        ("process::sigkilled_holder_is_recovered", sigkill_holder),
        ("process::event_wakes_another_process", event_wakes),
        (
            "process::release_wakes_an_async_waiter_in_another_process",
            async_waiter_woken,
        ),
        ("process::barrier_phases_across_processes", barrier_phases),
    ]
}

pub const SEP: char = '\u{1f}';

/// Starts this test binary in a child role.
fn spawn(role: &[&str], stdout: Stdio) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env("LOCKSMITH_CHILD", role.join(&SEP.to_string()))
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
