//! What an `etcd://` URL asks for.

use std::time::Duration;

use crate::{Error, Result};

/// The key prefix of a URL without `?prefix=`.
pub(crate) const DEFAULT_PREFIX: &str = "locksmith/";

/// The TTL of a space's etcd lease unless the URL says otherwise (`?ttl=`).
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// How long one step may take, retries on conflict included, unless `?timeout=`.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An `etcd://[user:password@]host:port[,host:port…][?prefix=P&ttl=S&timeout=MS]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Options {
    /// The members to talk to, `host:port` each; the client fails over between them.
    pub endpoints: Vec<String>,
    pub user: Option<(String, String)>,
    /// Every key of the space starts with it: spaces with different prefixes on one
    /// cluster do not see each other.
    pub prefix: String,
    /// The etcd lease that carries this space's holds: whole seconds, at least 2.
    pub ttl: Duration,
    /// How long one step may take.
    pub timeout: Duration,
}

impl Options {
    /// Parses `url`, which starts with `etcd://`.
    pub(crate) fn parse(url: &str) -> Result<Options> {
        let bad = |why: &str| Error::invalid(format!("'{}': {why}", redact(url)));
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| bad("an etcd URL starts with etcd://"))?;
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, q),
            None => (rest, ""),
        };
        let authority = authority.trim_end_matches('/');
        let (user, hosts) = match authority.rsplit_once('@') {
            Some((cred, hosts)) => {
                let (u, p) = cred
                    .split_once(':')
                    .ok_or_else(|| bad("write the credentials as user:password@"))?;
                (Some((decode(u)?, decode(p)?)), hosts)
            }
            None => (None, authority),
        };
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let (h, port) = host
                .rsplit_once(':')
                .ok_or_else(|| bad(&format!("'{host}' needs a port, as in host:2379")))?;
            if h.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad(&format!("'{host}' is not host:port")));
            }
            endpoints.push(host.to_owned());
        }
        let mut opts = Options {
            endpoints,
            user,
            prefix: DEFAULT_PREFIX.to_owned(),
            ttl: DEFAULT_TTL,
            timeout: DEFAULT_TIMEOUT,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v)?;
            let number = |min: u64, max: u64| -> Result<u64> {
                match v.parse::<u64>() {
                    Ok(n) if (min..=max).contains(&n) => Ok(n),
                    _ => Err(bad(&format!(
                        "{k} must be a whole number from {min} to {max}, not '{v}'"
                    ))),
                }
            };
            match k {
                "prefix" if !v.is_empty() && !v.contains('\0') => opts.prefix = v.clone(),
                "prefix" => return Err(bad("the prefix must not be empty nor hold NUL")),
                // etcd counts leases in whole seconds; under 2 s a keep-alive every
                // third of it leaves no room for one slow answer.
                "ttl" => opts.ttl = Duration::from_secs(number(2, 3600)?),
                "timeout" => opts.timeout = Duration::from_millis(number(1, 3_600_000)?),
                _ => {
                    return Err(bad(&format!(
                        "unknown option '{k}': etcd:// takes prefix, ttl (seconds) and \
                         timeout (ms)"
                    )))
                }
            }
        }
        Ok(opts)
    }

    /// What tells two clusters apart, for sharing one watch stream.
    pub(crate) fn identity(&self) -> String {
        format!(
            "{:?} {:?} {}",
            self.endpoints,
            self.user.as_ref().map(|u| &u.0),
            self.prefix
        )
    }
}

/// The URL with any password hidden, for messages and `Debug`.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

fn decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::invalid(format!("bad percent escape in '{s}'")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::invalid(format!("'{s}' is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_are_refused() {
        let o = Options::parse("etcd://a:2379,b:2380?prefix=app%2F&ttl=5&timeout=500").unwrap();
        assert_eq!(o.endpoints, ["a:2379", "b:2380"]);
        assert_eq!(o.prefix, "app/");
        assert_eq!(o.ttl, Duration::from_secs(5));
        assert_eq!(o.timeout, Duration::from_millis(500));
        let o = Options::parse("etcd://u:p%40ss@h:1/").unwrap();
        assert_eq!(o.user, Some(("u".into(), "p@ss".into())));
        assert_eq!(o.prefix, DEFAULT_PREFIX);
        assert_eq!(o.ttl, DEFAULT_TTL);
        for bad in [
            "etcd://",
            "etcd://h",
            "etcd://h:x",
            "etcd://h:1?ttl=1",
            "etcd://h:1?ttl=2.5",
            "etcd://h:1?prefix=",
            "etcd://h:1?nope=1",
            "etcd://u@h:1",
        ] {
            assert!(
                matches!(Options::parse(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
        assert_eq!(redact("etcd://u:pw@h:1"), "etcd://***@h:1");
    }
}
