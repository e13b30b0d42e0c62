//! The Redis backend: primitives shared by every process, on any machine, that opens
//! the same `redis://` (or `rediss://`) URL and key prefix.
//!
//! # One step, one round trip
//!
//! Every [`Op`] is one call of one Lua function (`redis.lua`): an `FCALL` of a Redis 7
//! function library (loaded at open, and again if a restarted server forgot it), or,
//! on older servers, an `EVALSHA` of the same code as a script. It is
//! [`model::apply`](super::model) ported op for op, run atomically by the server, on
//! the server's clock (`TIME`). A
//! primitive's record is JSON in the key `{prefix}{name}`; its waiter queue, when it has
//! one, sits beside it in `{prefix}{name}:q`, `:d` and `:i` (a sorted set of tickets in
//! arrival order, a sorted set of when each must look again or lose its place, a hash of
//! their modes and owners), so a step costs O(log n) in the queue's length. (Earlier
//! versions kept when each last tried in `:w`: the new name keeps old and new clients
//! on one prefix from dropping each other's waiters.) The `{name}` hash tag keeps
//! a primitive's keys in one Redis Cluster slot.
//!
//! # Waking
//!
//! A step that wakes someone publishes, from the same script, on the channel named like
//! the primitive's key: `*` for everyone, else the woken tickets. One subscriber
//! connection per server and process (pattern-subscribed to each open prefix before
//! `Space::open` returns, so before any watch) fans messages out to the local
//! watchers. A watcher also re-checks at least every [`POLL`], so a lost message (a
//! subscriber reconnecting) costs latency, never a hang, and queued waiters keep their
//! place ([`WAITER_TTL`]).
//!
//! # Holders that die
//!
//! Redis cannot ask whether a process lives. Every hold therefore has a lease on the
//! server's clock: the caller's, or [`DEFAULT_LEASE`] for holds taken without one,
//! renewed by the space's lease keeper while the holder lives; a SIGKILLed holder's
//! hold lapses with its lease. Holders on this host are also checked directly: a
//! blocked acquire whose holder's process is gone drops that holder at once.
//!
//! # What stays
//!
//! A primitive nobody holds, waits for or has set keeps one key, `{prefix}{name}`, with
//! its fencing counter (`{"t":N}`), so tokens never go back; everything else is deleted
//! the moment the primitive is idle. [`Backend::reclaim_idle`] deletes those keys too,
//! after raising the prefix's floor, `{prefix}token-floor`, to their counters: a name
//! without a key counts on from the floor.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use event_listener::{Event, EventListener, Listener};
use futures_util::StreamExt;
use redis::Value;

use super::model::{Acquire, BarrierView, Holder, Millis, Op, Reply};
use super::options;
use super::{Backend, BoxFuture, Grant, Key, Mode, PermitKind, Watch};
use crate::os::clock::now_millis;
use crate::os::hash::stable_hash;
use crate::owner::Owner;
use crate::{BrokenCause, Error, Result};

/// The lease of a hold taken without one: renewed while the holder lives, it bounds
/// how long a dead holder on another host blocks the others.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// A queued waiter that could be granted must claim the grant within this long of
/// being woken for it, or it is skipped (its process is presumed gone, or too slow):
/// how long a waiter killed on another host can keep the ones behind it waiting, plus
/// one [`POLL`] (the step that passes it is the next waiter's look). A skipped waiter
/// keeps its place should it come back (see `redis.lua`).
pub(crate) const CLAIM_TTL: Millis = 3_000;

/// A queued waiter that has not tried for this long is skipped too, and one skipped
/// for this long more is removed from the queue.
pub(crate) const WAITER_TTL: Millis = 30_000;

/// The longest a watcher near the front of a queue, or a watcher of an event or a
/// barrier, sleeps without re-checking: the fallback for a lost message.
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// How many queued waiters count as near the front.
const FRONT: i64 = 16;

/// How often a waiter further back re-checks: often enough to keep its place (a third
/// of [`WAITER_TTL`]), rarely enough that ten thousand waiters cost little.
const REFRESH: Duration = Duration::from_millis(WAITER_TTL / 3);

/// How long one step may wait for the server's answer, unless the URL says otherwise
/// (`?timeout=`): past it, the step fails with "timed out waiting for the server". It
/// counts from when the step starts, so it must leave room for a busy process: with
/// ten thousand async waiters in one process on a loaded machine, steps took over 5 s.
pub(crate) const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long opening a space may wait, in all, for the server to confirm the wake-up
/// subscription, once it answered a first step: the confirmation comes on the
/// process's one subscriber connection, behind the wake-ups of every waiter of the
/// process (ten thousand async waiters make a queue).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);

/// The shortest time an attempt is given, even when the caller's deadline is closer
/// (or passed): a waiter's last look at its deadline, and the step that records a
/// timed-out wait (a barrier broken by it), get an answer from a loaded server.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// How long a waiter without a deadline keeps retrying while the server cannot be
/// reached (a restart), before it reports the error.
pub(crate) const OUTAGE: Duration = Duration::from_secs(30);

/// Leaving a queue is given at most this long: an entry left behind expires on its own
/// within [`CLAIM_TTL`] once it matters.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Leases longer than this (ten years) are cut to it, so that every time the script
/// computes fits a Lua number exactly.
const MAX_LEASE: Millis = 10 * 365 * 24 * 3600 * 1000;

/// The step function's Lua source (see `redis.lua`).
const SOURCE: &str = include_str!("redis.lua");

/// The name of the function library and of its one function: versioned by a hash of
/// the source, so processes running different versions of locksmith each find theirs.
fn function_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let hash = stable_hash(SOURCE.as_bytes());
        format!("locksmith_{hash:016x}")
    })
}

/// The source as a Redis 7 function library: the definitions run once, at load.
fn library() -> String {
    let name = function_name();
    format!("#!lua name={name}\n{SOURCE}\nredis.register_function('{name}', step)\n")
}

/// The source as an EVAL script, for servers without functions (before Redis 7).
fn script() -> &'static redis::Script {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(&format!("{SOURCE}\nreturn step(KEYS, ARGV)\n")))
}

/// The EVALSHA form of a step, as [`fcall_cmd`] is its FCALL form.
fn script_call(keys: &[String; 5], args: &[String]) -> redis::ScriptInvocation<'static> {
    let mut call = script().prepare_invoke();
    for k in keys {
        call.key(k);
    }
    call.arg(queue_timing());
    for a in args {
        call.arg(a);
    }
    call
}

fn load_library_cmd() -> redis::Cmd {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(library());
    cmd
}

fn fcall_cmd(keys: &[String; 5], args: &[String]) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(function_name())
        .arg(keys.len())
        .arg(keys)
        .arg(queue_timing())
        .arg(args);
    cmd
}

/// The script's ARGV[1]: how long queued waiters have to claim a grant, and to come
/// back.
fn queue_timing() -> String {
    format!("{CLAIM_TTL}:{WAITER_TTL}")
}

/// Whether the server forgot the function (it restarted without persistence).
fn no_function(e: &redis::RedisError) -> bool {
    e.to_string().contains("Function not found")
}

fn backend_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::backend(e)
}

/// `s` on one line: what a server (or something else on its port) answers may hold
/// line breaks and control characters, and every error is one line.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    out.trim_end().to_owned()
}

/// How one attempt at a step failed.
#[derive(Debug)]
enum Fault {
    /// No connection could be made: nothing was sent.
    Unreachable(String),
    /// The connection broke, or the server is still loading its data after a restart:
    /// the step may or may not have happened.
    Broken(String),
    /// No answer within the attempt's time: the step may or may not have happened.
    TimedOut(Duration),
    /// The server (or whatever listens on its port) answered with an error.
    Failed(String),
}

