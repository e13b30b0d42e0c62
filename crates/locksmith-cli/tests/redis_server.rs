//! The `locksmith` binary against servers on `redis://` URLs that misbehave (issue 12):
//! one that accepts connections and never answers, one that is not Redis at all. Each
//! failure is exit 3 with one line saying what happened, well within a hang guard.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Instant;

use assert_cmd::Command;

fn cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_locksmith"));
    c.env_remove("LOCKSMITH_STORE").timeout(common::HANG_GUARD);
    c
}

/// A loopback port where connections are accepted, kept open, and never answered.
fn silent_port() -> u16 {
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

/// The one line on stderr.
fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).into_owned();
    assert_eq!(text.lines().count(), 1, "not one line: {text:?}");
    text
}

#[test]
fn item11_a_silent_redis_server_times_out_with_one_line() {
    let port = silent_port();
    // The URL's step timeout, and the default one (10 s).
    for store in [
        format!("redis://127.0.0.1:{port}/0?timeout=300ms"),
        format!("redis://127.0.0.1:{port}/0"),
    ] {
        let started = Instant::now();
        let out = cmd()
            .args(["--store", &store])
            .args(["run", "--lock", "x", "--timeout", "200ms", "--", "true"])
            .output()
            .unwrap();
        eprintln!("{store}: {:?}", started.elapsed());
        assert_eq!(out.status.code(), Some(3), "{store}");
        let line = one_line(&out.stderr);
        assert!(
            line.contains("timed out waiting for the Redis server"),
            "{store}: {line}"
        );
    }
}

#[test]
fn item13_an_error_from_a_server_that_is_not_redis_is_one_line() {
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
    let out = cmd()
        .args(["--store", &format!("redis://127.0.0.1:{port}/0")])
        .args(["run", "--lock", "x", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    one_line(&out.stderr);
}
