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
        ("process::barrier_phases_across_processes", barrier_phases),
    ]
}

const SEP: char = '\u{1f}';

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

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("locksmith-{tag}-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The child side: `role` names what to do; returns the exit code.
pub fn child_main(role: &str) -> i32 {
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
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            spawn(
                &["counter", &url, "counter", file.to_str().unwrap(), &m],
                Stdio::null(),
            )
        })
        .collect();
    for c in children {
        wait_ok(c, "counter");
    }
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
    let children = [
        spawn(&["counter", &url, "counter", path, &m], Stdio::null()),
        spawn(&["async-counter", &url, "counter", path, &m], Stdio::null()),
        spawn(&["async-counter", &url, "counter", path, &m], Stdio::null()),
    ];
    for c in children {
        wait_ok(c, "counter");
    }
    let total: u64 = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    assert_eq!(total, 3 * u64::from(INCREMENTS));
    let _ = std::fs::remove_dir_all(dir);
}

fn semaphore_limit(store: &Store) {
    let url = (store.fresh_url)();
    let dir = temp_dir("semaphore");
    let children: Vec<_> = (0..4)
        .map(|_| {
            spawn(
                &["semaphore", &url, "pool", "2", dir.to_str().unwrap(), "30"],
                Stdio::null(),
            )
        })
        .collect();
    for c in children {
        wait_ok(c, "semaphore holder");
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn sigkill_holder(store: &Store) {
    let url = (store.fresh_url)();
    let mut child = spawn(&["hold", &url, "deploy"], Stdio::piped());
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
    let child = spawn(&["event", &url, "ready"], Stdio::null());
    Space::open(&url).unwrap().event("ready").set().unwrap();
    wait_ok(child, "event waiter");
}

fn barrier_phases(store: &Store) {
    let url = (store.fresh_url)();
    let children: Vec<_> = (0..3)
        .map(|_| spawn(&["barrier", &url, "phase", "3"], Stdio::piped()))
        .collect();
    let mut indices: Vec<u32> = children
        .into_iter()
        .map(|c| wait_ok(c, "barrier party").trim().parse().unwrap())
        .collect();
    indices.sort();
    assert_eq!(indices, [0, 1, 2]);
}