impl Fault {
    fn of(e: &redis::RedisError, budget: Duration) -> Fault {
        if e.is_timeout() {
            Fault::TimedOut(budget)
        } else if e.is_connection_dropped()
            || e.is_io_error()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
        {
            Fault::Broken(e.to_string())
        } else {
            Fault::Failed(e.to_string())
        }
    }

    /// Whether the server may answer if asked again later (it is restarting).
    fn transient(&self) -> bool {
        !matches!(self, Fault::Failed(_))
    }

    fn into_error(self, url: &str) -> Error {
        let msg = match self {
            Fault::Unreachable(m) => format!("cannot reach {url}: {m}"),
            Fault::Broken(msg) => format!("{url}: {msg}"),
            Fault::TimedOut(d) => format!(
                "timed out waiting for the Redis server {url} (no answer within {})",
                millis(d)
            ),
            Fault::Failed(m) => format!("{url}: {m}"),
        };
        backend_err(one_line(&msg))
    }
}

/// A duration to the millisecond, for messages: `5s`, `200ms`.
fn millis(d: Duration) -> String {
    let ms = (d.as_micros() + 500) / 1000;
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// What the caller allows a step: whether sending it twice does no harm (so it may be
/// sent again after a broken connection), its deadline, and whether it belongs to a
/// waiter (which keeps trying, within its deadline, while the server cannot be reached).
#[derive(Clone, Copy)]
struct Allow {
    idempotent: bool,
    deadline: Option<Instant>,
    patient: bool,
    /// The longest one attempt may take, when shorter than the space's timeout.
    cap: Option<Duration>,
}

impl Allow {
    fn once(idempotent: bool) -> Allow {
        Allow {
            idempotent,
            deadline: None,
            patient: false,
            cap: None,
        }
    }

    /// The time one attempt is given: the step timeout, the caller's deadline.
    fn budget(&self, timeout: Duration) -> Duration {
        let t = self.cap.map_or(timeout, |c| c.min(timeout));
        match self.deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                t.min(left.max(MIN_ATTEMPT))
            }
            None => t,
        }
    }
}

/// Whether `op`, sent twice, leaves the state as sending it once does, and answers
/// the same (an acquisition and a release carry a request id, see `redis.lua`).
fn idempotent(op: &Op) -> bool {
    matches!(
        op,
        Op::Acquire(_)
            | Op::Release { .. }
            | Op::Renew { .. }
            | Op::Dequeue { .. }
            | Op::Check { .. }
            | Op::Holders
            | Op::Value { .. }
            | Op::CondCheck { .. }
            | Op::EventSet { .. }
            | Op::EventClear
            | Op::EventRead
            | Op::BarrierAdvance { .. }
            | Op::BarrierAbort { .. }
            | Op::BarrierRead { .. }
            | Op::AvgGet
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// The runtime ------------------------------------------------------------------------

/// The process's Redis runtime: one thread running the async connections and the
/// subscribers, whatever executor (if any) the callers use. A forked child does not
/// inherit the parent's thread, so it starts its own (keyed by pid).
fn runtime() -> Result<tokio::runtime::Handle> {
    static RT: Mutex<Option<(u32, tokio::runtime::Handle)>> = Mutex::new(None);
    let mut rt = lock(&RT);
    let pid = crate::owner::pid();
    if let Some((owner, handle)) = &*rt {
        if *owner == pid {
            return Ok(handle.clone());
        }
    }
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| backend_err(format!("cannot start the redis runtime: {e}")))?;
    let handle = started.handle().clone();
    std::thread::Builder::new()
        .name("locksmith-redis".into())
        .spawn(move || started.block_on(std::future::pending::<()>()))
        .map_err(|e| backend_err(format!("cannot start the redis runtime: {e}")))?;
    *rt = Some((pid, handle.clone()));
    Ok(handle)
}

/// Runs `fut` on the Redis runtime and blocks the calling thread until it is done.
fn block_on<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| backend_err("the redis runtime stopped"))
}

// The URL ------------------------------------------------------------------------------

/// A Redis URL, split into what the `redis` crate reads and what locksmith reads.
#[derive(Debug, Default)]
struct Url {
    /// The URL without locksmith's parameters.
    server: String,
    prefix: String,
    /// `cacert=PATH`: the PEM certificates that a `rediss://` server's certificate must
    /// chain to (besides the system's).
    cacert: Option<String>,
    /// `cert=PATH` and `key=PATH`: a client certificate and its PKCS#8 key, PEM, for
    /// servers that ask for one (Redis does, unless `tls-auth-clients no`).
    cert: Option<String>,
    key: Option<String>,
    /// `timeout=DURATION`: how long one step may wait for the server.
    timeout: Option<Duration>,
}

