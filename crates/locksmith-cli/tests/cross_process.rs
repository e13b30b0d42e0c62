//! Several `locksmith` processes on one store (`sqlite:` in a temporary directory).

mod common;

use std::process::Stdio;

use common::{locksmith, primitive, status_json, wait_for_waiters, wait_guarded, Holder, TempDir};

#[test]
fn two_runs_of_one_lock_never_interleave() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let log = dir.path().join("log");
    let log = log.to_str().unwrap();
    let a = Holder::start_around(
        &store,
        &["--lock", "m"],
        &format!("echo 'start a' >> {log};"),
        &format!("echo 'end a' >> {log}"),
    );
    let mut b = locksmith()
        .args(["--store", &store, "run", "--lock", "m", "--", "sh", "-c"])
        .arg(format!("echo 'start b' >> {log}; echo 'end b' >> {log}"))
        .spawn()
        .unwrap();
    wait_for_waiters(&store, "m", 1);
    assert!(a.finish().success());
    assert!(wait_guarded(&mut b).success());
    let text = std::fs::read_to_string(log).unwrap();
    assert_eq!(text, "start a\nend a\nstart b\nend b\n");
}

#[test]
fn timeout_gives_the_conflict_exit_code() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let a = Holder::start(&store, &["--lock", "m"], "");
    let out = locksmith()
        .args([
            "--store",
            &store,
            "run",
            "--lock",
            "m",
            "--timeout",
            "200ms",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("locksmith: timed out") && err.lines().count() == 1,
        "{err}"
    );
    let out = locksmith()
        .args([
            "--store", &store, "run", "--lock", "m", "-w", "0", "-E", "75", "--", "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75));
    assert!(a.finish().success());
    let out = locksmith()
        .args([
            "--store",
            &store,
            "run",
            "--lock",
            "m",
            "--timeout",
            "0",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "free again: {out:?}");
}

#[test]
fn shared_holders_run_together_and_keep_a_writer_out() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let reader = Holder::start(&store, &["--lock", "cfg", "--shared"], "");
    let run = |extra: &[&str]| {
        locksmith()
            .args(["--store", &store, "run", "--lock", "cfg", "--timeout", "0"])
            .args(extra)
            .args(["--", "true"])
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(run(&["--shared"]), Some(0), "a second reader gets in");
    assert_eq!(run(&[]), Some(1), "a writer does not");
    assert!(reader.finish().success());
    assert_eq!(run(&[]), Some(0));
}

#[test]
fn a_semaphore_of_2_admits_at_most_2_of_6() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let log = dir.path().join("log");
    let log = log.to_str().unwrap();
    // The sleep is the work each command does while it holds a permit.
    let script = format!("echo + >> {log}; sleep 0.1; echo - >> {log}");
    let mut children: Vec<_> = (0..6)
        .map(|_| {
            locksmith()
                .args([
                    "--store",
                    &store,
                    "run",
                    "--semaphore",
                    "jobs",
                    "--permits",
                    "2",
                ])
                .args(["--", "sh", "-c", &script])
                .spawn()
                .unwrap()
        })
        .collect();
    for c in &mut children {
        assert!(wait_guarded(c).success());
    }
    let text = std::fs::read_to_string(log).unwrap();
    let (mut inside, mut max) = (0i32, 0i32);
    for l in text.lines() {
        inside += if l == "+" { 1 } else { -1 };
        max = max.max(inside);
    }
    assert_eq!(text.lines().count(), 12);
    assert!((1..=2).contains(&max), "{max} inside at once:\n{text}");
}

#[test]
fn status_json_shows_the_holder() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let a = Holder::start(&store, &["--lock", "deploy", "--tag", "jobs"], "");
    let doc = status_json(&store);
    let p = primitive(&doc, "deploy").expect("deploy is listed");
    let h = &p["holders"][0];
    assert_eq!(h["pid"].as_u64(), Some(u64::from(a.pid())));
    assert!(h["token"].as_u64().unwrap() >= 1);
    assert_eq!(h["process"], "alive");
    assert!(h["lease_until"].is_string(), "run holds with a lease: {h}");
    assert_eq!(h["shared"], false);
    let text = locksmith()
        .args(["--store", &store, "status", "dep*"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("deploy"));
    assert!(a.finish().success());
}

#[test]
fn break_refuses_a_live_holder_and_force_breaks_it() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let a = Holder::start(&store, &["--lock", "m"], "");
    let out = locksmith()
        .args(["--store", &store, "break", "m"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("live") && err.contains("--force"), "{err}");
    let out = locksmith()
        .args(["--store", &store, "break", "m", "--force"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The command succeeded, but its hold was broken under it: exit 3.
    assert_eq!(a.finish().code(), Some(3));
}

#[test]
fn a_killed_holder_is_recovered() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let mut a = Holder::start(&store, &["--lock", "m", "--lease", "1s"], "");
    // SIGKILL the holding process (the pid `status` shows); `run` then kills what is
    // left of the command and exits.
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(i32::try_from(a.pid()).unwrap(), libc::SIGKILL) };
    let _ = a.child.wait();
    let out = locksmith()
        .args(["--store", &store, "break", "m"])
        .output()
        .unwrap();
    assert!(out.status.success(), "a dead holder may be broken: {out:?}");
    let out = locksmith()
        .args([
            "--store",
            &store,
            "run",
            "--lock",
            "m",
            "--timeout",
            "30s",
            "--",
        ])
        .args(["sh", "-c", "echo $LOCKSMITH_PREVIOUS_OWNER_DIED"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "the next holder is told the previous one died"
    );
    drop(a);
}

#[test]
fn demo_with_processes_passes() {
    let dir = TempDir::new();
    let out = locksmith()
        .args([
            "--store",
            &dir.sqlite(),
            "demo",
            "--processes",
            "3",
            "--iterations",
            "30",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("3 processes") && text.contains("every check passed"),
        "{text}"
    );
}

#[test]
fn a_full_semaphore_times_out() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let args = ["--semaphore", "s", "--permits", "2"];
    let (a, b) = (
        Holder::start(&store, &args, ""),
        Holder::start(&store, &args, ""),
    );
    let out = locksmith()
        .args(["--store", &store, "run"])
        .args(args)
        .args(["--timeout", "0", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(a.finish().success());
    let out = locksmith()
        .args(["--store", &store, "run"])
        .args(args)
        .args(["--timeout", "0", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "a permit is free again: {out:?}");
    assert!(b.finish().success());
}

#[test]
fn three_processes_meet_at_a_barrier() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let children: Vec<_> = (0..3)
        .map(|_| {
            locksmith()
                .args([
                    "--store",
                    &store,
                    "barrier",
                    "b",
                    "--parties",
                    "3",
                    "--timeout",
                    "60s",
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut indices: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        })
        .collect();
    indices.sort();
    assert_eq!(indices, ["0", "1", "2"]);
}

#[test]
fn an_event_set_in_one_process_wakes_another() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let mut waiter = locksmith()
        .args([
            "--store",
            &store,
            "event",
            "wait",
            "ready",
            "--timeout",
            "60s",
        ])
        .spawn()
        .unwrap();
    let status = |action: &str| {
        locksmith()
            .args(["--store", &store, "event", action, "ready"])
            .output()
            .unwrap()
    };
    assert!(status("set").status.success());
    assert!(wait_guarded(&mut waiter).success());
    let out = status("status");
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b"set\n"[..])
    );
    assert!(status("clear").status.success());
    assert_eq!(status("status").status.code(), Some(1));
}

#[test]
fn averages_are_shared_between_processes() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let avg = |args: &[&str]| {
        locksmith()
            .args(["--store", &store, "avg"])
            .args(args)
            .output()
            .unwrap()
    };
    assert!(avg(&["add", "lat", "1"]).status.success());
    assert!(avg(&["add", "lat", "3"]).status.success());
    assert_eq!(avg(&["get", "lat"]).stdout, b"2\n");
    assert_eq!(avg(&["pop", "lat"]).stdout, b"2\n");
    assert_eq!(avg(&["get", "lat"]).status.code(), Some(1));
}

#[test]
fn evicting_a_tag_ends_the_hold_of_a_run() {
    let dir = TempDir::new();
    let store = dir.sqlite();
    let a = Holder::start(&store, &["--lock", "m", "--tag", "jobs"], "");
    let out = locksmith()
        .args(["--store", &store, "evict", "--tag", "jobs"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "evicted 1 primitive(s) tagged 'jobs'"
    );
    // The lock is free for others at once; the run finds out when it releases.
    let out = locksmith()
        .args([
            "--store",
            &store,
            "run",
            "--lock",
            "m",
            "--timeout",
            "0",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(a.finish().code(), Some(3));
}
