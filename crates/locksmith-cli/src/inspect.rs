//! `status`, `break` and `evict`: observing and cleaning up a store.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use locksmith::{Holder, Space};
use serde_json::json;

use crate::args::{BreakArgs, EvictArgs, StatusArgs};
use crate::error::{self, Failure, Outcome};

/// Whether a holder's process still lives, as far as this host can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Its process runs (same host, the pid is alive and older than the hold).
    Alive,
    /// Its process is gone (same host; no such pid, a zombie, or a pid reused since).
    Dead,
    /// It runs on another host: only its lease can tell.
    Unknown,
}

impl Liveness {
    fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Unknown => "unknown",
        }
    }
}

/// This host's name, as the library records it for holders.
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// Checks `h`'s process through /proc.
pub fn liveness(h: &Holder) -> Liveness {
    if h.host != this_host() {
        return Liveness::Unknown;
    }
    if h.pid == std::process::id() {
        return Liveness::Alive;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", h.pid)) else {
        return Liveness::Dead;
    };
    // Fields after the command name, which ends at the last ')': state is the first
    // (field 3 of proc(5)), starttime field 22.
    let Some((_, after)) = stat.rsplit_once(')') else {
        return Liveness::Alive;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return Liveness::Dead;
    }
    match (
        fields.get(19).and_then(|s| s.parse::<u64>().ok()),
        boot_time(),
    ) {
        (Some(ticks), Some(boot)) => {
            // SAFETY: sysconf has no memory-safety preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            let hz = u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100);
            let started = boot + Duration::from_millis(ticks * 1000 / hz);
            // A process that started after the hold was taken reused the pid.
            if started > h.since + Duration::from_secs(2) {
                Liveness::Dead
            } else {
                Liveness::Alive
            }
        }
        _ => Liveness::Alive,
    }
}

