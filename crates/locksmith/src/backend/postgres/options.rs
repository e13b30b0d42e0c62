//! What a `postgres://` URL asks for: the server, as `tokio-postgres` reads it, plus
//! locksmith's own parameters (`schema`, `timeout`), with the usual `PG*` environment
//! variables filling in what the URL leaves out.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::Config;

use crate::{Error, Result};

/// How long one step may take, unless the URL says otherwise (`?timeout=MS`).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The schema a store lives in, unless the URL says otherwise (`?schema=NAME`).
pub(crate) const DEFAULT_SCHEMA: &str = "locksmith";

/// A parsed `postgres://` URL.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub config: Config,
    /// The schema holding the store's tables (a plain identifier).
    pub schema: String,
    /// How long one step (and opening) may take.
    pub timeout: Duration,
    /// The URL with its password hidden, for messages.
    pub display: String,
}

impl Options {
    /// Parses `url` (`postgres://` or `postgresql://`), reading `PGHOST`, `PGPORT`,
    /// `PGUSER`, `PGPASSWORD` and `PGDATABASE` for what it does not say.
    pub(crate) fn parse(url: &str) -> Result<Options> {
        Options::parse_with_env(url, &|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    pub(crate) fn parse_with_env(
        url: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Options> {
        let display = redact(url);
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut schema = DEFAULT_SCHEMA.to_owned();
        let mut timeout = DEFAULT_TIMEOUT;
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("schema", v)) => schema = v.to_owned(),
                Some(("timeout", v)) => {
                    timeout = match v.parse::<u64>() {
                        Ok(ms @ 1..=3_600_000) => Duration::from_millis(ms),
                        _ => {
                            return Err(Error::invalid(format!(
                                "'timeout={v}' in '{display}': give whole milliseconds \
                                 from 1 to 3600000"
                            )))
                        }
                    }
                }
                _ => passed.push(pair),
            }
        }
        check_schema(&schema, &display)?;
        let server = if passed.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passed.join("&"))
        };
        let mut config = Config::from_str(&server)
            .map_err(|e| Error::invalid(format!("'{display}' is not a PostgreSQL URL: {e}")))?;
        if config.get_hosts().is_empty() {
            let host = env("PGHOST").unwrap_or_else(|| "localhost".to_owned());
            config.host(&host);
        }
        if config.get_ports().is_empty() {
            if let Some(port) = env("PGPORT") {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| Error::invalid(format!("PGPORT='{port}' is not a port number")))?;
                config.port(port);
            }
        }
        if config.get_user().is_none() {
            match env("PGUSER").or_else(|| env("USER")) {
                Some(user) => config.user(&user),
                None => {
                    return Err(Error::invalid(format!(
                        "'{display}' names no user, and neither PGUSER nor USER is set"
                    )))
                }
            };
        }
        if config.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD") {
                config.password(password);
            }
        }
        if config.get_dbname().is_none() {
            if let Some(db) = env("PGDATABASE") {
                config.dbname(&db);
            }
        }
        if config.get_application_name().is_none() {
            config.application_name("locksmith");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        // A server that vanished (a host that died) is noticed by TCP too, not only
        // by a step's timeout.
        config.keepalives_idle(Duration::from_secs(30));
        Ok(Options {
            config,
            schema,
            timeout,
            display,
        })
    }

    /// What tells two servers apart, for sharing one listening connection: where it
    /// is, which database, as whom.
    pub(crate) fn server_identity(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        format!(
            "{hosts:?} {:?} {:?} {:?}",
            self.config.get_ports(),
            self.config.get_dbname(),
            self.config.get_user()
        )
    }
}

/// A schema name the store can quote safely: a plain SQL identifier, as PostgreSQL
/// folds it (lower case), at most 63 bytes.
fn check_schema(schema: &str, url: &str) -> Result<()> {
    let mut chars = schema.chars();
    let plain = matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && schema.len() <= 63;
    if !plain || schema.starts_with("pg_") {
        return Err(Error::invalid(format!(
            "'schema={schema}' in '{url}': a schema is 1 to 63 lower-case letters, digits \
             and underscores, not starting with a digit or pg_"
        )));
    }
    Ok(())
}

/// The URL with any password hidden.
pub(crate) fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..start],
            &authority[..colon],
            &url[start + at..]
        ),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "PGHOST" => Some("db.example".into()),
            "PGPORT" => Some("6543".into()),
            "PGUSER" => Some("envuser".into()),
            "PGPASSWORD" => Some("sekrit".into()),
            "PGDATABASE" => Some("envdb".into()),
            _ => None,
        }
    }

    #[test]
    fn urls_parse_with_the_environment_filling_gaps() {
        let o = Options::parse_with_env(
            "postgres://alice:pw@h:5432/app?schema=locks&timeout=2500&sslmode=disable",
            &env,
        )
        .unwrap();
        assert_eq!(o.schema, "locks");
        assert_eq!(o.timeout, Duration::from_millis(2500));
        assert_eq!(o.config.get_user(), Some("alice"));
        assert_eq!(o.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(o.config.get_dbname(), Some("app"));
        assert_eq!(o.config.get_ports(), &[5432]);
        assert_eq!(
            o.display,
            "postgres://alice:***@h:5432/app?schema=locks&timeout=2500&sslmode=disable"
        );
        let o = Options::parse_with_env("postgresql://", &env).unwrap();
        assert_eq!(o.schema, DEFAULT_SCHEMA);
        assert_eq!(o.config.get_hosts(), &[Host::Tcp("db.example".into())]);
        assert_eq!(o.config.get_ports(), &[6543]);
        assert_eq!(o.config.get_user(), Some("envuser"));
        assert_eq!(o.config.get_password(), Some(&b"sekrit"[..]));
        assert_eq!(o.config.get_dbname(), Some("envdb"));
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "postgres://u@h/db?schema=Has-Caps",
            "postgres://u@h/db?schema=pg_catalog",
            "postgres://u@h/db?schema=",
            "postgres://u@h/db?schema=a\"b",
            "postgres://u@h/db?timeout=0",
            "postgres://u@h/db?timeout=soon",
            "postgres://u@h/db?nonsense=1",
            "postgres://u@h:notaport/db",
        ] {
            assert!(
                matches!(
                    Options::parse_with_env(bad, &env),
                    Err(Error::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }
}
