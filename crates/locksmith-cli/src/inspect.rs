//! `status`, `break` and `evict`: observing and cleaning up a store.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use locksmith::{Liveness, Space};
use serde_json::json;

use crate::args::{BreakArgs, DestroyArgs, EvictArgs, StatusArgs};
use crate::error::{self, Failure, Outcome};

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

/// RFC 3339 for any instant: humantime formats years 1970 to 9999 only (and panics
/// past them); a later instant, which a store may hold (a lease a program took with
/// `Duration::MAX`), is printed as the bound it lies beyond.
fn rfc3339(t: SystemTime) -> String {
    // 9999-12-31T23:59:59.999Z.
    let last = UNIX_EPOCH + std::time::Duration::from_millis(253_402_300_799_999);
    if t > last {
        return "after 9999-12-31T23:59:59.999Z".to_owned();
    }
    humantime::format_rfc3339_millis(t.max(UNIX_EPOCH)).to_string()
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
    let mut damaged = Vec::new();
    for name in space.names()? {
        if a.pattern.as_deref().is_some_and(|p| !glob_match(p, &name)) {
            continue;
        }
        // A damaged record is listed as such; it never hides the others.
        match space
            .holders(&name)
            .and_then(|h| Ok((h, space.waiting(&name)?)))
        {
            Ok((holders, waiting)) => rows.push((name, holders, waiting)),
            Err(locksmith::Error::Damaged { reason, .. }) => damaged.push((name, reason)),
            Err(e) => return Err(e.into()),
        }
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
                            "process": h.process.as_str(),
                        })
                    })
                    .collect();
                json!({ "name": name, "holders": holders, "waiting": waiting })
            })
            .chain(damaged.iter().map(|(name, reason)| {
                json!({ "name": name, "holders": [], "waiting": 0, "damaged": reason })
            }))
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
    if rows.is_empty() && damaged.is_empty() {
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
        .map(|(n, _, _)| n)
        .chain(damaged.iter().map(|(n, _)| n))
        .map(|n| n.chars().count())
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
                h.process.as_str(),
                rfc3339(h.since),
            );
        }
    }
    for (name, reason) in &damaged {
        println!("{name:width$}  damaged: {reason} (`locksmith break {name} --force` resets it)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `locksmith break NAME [--force]`.
pub fn break_(space: &Space, a: BreakArgs) -> Outcome {
    let holders = match space.holders(&a.name) {
        Ok(holders) => holders,
        Err(locksmith::Error::Damaged { reason, .. }) => {
            if !a.force {
                return Err(Failure::new(
                    error::REFUSED,
                    format!(
                        "the record of '{}' is damaged ({reason}): --force resets it, \
                         keeping its fencing counter",
                        a.name
                    ),
                ));
            }
            space.force_release(&a.name)?;
            println!("reset the damaged record of '{}'", a.name);
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    if holders.is_empty() {
        println!("'{}' is not held: nothing to break", a.name);
        return Ok(ExitCode::SUCCESS);
    }
    if !a.force {
        for h in &holders {
            match h.process {
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
                _ => {
                    return Err(Failure::new(
                        error::REFUSED,
                        format!(
                            "'{}' is held by a process this host cannot check ({} pid {}, \
                             token {}: another host or PID namespace, or hidden): not \
                             breaking it without --force",
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
    let Some(tag) = a.tag.filter(|_| !a.idle) else {
        let n = space.reclaim_idle()?;
        println!("forgot {n} idle name(s)");
        return Ok(ExitCode::SUCCESS);
    };
    if tag.is_empty() {
        return Err(Failure::usage("a tag must not be empty"));
    }
    let n = space.evict_tag(&tag)?;
    println!("evicted {n} primitive(s) tagged '{}'", escape(&tag));
    Ok(ExitCode::SUCCESS)
}

/// `locksmith destroy [URL] [--force]`.
pub fn destroy(store: Option<&str>, a: DestroyArgs) -> Outcome {
    let Some(url) = a.url.as_deref().or(store) else {
        return Err(Failure::usage(
            "name the store to remove: locksmith destroy URL (or --store URL)",
        ));
    };
    if Space::destroy(url, a.force)? {
        println!("removed {url}");
    } else {
        println!("no store at {url}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_instant_prints() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let far = UNIX_EPOCH + std::time::Duration::from_millis(u64::MAX);
        assert_eq!(rfc3339(far), "after 9999-12-31T23:59:59.999Z");
    }

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
}