/// Splits locksmith's parameters (`prefix`, `cacert`, `cert`, `key`, `timeout`) off a
/// Redis URL.
fn split_url(url: &str) -> Result<Url> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let mut prefix = None;
    let mut parsed = Url::default();
    let mut rest = Vec::new();
    for opt in options::parse(query) {
        match opt.key {
            // Without a value, it is not one of ours: the redis crate reads it.
            _ if !opt.pair.contains('=') => rest.push(opt.pair),
            "prefix" => prefix = Some(opt.value()?),
            "cacert" => parsed.cacert = Some(opt.value()?),
            "cert" => parsed.cert = Some(opt.value()?),
            "key" => parsed.key = Some(opt.value()?),
            "timeout" => parsed.timeout = Some(parse_timeout(&opt.value()?)?),
            _ => rest.push(opt.pair),
        }
    }
    let mut out = base.to_owned();
    if !rest.is_empty() {
        out.push('?');
        out.push_str(&rest.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    parsed.server = out;
    parsed.prefix = prefix.unwrap_or_else(|| "locksmith:".to_owned());
    Ok(parsed)
}

impl Url {
    /// What tells two servers apart, for sharing a subscriber: the URL and the
    /// certificates it is reached with.
    fn identity(&self) -> String {
        format!(
            "{} {:?} {:?} {:?}",
            self.server, self.cacert, self.cert, self.key
        )
    }

    fn has_tls_files(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The `redis` crate's client for this URL. `original` is the URL as given, for
    /// messages.
    fn client(&self, original: &str) -> Result<redis::Client> {
        let bad = |e: &dyn fmt::Display| {
            Error::invalid(format!("'{}' is not a Redis URL: {e}", redact(original)))
        };
        if !self.has_tls_files() {
            return redis::Client::open(self.info(original)?).map_err(|e| bad(&e));
        }
        if !self.server.starts_with("rediss:") {
            return Err(bad(&"cacert, cert and key need rediss:// (TLS)"));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(bad(&"cert and key go together"));
        }
        self.tls_client(original)
    }

    /// The server's connection settings. Connecting sends nothing before the first
    /// step (no `CLIENT SETINFO`) unless the URL asks for a password or a database: a
    /// server that never answers then costs one step timeout, not one per setup reply.
    fn info(&self, original: &str) -> Result<redis::ConnectionInfo> {
        use redis::IntoConnectionInfo;
        let info = self.server.as_str().into_connection_info().map_err(|e| {
            Error::invalid(format!("'{}' is not a Redis URL: {e}", redact(original)))
        })?;
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        Ok(info.set_redis_settings(settings))
    }

    #[cfg(feature = "redis-tls")]
    fn tls_client(&self, original: &str) -> Result<redis::Client> {
        let read = |what: &str, path: &Option<String>| -> Result<Option<Vec<u8>>> {
            path.as_ref()
                .map(|p| {
                    std::fs::read(p)
                        .map_err(|e| Error::invalid(format!("cannot read the {what} '{p}': {e}")))
                })
                .transpose()
        };
        let root_cert = read("CA certificate", &self.cacert)?;
        let client_tls = match (
            read("client certificate", &self.cert)?,
            read("client key", &self.key)?,
        ) {
            (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
            _ => None,
        };
        let certs = redis::TlsCertificates {
            client_tls,
            root_cert,
        };
        redis::Client::build_with_tls(self.info(original)?, certs).map_err(|e| {
            Error::invalid(format!(
                "'{}': bad TLS certificates or URL: {e}",
                redact(original)
            ))
        })
    }

    #[cfg(not(feature = "redis-tls"))]
    fn tls_client(&self, original: &str) -> Result<redis::Client> {
        Err(Error::Unsupported(format!(
            "'{}' needs TLS: build locksmith with the redis-tls feature",
            redact(original)
        )))
    }
}

/// A step timeout: a positive number with a unit (`ms`, `s`, `m`), or of seconds.
fn parse_timeout(s: &str) -> Result<Duration> {
    let bad = || {
        Error::invalid(format!(
            "bad timeout '{s}' in the Redis URL: give a positive duration such as 2s or 500ms"
        ))
    };
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(bad()),
    };
    let secs = number.parse::<f64>().map_err(|_| bad())? * scale;
    // At least a millisecond, at most a day: a step that waits longer is a hang.
    if !(0.001..=86_400.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The URL with any password hidden, for messages and `Debug`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Escapes the glob characters of `s` for `PSUBSCRIBE` and `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// The backend ------------------------------------------------------------------------

/// A space on a Redis server: one key prefix of one database.
pub(crate) struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    prefix: String,
    client: redis::Client,
    /// Idle synchronous connections, the blocking steps' path, and the process they
    /// belong to: a forked child must not talk on its parent's sockets (the two would
    /// read each other's replies). Each with the socket timeout it was last given.
    pool: Mutex<(u32, Vec<(redis::Connection, Duration)>)>,
    /// The async steps' connection (multiplexed, reconnecting), made on first use.
    manager: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    hub: Arc<Hub>,
    pattern: String,
    /// Whether the server has functions (Redis 7): FCALL, else EVALSHA.
    functions: bool,
    /// How long one step may wait for the server (`?timeout=`).
    timeout: Duration,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

/// What a [`Key`] resolves to: its Redis keys and its local wake-up slot.
struct Resolved {
    keys: [String; 5],
    slot: Arc<Slot>,
}

impl RedisBackend {
    /// Opens `url` (`redis://[user:password@]host[:port][/db][?prefix=P]`, or
    /// `rediss://…[&cacert=PATH][&cert=PATH&key=PATH]` for TLS): checks that the server
    /// answers and subscribes to the prefix's wake-ups.
    pub(crate) fn open(url: &str) -> Result<RedisBackend> {
        let parsed = split_url(url)?;
        if url.starts_with("rediss:") && !cfg!(feature = "redis-tls") {
            return Err(Error::Unsupported(format!(
                "'{}' needs TLS: build locksmith with the redis-tls feature",
                redact(url)
            )));
        }
        let client = parsed.client(url)?;
        let prefix = parsed.prefix.clone();
        let timeout = parsed.timeout.unwrap_or(DEFAULT_STEP_TIMEOUT);
        // Opening is one step: it waits for the server's first answer as long as one
        // step may. Once the server answered, the subscription's confirmation may wait
        // longer, behind the wake-ups of a busy process (see SUBSCRIBE_WAIT).
        let opened = Instant::now();
        let deadline = opened + timeout;
        let hub = Hub::for_server(&parsed.identity(), &client, timeout)?;
        let pattern = format!("{}*", glob_escape(&prefix));
        let mut inner = Inner {
            url: redact(url),
            prefix,
            client,
            pool: Mutex::new((crate::owner::pid(), Vec::new())),
            manager: tokio::sync::OnceCell::new(),
            hub: hub.clone(),
            pattern: pattern.clone(),
            functions: false,
            timeout,
        };
        // A first connection: a server that is down is an error now, not later.
        let budget = Allow {
            deadline: Some(deadline),
            ..Allow::once(false)
        }
        .budget(timeout);
        let mut conn = inner
            .connect(budget)
            .map_err(|f| f.into_error(&inner.url))?;
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .max(MIN_ATTEMPT)
            .min(timeout);
        conn.set_read_timeout(Some(budget))
            .map_err(|e| Fault::of(&e, budget).into_error(&inner.url))?;
        // LOCKSMITH_REDIS_EVAL=1 forces the EVALSHA path (how older servers are
        // served), so that it can be tested on Redis 7.
        let force_eval = std::env::var_os("LOCKSMITH_REDIS_EVAL").is_some_and(|v| v == "1");
        inner.functions = !force_eval
            && match load_library_cmd().query::<String>(&mut conn) {
                Ok(_) => true,
                // An older server that does not know FUNCTION: scripts, then.
                Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => false,
                Err(e) => return Err(Fault::of(&e, budget).into_error(&inner.url)),
            };
        lock(&inner.pool).1.push((conn, budget));
        let subscribed = block_on({
            let hub = hub.clone();
            let deadline = opened + timeout.max(SUBSCRIBE_WAIT);
            async move { hub.subscribe(pattern, deadline).await }
        });
        let backend = RedisBackend {
            inner: Arc::new(inner),
        };
        subscribed?.map_err(|()| {
            backend_err(one_line(&format!(
                "timed out waiting for the Redis server {} to confirm a subscription \
                 (no answer within {})",
                backend.inner.url,
                millis(timeout.max(SUBSCRIBE_WAIT))
            )))
        })?;
        Ok(backend)
    }

    fn resolve(&self, key: &Key) -> Arc<Resolved> {
        key.cached(|| {
            let base = format!("{}{{{}}}", self.inner.prefix, key.name());
            let slot = self.inner.hub.slot(&base);
            Arc::new(Resolved {
                keys: [
                    base.clone(),
                    format!("{base}:q"),
                    format!("{base}:d"),
                    format!("{base}:i"),
                    // One key for the prefix, not the name: outside the name's
                    // cluster slot (this client talks to one server).
                    format!("{}token-floor", self.inner.prefix),
                ],
                slot,
            })
        })
    }

    /// The primitive names of this prefix's keys.
    fn scan(&self) -> Result<Vec<String>> {
        let pattern = format!("{}{{*}}", glob_escape(&self.inner.prefix));
        let keys: Vec<String> = self.inner.with_conn(Allow::once(true), &|c| {
            let mut keys = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)?;
                keys.extend(batch);
                if next == 0 {
                    return Ok(keys);
                }
                cursor = next;
            }
        })?;
        let mut names: Vec<String> = keys
            .iter()
            .filter_map(|k| {
                k.strip_prefix(self.inner.prefix.as_str())?
                    .strip_prefix('{')?
                    .strip_suffix('}')
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.inner.hub.unsubscribe(&self.inner.pattern);
    }
}

impl Inner {
    /// A new connection, its socket timeouts set to `budget`.
    fn connect(&self, budget: Duration) -> std::result::Result<redis::Connection, Fault> {
        let conn = self
            .client
            .get_connection_with_timeout(budget)
            .map_err(|e| match Fault::of(&e, budget) {
                Fault::TimedOut(d) => Fault::TimedOut(d),
                _ => Fault::Unreachable(e.to_string()),
            })?;
        conn.set_read_timeout(Some(budget))
            .and_then(|()| conn.set_write_timeout(Some(budget)))
            .map_err(|e| Fault::Unreachable(e.to_string()))?;
        Ok(conn)
    }

    /// Runs `f` on a connection, as `allow` allows: a step whose connection broke
    /// (after a restart or failover every pooled one is stale) is sent again once, on a
    /// fresh connection, if sending it twice does no harm; a waiter's step keeps being retried, with
    /// backoff, while the server cannot be reached, until its deadline (or for
    /// [`OUTAGE`]). Anything else is reported: the step may or may not have happened.
    fn with_conn<T>(
        &self,
        allow: Allow,
        f: &dyn Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut retried = false;
        let mut backoff = Duration::from_millis(50);
        let mut give_up = allow.deadline;
        loop {
            let fault = match self.attempt(allow.budget(self.timeout), f) {
                Ok(t) => return Ok(t),
                Err(fault) => fault,
            };
            if allow.idempotent && fault.transient() {
                if matches!(fault, Fault::Broken(_)) && !retried {
                    retried = true;
                    continue;
                }
                if allow.patient {
                    let now = Instant::now();
                    let until = *give_up.get_or_insert(now + OUTAGE);
                    if now < until {
                        std::thread::sleep(backoff.min(until - now));
                        backoff = (backoff * 2).min(POLL);
                        continue;
                    }
                }
            }
            return Err(fault.into_error(&self.url));
        }
    }

    /// One attempt of [`Inner::with_conn`], given `budget`.
    fn attempt<T>(
        &self,
        budget: Duration,
        f: &dyn Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> std::result::Result<T, Fault> {
        let pooled = {
            let mut pool = lock(&self.pool);
            let pid = crate::owner::pid();
            if pool.0 != pid {
                // Closing the child's copies leaves the parent's connections open.
                *pool = (pid, Vec::new());
            }
            pool.1.pop()
        };
        let mut conn = match pooled {
            Some((conn, set)) => {
                if set != budget {
                    conn.set_read_timeout(Some(budget))
                        .and_then(|()| conn.set_write_timeout(Some(budget)))
                        .map_err(|e| Fault::of(&e, budget))?;
                }
                conn
            }
            None => self.connect(budget)?,
        };
        match f(&mut conn) {
            Ok(t) => {
                self.put_back(conn, budget);
                Ok(t)
            }
            Err(e) => {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                    && !e.is_connection_dropped()
                {
                    self.put_back(conn, budget);
                } else {
                    // A connection that timed out may still get the late answer: never
                    // reuse it. One that broke says the others are stale too.
                    lock(&self.pool).1.clear();
                }
                Err(Fault::of(&e, budget))
            }
        }
    }

    fn put_back(&self, conn: redis::Connection, budget: Duration) {
        let mut pool = lock(&self.pool);
        if pool.0 == crate::owner::pid() {
            pool.1.push((conn, budget));
        }
    }

    fn eval(&self, keys: &[String; 5], args: &[String], allow: Allow) -> Result<Vec<Value>> {
        if self.functions {
            let cmd = fcall_cmd(keys, args);
            let value: Value = self.with_conn(allow, &|c| match cmd.query(c) {
                Err(e) if no_function(&e) => {
                    load_library_cmd().query::<String>(c)?;
                    cmd.query(c)
                }
                other => other,
            })?;
            return into_array(value);
        }
        let call = script_call(keys, args);
        let value: Value = self.with_conn(allow, &|c| call.invoke(c))?;
        into_array(value)
    }

    async fn manager(
        &self,
        budget: Duration,
    ) -> std::result::Result<redis::aio::ConnectionManager, Fault> {
        let made = tokio::time::timeout(
            budget,
            self.manager.get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(self.timeout))
                    .set_connection_timeout(Some(self.timeout))
                    .set_number_of_retries(2);
                self.client
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(|e| Fault::Unreachable(e.to_string()))
            }),
        )
        .await;
        match made {
            Ok(Ok(m)) => Ok(m.clone()),
            Ok(Err(f)) => Err(f),
            Err(_) => Err(Fault::TimedOut(budget)),
        }
    }

    /// One attempt of [`Inner::eval_async`], given `budget`.
    async fn attempt_async(
        &self,
        keys: &[String; 5],
        args: &[String],
        budget: Duration,
    ) -> std::result::Result<Value, Fault> {
        let mut conn = self.manager(budget).await?;
        let sent = async {
            if self.functions {
                let cmd = fcall_cmd(keys, args);
                match cmd.query_async(&mut conn).await {
                    Err(e) if no_function(&e) => {
                        load_library_cmd().query_async::<String>(&mut conn).await?;
                        cmd.query_async(&mut conn).await
                    }
                    other => other,
                }
            } else {
                script_call(keys, args).invoke_async(&mut conn).await
            }
        };
        match tokio::time::timeout(budget, sent).await {
            Ok(Ok(value)) => Ok(value),
            // (The manager reconnects on its next use.)
            Ok(Err(e)) => Err(Fault::of(&e, budget)),
            Err(_) => Err(Fault::TimedOut(budget)),
        }
    }

    /// [`Inner::eval`] on the async connection; runs on the Redis runtime. Retries as
    /// [`Inner::with_conn`] does, unless `stop` says the caller went away.
    async fn eval_async(
        &self,
        keys: &[String; 5],
        args: &[String],
        allow: Allow,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<Value>> {
        let mut retried = false;
        let mut backoff = Duration::from_millis(50);
        let mut give_up = allow.deadline;
        loop {
            let fault = match self
                .attempt_async(keys, args, allow.budget(self.timeout))
                .await
            {
                Ok(value) => return into_array(value),
                Err(fault) => fault,
            };
            if allow.idempotent && fault.transient() && !stop() {
                if matches!(fault, Fault::Broken(_)) && !retried {
                    retried = true;
                    continue;
                }
                if allow.patient {
                    let now = Instant::now();
                    let until = *give_up.get_or_insert(now + OUTAGE);
                    if now < until {
                        tokio::time::sleep(backoff.min(until - now)).await;
                        backoff = (backoff * 2).min(POLL);
                        continue;
                    }
                }
            }
            return Err(fault.into_error(&self.url));
        }
    }

    /// [`Inner::eval_async`], from any executor, and safe to cancel: if the caller
    /// goes away while the step is on the wire, or after its answer came but before it
    /// took it, a grant it would have received is given back, a queue place it would
    /// have kept is left and a barrier arrival breaks its generation, by the Redis
    /// runtime (the dropped caller never waits for it).
    async fn eval_detached(
        self: &Arc<Self>,
        resolved: &Arc<Resolved>,
        args: Vec<String>,
        undo: Undo,
        allow: Allow,
    ) -> Result<Vec<Value>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inner = self.clone();
        let keys = resolved.clone();
        runtime()?.spawn(async move {
            let resolved = keys;
            let out = {
                let gone = || tx.is_closed();
                inner.eval_async(&resolved.keys, &args, allow, &gone).await
            };
            if let Err(Ok(values)) = tx.send(out) {
                inner.undo(&resolved, undo, &values).await;
            }
        });
        let mut taker = Taker {
            rx,
            undo: Some((self.clone(), resolved.clone(), undo)),
        };
        let out = (&mut taker.rx).await;
        taker.undo = None;
        out.map_err(|_| backend_err("the redis runtime stopped"))?
    }

    async fn undo(&self, resolved: &Resolved, undo: Undo, values: &[Value]) {
        let args = match (undo, values.first().map(text)) {
            (Undo::Acquire(_), Some(Ok(tag))) if tag == "granted" => match values.get(1) {
                Some(Value::Int(token)) => vec!["rel".to_owned(), token.to_string()],
                _ => return,
            },
            (Undo::Acquire(Some(ticket)), Some(Ok(tag))) if tag == "blocked" => {
                vec!["deq".to_owned(), ticket.to_string()]
            }
            (Undo::Arrive(parties), Some(Ok(tag))) if tag == "arrived" => match values.get(1) {
                Some(Value::Int(generation)) => vec![
                    "abort".to_owned(),
                    parties.to_string(),
                    generation.to_string(),
                    BrokenCause::Aborted.code().to_owned(),
                ],
                _ => return,
            },
            _ => return,
        };
        let never = || false;
        // Patient: it rides out a server that is away for a while.
        let allow = Allow {
            patient: true,
            ..Allow::once(true)
        };
        if let Err(e) = self.eval_async(&resolved.keys, &args, allow, &never).await {
            tracing::warn!(error = %e, "could not undo a cancelled acquisition");
        }
    }
}

/// What to undo if an async step's caller went away mid-flight.
#[derive(Clone, Copy)]
enum Undo {
    Nothing,
    /// An acquisition, with its ticket if it queued.
    Acquire(Option<u64>),
    /// A barrier arrival (of a barrier of this many parties): a party that went away
    /// breaks its generation, as its own wait would once it knew the generation.
    Arrive(u32),
}

/// The receiving end of [`Inner::eval_detached`]. Dropped after the answer arrived but
/// before the caller took it, it undoes that answer; an answer still to come is undone
/// by the step's task, which finds the channel closed. Exactly one of the two does.
struct Taker {
    rx: tokio::sync::oneshot::Receiver<Result<Vec<Value>>>,
    undo: Option<(Arc<Inner>, Arc<Resolved>, Undo)>,
}

impl Drop for Taker {
    fn drop(&mut self) {
        let Some((inner, resolved, undo)) = self.undo.take() else {
            return;
        };
        // Closed first: from here on the step's task cannot send.
        self.rx.close();
        if let Ok(Ok(values)) = self.rx.try_recv() {
            if let Ok(rt) = runtime() {
                rt.spawn(async move { inner.undo(&resolved, undo, &values).await });
            }
        }
    }
}

impl RedisBackend {
    /// A step, as `allow` allows. Owners the reply names whose processes are gone (on
    /// this host) are reaped first, and the step is taken again.
    fn step_with(&self, key: &Key, op: Op, allow: Allow) -> Result<Reply> {
        let resolved = self.resolve(key);
        let args = encode(&op);
        let (reply, dead) = decode(self.inner.eval(&resolved.keys, &args, allow)?, key.name())?;
        if dead.is_empty() {
            return Ok(reply);
        }
        self.inner
            .eval(&resolved.keys, &reap_args(dead), Allow::once(true))?;
        Ok(decode(self.inner.eval(&resolved.keys, &args, allow)?, key.name())?.0)
    }

    fn step_with_async<'a>(
        &'a self,
        key: &'a Key,
        op: Op,
        allow: Allow,
    ) -> BoxFuture<'a, Result<Reply>> {
        let resolved = self.resolve(key);
        let inner = self.inner.clone();
        Box::pin(async move {
            let undo = match &op {
                Op::Acquire(a) => Undo::Acquire(a.ticket),
                Op::BarrierArrive { parties, .. } => Undo::Arrive(*parties),
                _ => Undo::Nothing,
            };
            let args = encode(&op);
            let values = inner
                .eval_detached(&resolved, args.clone(), undo, allow)
                .await?;
            let (reply, dead) = decode(values, key.name())?;
            if dead.is_empty() {
                return Ok(reply);
            }
            inner
                .eval_detached(&resolved, reap_args(dead), Undo::Nothing, Allow::once(true))
                .await?;
            let values = inner.eval_detached(&resolved, args, undo, allow).await?;
            Ok(decode(values, key.name())?.0)
        })
    }
}