fn boot_time() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    let secs = line["btime ".len()..].trim().parse::<u64>().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Whether `name` matches `pattern`: `*` any run of characters, `?` any one.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `text` with backslashes, control characters and bidirectional-text overrides
/// escaped (`\\`, `\n`, `\t`, `\r`, `\u{…}`), on one line whatever it holds.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// `locksmith status [PATTERN] [--json]`.
pub fn status(space: &Space, a: StatusArgs) -> Outcome {
    let mut rows = Vec::new();
    for name in space.names()? {
        if a.pattern.as_deref().is_some_and(|p| !glob_match(p, &name)) {
            continue;
        }
        let holders = space.holders(&name)?;
        let waiting = space.waiting(&name)?;
        rows.push((name, holders, waiting));
    }
    if a.json {
        let primitives: Vec<_> = rows
            .iter()
            .map(|(name, holders, waiting)| {
                let holders: Vec<_> = holders
                    .iter()
                    .map(|h| {
                        json!({
                            "owner": h.owner,
                            "host": h.host,
                            "pid": h.pid,
                            "token": h.token,
                            "since": rfc3339(h.since),
                            "since_ms": millis(h.since),
                            "lease_until": h.until.map(rfc3339),
                            "lease_until_ms": h.until.map(millis),
                            "count": h.count,
                            "shared": h.shared,
                            "process": liveness(h).as_str(),
                        })
                    })
                    .collect();
                json!({ "name": name, "holders": holders, "waiting": waiting })
            })
            .collect();
        let mut doc = json!({ "store": space.url(), "primitives": primitives });
        if let Some(u) = space.usage() {
            doc["usage"] = json!({ "names": u.names, "limit": u.limit, "reclaimed": u.reclaimed });
        }
        println!("{doc:#}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("store {}", space.url());
    if let Some(u) = space.usage() {
        println!(
            "names {} of {} ({}% full; idle names are reclaimed when it fills, {} so far)",
            u.names,
            u.limit,
            u.names.saturating_mul(100) / u.limit.max(1),
            u.reclaimed
        );
    }
    if rows.is_empty() {
        println!(
            "(no primitives{})",
            if a.pattern.is_some() { " match" } else { "" }
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Names are anyone's bytes: shown escaped, so that a newline or a terminal control
    // sequence in one cannot break the table or forge a row.
    let rows: Vec<_> = rows
        .into_iter()
        .map(|(n, h, w)| (escape(&n), h, w))
        .collect();
    let width = rows
        .iter()
        .map(|(n, _, _)| n.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("{:width$}  HOLDERS  WAITING", "NAME");
    for (name, holders, waiting) in &rows {
        println!("{name:width$}  {:>7}  {waiting:>7}", holders.len());
        for h in holders {
            let lease = match h.until {
                Some(u) => format!("lease until {}", rfc3339(u)),
                None => "no lease".to_owned(),
            };
            let mut extra = String::new();
            if h.shared {
                extra.push_str(" shared");
            }
            if h.count > 1 {
                extra.push_str(&format!(" x{}", h.count));
            }
            println!(
                "  token {} host {} pid {} ({}) since {} {lease}{extra}",
                h.token,
                escape(&h.host),
                h.pid,
                liveness(h).as_str(),
                rfc3339(h.since),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `locksmith break NAME [--force]`.
pub fn break_(space: &Space, a: BreakArgs) -> Outcome {
    let holders = space.holders(&a.name)?;
    if holders.is_empty() {
        println!("'{}' is not held: nothing to break", a.name);
        return Ok(ExitCode::SUCCESS);
    }
    if !a.force {
        for h in &holders {
            match liveness(h) {
                Liveness::Dead => {}
                Liveness::Alive => {
                    return Err(Failure::new(
                        error::REFUSED,
                        format!(
                            "'{}' is held by a live process (host {} pid {}, token {}): \
                             not breaking it without --force",
                            a.name, h.host, h.pid, h.token
                        ),
                    ))
                }
                Liveness::Unknown => {
                    return Err(Failure::new(
                        error::REFUSED,
                        format!(
                            "'{}' is held on another host ({} pid {}, token {}), which this \
                             host cannot check: not breaking it without --force",
                            a.name, h.host, h.pid, h.token
                        ),
                    ))
                }
            }
        }
    }
    let broken = space.force_release(&a.name)?;
    println!("broke {broken} hold(s) of '{}'", a.name);
    Ok(ExitCode::SUCCESS)
}

/// `locksmith evict --tag TAG`.
pub fn evict(space: &Space, a: EvictArgs) -> Outcome {
    if a.tag.is_empty() {
        return Err(Failure::usage("a tag must not be empty"));
    }
    let n = space.evict_tag(&a.tag)?;
    println!("evicted {n} primitive(s) tagged '{}'", a.tag);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_names_stay_on_one_line() {
        assert_eq!(escape("deploy"), "deploy");
        assert_eq!(escape("a\nb\tc\\d"), "a\\nb\\tc\\\\d");
        assert_eq!(escape("x\u{1b}[31my\u{202e}"), "x\\u{1b}[31my\\u{202e}");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "deploy"));
        assert!(glob_match("dep*", "deploy"));
        assert!(glob_match("*loy", "deploy"));
        assert!(glob_match("d?p*y", "deploy"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(glob_match("deploy", "deploy"));
        assert!(!glob_match("deploy", "deploys"));
        assert!(!glob_match("a*b", "axxc"));
        assert!(!glob_match("?", ""));
        assert!(glob_match("jobs/*", "jobs/ünï"));
    }

    #[test]
    fn liveness_of_this_process_and_a_dead_one() {
        let space = Space::open("mem:").unwrap();
        let guard = space.lock("x").acquire().unwrap();
        let mut h = space.holders("x").unwrap().remove(0);
        assert_eq!(liveness(&h), Liveness::Alive);
        // A pid far above pid_max's default is not alive.
        h.pid = 4_000_000;
        assert_eq!(liveness(&h), Liveness::Dead);
        h.host = "elsewhere.invalid".into();
        assert_eq!(liveness(&h), Liveness::Unknown);
        drop(guard);
    }
}