/// What a step that no waiter takes is allowed.
fn allow_once(op: &Op) -> Allow {
    Allow {
        cap: matches!(op, Op::Dequeue { .. }).then_some(LEAVE_TIMEOUT),
        ..Allow::once(idempotent(op))
    }
}

/// What a waiter's step is allowed: its deadline, and patience while the server is
/// away.
fn allow_waiting(op: &Op, deadline: Option<Instant>) -> Allow {
    Allow {
        deadline,
        patient: true,
        ..allow_once(op)
    }
}

impl Backend for RedisBackend {
    fn step(&self, key: &Key, op: Op) -> Result<Reply> {
        let allow = allow_once(&op);
        self.step_with(key, op, allow)
    }

    fn step_async<'a>(&'a self, key: &'a Key, op: Op) -> BoxFuture<'a, Result<Reply>> {
        let allow = allow_once(&op);
        self.step_with_async(key, op, allow)
    }

    fn wait_step(&self, key: &Key, op: Op, deadline: Option<Instant>) -> Result<Reply> {
        let allow = allow_waiting(&op, deadline);
        self.step_with(key, op, allow)
    }

    fn wait_step_async<'a>(
        &'a self,
        key: &'a Key,
        op: Op,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Reply>> {
        let allow = allow_waiting(&op, deadline);
        self.step_with_async(key, op, allow)
    }

    fn watch(&self, key: &Key, ticket: Option<u64>) -> Result<Box<dyn Watch>> {
        let resolved = self.resolve(key);
        let slot = &resolved.slot;
        let (listener, ticket_event) = match ticket {
            Some(ticket) => {
                let event = slot.ticket(ticket);
                (event.listen(), Some(event))
            }
            None => (slot.changed.listen(), None),
        };
        Ok(Box::new(RedisWatch {
            listener,
            ticket: ticket_event,
            _slot: resolved.slot.clone(),
        }))
    }

    fn names(&self) -> Result<Vec<String>> {
        self.scan()
    }

    fn evict_tag(&self, tag: &str) -> Result<usize> {
        let mut evicted = 0;
        for name in self.scan()? {
            let key = Key::new(&name);
            let resolved = self.resolve(&key);
            let args = vec!["evict".to_owned(), tag.to_owned()];
            let values = self.inner.eval(&resolved.keys, &args, Allow::once(true))?;
            if let (Reply::Count(n), _) = decode(values, &name)? {
                evicted += n as usize;
            }
        }
        Ok(evicted)
    }

    fn reclaim_idle(&self) -> Result<usize> {
        let mut reclaimed = 0;
        for name in self.scan()? {
            let key = Key::new(&name);
            let resolved = self.resolve(&key);
            let args = vec!["reclaim".to_owned()];
            if let (Reply::Count(n), _) = decode(
                self.inner.eval(&resolved.keys, &args, Allow::once(true))?,
                &name,
            )? {
                reclaimed += n as usize;
            }
        }
        Ok(reclaimed)
    }

    fn default_lease(&self) -> Option<Duration> {
        Some(DEFAULT_LEASE)
    }

    fn destroy(&self) -> Result<Vec<std::path::PathBuf>> {
        let prefix = self.inner.prefix.as_str();
        // The names' keys (`{P}{name}` and its `:q`, `:d`, `:i`), then the floor.
        let pattern = format!("{}{{*}}*", glob_escape(prefix));
        let floor = format!("{prefix}token-floor");
        self.inner.with_conn(Allow::once(true), &|c| {
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)?;
                if !batch.is_empty() {
                    redis::cmd("DEL").arg(&batch).query::<()>(c)?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            redis::cmd("DEL").arg(&floor).query::<()>(c)
        })?;
        Ok(Vec::new())
    }
}

// Encoding ops and decoding replies ------------------------------------------------------

/// An owner as the script stores it: an opaque string, since a Lua number cannot hold
/// a u64: `host/boot/pid/start/thread/machine/pidns`. The host comes first and is split
/// off last, so it may contain anything. The script never looks inside: only the
/// clients judge owners ([`Owner::is_dead`]).
fn owner_str(o: &Owner) -> String {
    format!(
        "{}/{:x}/{}/{}/{:x}/{:x}/{:x}",
        o.host, o.boot, o.pid, o.start, o.thread, o.machine, o.pidns
    )
}

/// Parses [`owner_str`]'s form, or an older build's `host/boot/pid/start/thread` (which
/// has no machine id or namespace: its owner is never judged dead). An older build
/// reads the new form's host as `host/boot/pid` and so never judges it either.
fn parse_owner(s: &str) -> Option<Owner> {
    let fields: Vec<&str> = s.rsplitn(7, '/').collect();
    let hex = |x: &str| u64::from_str_radix(x, 16).ok();
    let (machine, pidns, rest) = match fields.as_slice() {
        [pidns, machine, thread, start, pid, boot, host]
            if hex(pidns).is_some() && hex(machine).is_some() =>
        {
            (
                hex(machine)?,
                hex(pidns)?,
                [*thread, *start, *pid, *boot, *host],
            )
        }
        _ => {
            let old: Vec<&str> = s.rsplitn(5, '/').collect();
            match old.as_slice() {
                [thread, start, pid, boot, host] => (0, 0, [*thread, *start, *pid, *boot, *host]),
                _ => return None,
            }
        }
    };
    let [thread, start, pid, boot, host] = rest;
    Some(Owner {
        host: host.into(),
        boot: hex(boot)?,
        machine,
        pidns,
        pid: pid.parse().ok()?,
        start: start.parse().ok()?,
        thread: hex(thread)?,
    })
}

fn kind_args(kind: PermitKind) -> [String; 2] {
    let (k, n) = match kind {
        PermitKind::Lock => ("lock", 0),
        PermitKind::RLock => ("rlock", 0),
        PermitKind::Semaphore { initial } => ("sem", initial),
        PermitKind::BoundedSemaphore { max } => ("bsem", max),
        PermitKind::RwLock => ("rw", 0),
        PermitKind::Condition => ("cond", 0),
    };
    [k.to_owned(), n.to_string()]
}

fn mode_arg(mode: Mode) -> String {
    match mode {
        Mode::Exclusive => "x".into(),
        Mode::Shared => "s".into(),
    }
}

/// An optional string: `-` for none, `+value` for some.
fn opt_arg<T: fmt::Display>(x: &Option<T>) -> String {
    match x {
        Some(x) => format!("+{x}"),
        None => "-".into(),
    }
}

fn millis_arg(x: Option<Millis>) -> String {
    x.map(|m| m.min(MAX_LEASE).to_string()).unwrap_or_default()
}

fn encode(op: &Op) -> Vec<String> {
    let s = |x: &str| x.to_owned();
    match op {
        Op::Acquire(Acquire {
            kind,
            mode,
            owner,
            lease,
            tag,
            ticket,
        }) => {
            let [k, n] = kind_args(*kind);
            // The request's id: the same on every retry of this step (see `redis.lua`).
            let id = ticket.unwrap_or_else(crate::owner::fresh_id);
            vec![
                s("acq"),
                k,
                n,
                mode_arg(*mode),
                owner_str(owner),
                millis_arg(*lease),
                opt_arg(tag),
                opt_arg(ticket),
                id.to_string(),
            ]
        }
        // An id, as an acquisition's: a resend after a lost answer is not a second
        // release (see `redis.lua`).
        Op::Release { token } => vec![
            s("rel"),
            token.to_string(),
            crate::owner::fresh_id().to_string(),
        ],
        Op::ReleaseOwned {
            kind,
            owner,
            n: times,
        } => {
            let [k, n] = kind_args(*kind);
            vec![s("relown"), k, n, owner_str(owner), times.to_string()]
        }
        Op::Value { kind } => {
            let [k, n] = kind_args(*kind);
            vec![s("value"), k, n]
        }
        Op::ForceRelease => vec![s("force")],
        Op::Dequeue { ticket } => vec![s("deq"), ticket.to_string()],
        Op::Renew { token, lease } => {
            vec![s("renew"), token.to_string(), millis_arg(Some(*lease))]
        }
        Op::Check { token } => vec![s("check"), token.to_string()],
        Op::Holders => vec![s("holders")],
        Op::CondWait {
            token,
            ticket,
            owner,
        } => vec![
            s("condwait"),
            token.to_string(),
            ticket.to_string(),
            owner_str(owner),
        ],
        Op::CondSleep { ticket, owner } => {
            vec![s("condsleep"), ticket.to_string(), owner_str(owner)]
        }
        Op::ReleaseAll { token } => vec![s("relall"), token.to_string()],
        Op::CondNotify { n } => vec![s("notify"), (*n).min(1 << 40).to_string()],
        Op::CondCheck { ticket } => vec![s("condcheck"), ticket.to_string(), s("0")],
        Op::CondCancel { ticket } => vec![s("condcheck"), ticket.to_string(), s("1")],
        Op::EventSet { tag } => vec![s("evset"), opt_arg(tag)],
        Op::EventClear => vec![s("evclear")],
        Op::EventRead => vec![s("evread")],
        Op::BarrierArrive {
            parties,
            owner,
            tag,
            action,
            only_last,
        } => vec![
            s("arrive"),
            parties.to_string(),
            owner_str(owner),
            opt_arg(tag),
            s(if *action { "1" } else { "0" }),
            s(if *only_last { "1" } else { "0" }),
        ],
        Op::BarrierAdvance {
            parties,
            generation,
        } => vec![s("advance"), parties.to_string(), generation.to_string()],
        Op::BarrierAbort {
            parties,
            generation,
            cause,
        } => vec![
            s("abort"),
            parties.to_string(),
            generation.map(|g| g.to_string()).unwrap_or_default(),
            s(cause.code()),
        ],
        Op::BarrierReset { parties } => vec![s("reset"), parties.to_string()],
        Op::BarrierRead { parties } => vec![s("bread"), parties.to_string()],
        Op::AvgAdd { value, expire, tag } => vec![
            s("avgadd"),
            format!("{value:?}"),
            millis_arg(*expire),
            opt_arg(tag),
        ],
        Op::AvgGet => vec![s("avgget")],
        Op::AvgPop => vec![s("avgpop")],
        Op::Remove => vec![s("remove")],
    }
}

fn reap_args(dead: Vec<String>) -> Vec<String> {
    let mut args = vec!["reap".to_owned()];
    args.extend(dead);
    args
}

fn into_array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(backend_err(format!(
            "unexpected reply from the locksmith script: {other:?}"
        ))),
    }
}

fn text(v: &Value) -> Result<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone())
            .map_err(|_| backend_err("the locksmith script answered non-UTF-8 text")),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(backend_err(format!(
            "unexpected value from the locksmith script: {other:?}"
        ))),
    }
}

fn int(v: Option<&Value>) -> Result<i64> {
    match v {
        Some(Value::Int(i)) => Ok(*i),
        Some(other) => text(other)?
            .parse()
            .map_err(|_| backend_err(format!("expected a number, got {other:?}"))),
        None => Err(backend_err("the locksmith script answered too little")),
    }
}

fn uint(v: Option<&Value>) -> Result<u64> {
    Ok(int(v)?.max(0) as u64)
}

fn opt_millis(v: Option<&Value>) -> Result<Option<Millis>> {
    let x = int(v)?;
    Ok((x >= 0).then_some(x as Millis))
}

/// The owners among `owners` whose processes are known to be gone (on this host);
/// each process is looked at once, however many of its threads and tasks are named.
fn dead_among(owners: &[Value]) -> Vec<String> {
    let mut seen: HashMap<Owner, bool> = HashMap::new();
    let mut dead: Vec<String> = Vec::new();
    for s in owners.iter().filter_map(|v| text(v).ok()) {
        let Some(o) = parse_owner(&s) else { continue };
        // Its process: the owner without its thread or task.
        let process = Owner { thread: 0, ..o };
        if *seen
            .entry(process)
            .or_insert_with_key(|process| process.is_dead())
            && !dead.contains(&s)
        {
            dead.push(s);
        }
    }
    dead
}

/// The reply, and the owners the reply named whose processes are gone.
fn decode(values: Vec<Value>, name: &str) -> Result<(Reply, Vec<String>)> {
    let tag = text(
        values
            .first()
            .ok_or_else(|| backend_err("empty reply from the locksmith script"))?,
    )?;
    let v = |i: usize| values.get(i);
    let name = name.to_owned();
    let reply = match tag.as_str() {
        "granted" => Reply::Granted(Grant {
            token: uint(v(1))?,
            previous_owner_died: int(v(2))? != 0,
        }),
        "blocked" => {
            let dead = dead_among(values.get(3..).unwrap_or_default());
            // A waiter near the front of the queue looks again within POLL (in case
            // its wake-up is lost); one further back only needs to keep its place.
            let rank = int(v(2))?;
            let look = if (0..FRONT).contains(&rank) {
                POLL
            } else {
                REFRESH
            };
            let look = now_millis() + look.as_millis() as Millis;
            let retry_at = match opt_millis(v(1))? {
                Some(lease_end) => lease_end.min(look),
                None => look,
            };
            return Ok((
                Reply::Blocked {
                    retry_at: Some(retry_at),
                },
                dead,
            ));
        }
        "done" => Reply::Done,
        "count" => Reply::Count(uint(v(1))?),
        "flag" => Reply::Flag(int(v(1))? != 0),
        "event" => Reply::Event {
            set: int(v(1))? != 0,
            generation: uint(v(2))?,
        },
        "arrived" => Reply::Arrived {
            generation: uint(v(1))?,
            index: uint(v(2))? as u32,
        },
        "busy" => Reply::Busy,
        "notlast" => Reply::NotLast,
        "pmismatch" => Reply::PartiesMismatch {
            parties: uint(v(1))? as u32,
        },
        "broke" => Reply::Broke(BrokenCause::from_code(
            &text(v(1).unwrap_or(&Value::Nil)).unwrap_or_default(),
        )),
        "barrier" => {
            let view = BarrierView {
                generation: uint(v(1))?,
                n_waiting: uint(v(2))? as u32,
                broken: int(v(3))? != 0,
                last_broken: opt_millis(v(4))?,
                cause: v(5)
                    .map(text)
                    .transpose()?
                    .filter(|c| !c.is_empty())
                    .map(|c| BrokenCause::from_code(&c)),
            };
            let dead = if view.broken {
                Vec::new()
            } else {
                dead_among(values.get(6..).unwrap_or_default())
            };
            return Ok((Reply::Barrier(view), dead));
        }
        "avg" => {
            let s = text(v(1).unwrap_or(&Value::Nil)).unwrap_or_default();
            Reply::Average(if s.is_empty() {
                None
            } else {
                Some(s.parse().map_err(|_| {
                    backend_err(format!("the locksmith script answered a bad mean '{s}'"))
                })?)
            })
        }
        "holders" => {
            let waiting = uint(v(1))? as u32;
            let mut holders = Vec::new();
            for h in values.get(2..).unwrap_or_default().chunks_exact(6) {
                let owner_s = text(&h[1])?;
                let owner = parse_owner(&owner_s)
                    .ok_or_else(|| backend_err(format!("bad owner '{owner_s}' in the store")))?;
                holders.push(Holder {
                    token: uint(h.first())?,
                    owner,
                    mode: if text(&h[2])? == "s" {
                        Mode::Shared
                    } else {
                        Mode::Exclusive
                    },
                    count: uint(h.get(3))? as u32,
                    since: uint(h.get(4))?,
                    until: opt_millis(h.get(5))?,
                });
            }
            Reply::Holders { holders, waiting }
        }
        "err" => {
            let kind = text(v(1).unwrap_or(&Value::Nil)).unwrap_or_default();
            return Err(match kind.as_str() {
                "notheld" => Error::NotHeld { name },
                "notowner" => Error::NotOwner { name },
                "deadlock" => Error::WouldDeadlock { name },
                "toomany" => Error::TooManyReleases { name },
                "broken" => Error::BrokenBarrier {
                    name,
                    cause: BrokenCause::from_code(
                        &text(v(2).unwrap_or(&Value::Nil)).unwrap_or_default(),
                    ),
                },
                "overflow" => Error::Overflow { name },
                "busy" => Error::Busy { name },
                "nested" => Error::invalid(format!(
                    "'{name}' is held {} levels deep by this owner: a condition wait takes \
                     the lock again under a new fencing token, which the outer levels' \
                     guards do not have; wait holding one level",
                    text(v(2).unwrap_or(&Value::Nil)).unwrap_or_default()
                )),
                "mismatch" => Error::Mismatch {
                    name,
                    wanted: text(v(2).unwrap_or(&Value::Nil)).unwrap_or_default(),
                    found: text(v(3).unwrap_or(&Value::Nil)).unwrap_or_default(),
                },
                _ => backend_err(format!(
                    "the locksmith script failed: {}",
                    text(v(2).unwrap_or(&Value::Nil)).unwrap_or(kind)
                )),
            });
        }
        other => {
            return Err(backend_err(format!(
                "unknown reply '{other}' from the locksmith script"
            )))
        }
    };
    Ok((reply, Vec::new()))
}

// Wake-ups -----------------------------------------------------------------------------

/// The subscriber of one server, shared by every space of this process on it.
struct Hub {
    client: redis::Client,
    /// Local watchers, by channel (the primitive's key).
    slots: Mutex<WeakMap<String, Slot>>,
    /// Subscribed patterns (one per open prefix), counted.
    patterns: Mutex<HashMap<String, usize>>,
    /// The live subscriber connection's command side.
    sink: Mutex<Option<redis::aio::PubSubSink>>,
    connected: tokio::sync::Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// How long connecting may take (the step timeout of the first space opened).
    timeout: Duration,
}

/// A map of weak entries, swept of dead ones whenever it doubled since the last
/// sweep: O(1) amortized per insert.
struct WeakMap<K, V> {
    map: HashMap<K, Weak<V>>,
    sweep_at: usize,
}

impl<K, V> Default for WeakMap<K, V> {
    fn default() -> Self {
        WeakMap {
            map: HashMap::new(),
            sweep_at: 64,
        }
    }
}

impl<K: std::hash::Hash + Eq, V> WeakMap<K, V> {
    fn get<Q>(&self, k: &Q) -> Option<Arc<V>>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.get(k).and_then(Weak::upgrade)
    }

    fn get_or_insert(&mut self, k: K, make: impl FnOnce() -> V) -> Arc<V> {
        if let Some(v) = self.get(&k) {
            return v;
        }
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = (self.map.len() * 2).max(64);
        }
        let v = Arc::new(make());
        self.map.insert(k, Arc::downgrade(&v));
        v
    }

    fn live(&self) -> impl Iterator<Item = Arc<V>> + '_ {
        self.map.values().filter_map(Weak::upgrade)
    }
}

#[derive(Default)]
struct Slot {
    /// Wakes watchers without a ticket.
    changed: Event,
    tickets: Mutex<WeakMap<u64, Event>>,
}

impl Slot {
    fn ticket(&self, ticket: u64) -> Arc<Event> {
        lock(&self.tickets).get_or_insert(ticket, Event::new)
    }

    fn wake_all(&self) {
        self.changed.notify(usize::MAX);
        for e in lock(&self.tickets).live() {
            e.notify(usize::MAX);
        }
    }

    fn wake(&self, payload: &str) {
        if payload == "*" {
            return self.wake_all();
        }
        let tickets = lock(&self.tickets);
        for t in payload.split(' ').filter_map(|t| t.parse::<u64>().ok()) {
            if let Some(e) = tickets.get(&t) {
                e.notify(usize::MAX);
            }
        }
    }
}

impl Hub {
    fn for_server(server: &str, client: &redis::Client, timeout: Duration) -> Result<Arc<Hub>> {
        // Keyed by pid too: a forked child must not use its parent's subscriber.
        static HUBS: Mutex<Vec<(u32, String, Weak<Hub>)>> = Mutex::new(Vec::new());
        let pid = crate::owner::pid();
        let mut hubs = lock(&HUBS);
        hubs.retain(|(p, _, w)| *p == pid && w.strong_count() > 0);
        if let Some(hub) = hubs
            .iter()
            .find(|(_, s, _)| s == server)
            .and_then(|(_, _, w)| w.upgrade())
        {
            return Ok(hub);
        }
        let hub = Arc::new(Hub {
            client: client.clone(),
            slots: Mutex::default(),
            patterns: Mutex::default(),
            sink: Mutex::new(None),
            connected: tokio::sync::Notify::new(),
            task: Mutex::new(None),
            timeout,
        });
        let task = runtime()?.spawn(subscriber(Arc::downgrade(&hub)));
        *lock(&hub.task) = Some(task);
        hubs.push((pid, server.to_owned(), Arc::downgrade(&hub)));
        Ok(hub)
    }

    fn slot(&self, channel: &str) -> Arc<Slot> {
        lock(&self.slots).get_or_insert(channel.to_owned(), Slot::default)
    }

    fn wake_everyone(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).live().collect();
        for s in slots {
            s.wake_all();
        }
    }

    /// Subscribes to `pattern`, returning once the server confirmed it; `Err(())` if
    /// it did not by `deadline`.
    async fn subscribe(&self, pattern: String, deadline: Instant) -> Result<(), ()> {
        *lock(&self.patterns).entry(pattern.clone()).or_insert(0) += 1;
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            let notified = self.connected.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let sink = lock(&self.sink).clone();
            if let Some(mut sink) = sink {
                if let Ok(Ok(())) =
                    tokio::time::timeout_at(deadline, sink.psubscribe(&pattern)).await
                {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.unsubscribe(&pattern);
                return Err(());
            }
        }
    }

    fn unsubscribe(&self, pattern: &str) {
        let mut patterns = lock(&self.patterns);
        let Some(n) = patterns.get_mut(pattern) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        patterns.remove(pattern);
        drop(patterns);
        if let (Some(mut sink), Ok(rt)) = (lock(&self.sink).clone(), runtime()) {
            let pattern = pattern.to_owned();
            rt.spawn(async move {
                let _ = sink.punsubscribe(&pattern).await;
            });
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

/// The subscriber task: connects, (re)subscribes, dispatches messages; on a lost
/// connection wakes every watcher (they re-check) and reconnects.
async fn subscriber(hub: Weak<Hub>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some((client, timeout)) = hub.upgrade().map(|h| (h.client.clone(), h.timeout)) else {
            return;
        };
        let connected = tokio::time::timeout(timeout, client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            _ => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(POLL);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        {
            let Some(h) = hub.upgrade() else { return };
            let patterns: Vec<String> = lock(&h.patterns).keys().cloned().collect();
            let mut ok = true;
            for p in patterns {
                ok &= matches!(
                    tokio::time::timeout(timeout, sink.psubscribe(&p)).await,
                    Ok(Ok(()))
                );
            }
            if !ok {
                continue;
            }
            *lock(&h.sink) = Some(sink);
            h.connected.notify_waiters();
            // Changes made while no subscriber listened are found by re-checking.
            h.wake_everyone();
        }
        backoff = Duration::from_millis(50);
        while let Some(msg) = stream.next().await {
            let Some(h) = hub.upgrade() else { return };
            let channel = msg.get_channel_name();
            let slot = lock(&h.slots).get(channel);
            if let Some(slot) = slot {
                slot.wake(&String::from_utf8_lossy(msg.get_payload_bytes()));
            }
        }
        let Some(h) = hub.upgrade() else { return };
        *lock(&h.sink) = None;
        h.wake_everyone();
    }
}

/// A registration on a primitive's slot, taken before the caller re-checks.
struct RedisWatch {
    listener: EventListener,
    ticket: Option<Arc<Event>>,
    _slot: Arc<Slot>,
}

/// The watch's deadline: the caller's, cut to the fallback poll. A queued waiter's
/// caller passes its retry hint (within [`POLL`] near the front of the queue, else
/// [`REFRESH`]), so its watch may sleep that long.
fn capped(deadline: Option<Instant>, ticket: bool) -> Instant {
    let poll = Instant::now() + if ticket { REFRESH } else { POLL };
    deadline.map_or(poll, |d| d.min(poll))
}

impl Watch for RedisWatch {
    fn wait(self: Box<Self>, deadline: Option<Instant>) -> Result<()> {
        let RedisWatch {
            listener, ticket, ..
        } = *self;
        listener.wait_deadline(capped(deadline, ticket.is_some()));
        Ok(())
    }

    fn wait_async(self: Box<Self>, deadline: Option<Instant>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let RedisWatch {
                mut listener,
                ticket,
                _slot,
            } = *self;
            let until = capped(deadline, ticket.is_some());
            // The timer runs on the Redis runtime, so any executor can wait.
            // (made inside the task: a timer belongs to the runtime it is made in).
            let mut timer = runtime()?.spawn(async move {
                tokio::time::sleep_until(until.into()).await;
            });
            std::future::poll_fn(|cx| {
                if Pin::new(&mut listener).poll(cx).is_ready()
                    || Pin::new(&mut timer).poll(cx).is_ready()
                {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            timer.abort();
            Ok(())
        })
    }
}

#[cfg(test)]
#[path = "redis_diff.rs"]
mod diff;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_off_the_prefix() {
        let url = split_url("redis://h:1/0?prefix=a%3Ab&protocol=resp3").unwrap();
        assert_eq!(url.server, "redis://h:1/0?protocol=resp3");
        assert_eq!(url.prefix, "a:b");
        let url = split_url("rediss://u:pw@h/2#insecure").unwrap();
        assert_eq!(url.server, "rediss://u:pw@h/2#insecure");
        assert_eq!(url.prefix, "locksmith:");
        let url =
            split_url("rediss://h/0?cacert=/c%20a.pem&prefix=p:&cert=/c.pem&key=/k.pem").unwrap();
        assert_eq!(url.server, "rediss://h/0");
        assert_eq!(url.cacert.as_deref(), Some("/c a.pem"));
        assert_eq!(
            (url.cert.as_deref(), url.key.as_deref()),
            (Some("/c.pem"), Some("/k.pem"))
        );
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(glob_escape("a*b?[c]"), "a\\*b\\?\\[c\\]");
    }

    #[test]
    fn certificate_files_need_tls_and_come_in_pairs() {
        let client = |url: &str| split_url(url).and_then(|u| u.client(url)).map(drop);
        assert!(matches!(
            client("redis://h/0?cacert=/ca.pem"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            client("rediss://h/0?cert=/c.pem"),
            Err(Error::InvalidArgument(_))
        ));
        // A file that cannot be read is the caller's mistake, found at open.
        let missing = client("rediss://h/0?cacert=/nonexistent/ca.pem");
        if cfg!(feature = "redis-tls") {
            assert!(
                matches!(missing, Err(Error::InvalidArgument(_))),
                "{missing:?}"
            );
        } else {
            assert!(matches!(missing, Err(Error::Unsupported(_))), "{missing:?}");
        }
    }

    #[test]
    fn owners_round_trip_through_their_string() {
        let o = Owner::current_thread();
        assert_eq!(parse_owner(&owner_str(&o)), Some(o.clone()));
        let mut odd = o;
        odd.host = "a/b c".into();
        assert_eq!(parse_owner(&owner_str(&odd)), Some(odd));
        // An older build's owner: no machine id or namespace, so never judged dead.
        let old = parse_owner("h/1f/4000000/7/3").expect("the old form parses");
        assert_eq!(
            (old.machine, old.pidns, old.pid, old.start),
            (0, 0, 4_000_000, 7)
        );
        assert!(!old.is_dead());
    }
}
