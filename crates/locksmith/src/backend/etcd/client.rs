//! The connection to the cluster: the process's etcd runtime, the client that fails
//! over between the URL's members, how its errors read, and the space's etcd lease with
//! its keeper.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, LeaseKeepAliveStream, LeaseKeeper};

use super::options::Options;
use crate::{Error, Result};

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's etcd runtime: one thread running the gRPC connections, the watch
/// streams and the lease keepers, whatever executor (if any) the callers use. A forked
/// child does not inherit the parent's thread, so it starts its own (keyed by pid).
pub(super) fn runtime() -> Result<tokio::runtime::Handle> {
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
        .map_err(|e| Error::backend(format!("cannot start the etcd runtime: {e}")))?;
    let handle = started.handle().clone();
    std::thread::Builder::new()
        .name("locksmith-etcd".into())
        .spawn(move || started.block_on(std::future::pending::<()>()))
        .map_err(|e| Error::backend(format!("cannot start the etcd runtime: {e}")))?;
    *rt = Some((pid, handle.clone()));
    Ok(handle)
}

/// Runs `fut` on the etcd runtime and blocks the calling thread until it is done.
pub(super) fn block_on<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| Error::backend("the etcd runtime stopped"))
}

/// How one request failed.
#[derive(Debug)]
pub(super) enum Fault {
    /// No member answered, or the answer was lost (a member killed, a leader
    /// election): a write may or may not have happened; asking again may work.
    Transient(String),
    /// The cluster refused (bad credentials, a request too large): asking again will
    /// not help.
    Refused(String),
    /// The space's lease is gone (it expired): a new one is needed.
    LeaseGone,
}

impl Fault {
    pub(super) fn of(e: etcd_client::Error) -> Fault {
        use tonic::Code;
        match &e {
            etcd_client::Error::GRpcStatus(s) => {
                if s.message().contains("requested lease not found") {
                    return Fault::LeaseGone;
                }
                match s.code() {
                    Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Unknown
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::Internal
                    | Code::ResourceExhausted => Fault::Transient(one_line(&s.to_string())),
                    _ => Fault::Refused(one_line(&s.to_string())),
                }
            }
            etcd_client::Error::TransportError(_)
            | etcd_client::Error::IoError(_)
            | etcd_client::Error::WatchError(_)
            | etcd_client::Error::LeaseKeepAliveError(_) => {
                Fault::Transient(one_line(&e.to_string()))
            }
            _ => Fault::Refused(one_line(&e.to_string())),
        }
    }

    pub(super) fn into_error(self, url: &str) -> Error {
        Error::backend(match self {
            Fault::Transient(m) => format!("{url}: no answer from the etcd cluster: {m}"),
            Fault::Refused(m) => format!("{url}: the etcd cluster refused: {m}"),
            Fault::LeaseGone => format!("{url}: the space's etcd lease expired"),
        })
    }
}

/// `s` on one line.
fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_control())
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A client per member of the URL, and the one in use: a request that gets no answer
/// moves this process on to the next member, so a member killed, paused or cut off from
/// the leader costs one request timeout, not every request. (With `require_leader`, a
/// member cut off from the leader answers "no leader" at once instead of hanging.)
pub(super) struct Members {
    clients: Vec<Client>,
    current: AtomicUsize,
}

impl Members {
    /// The member in use.
    pub(super) fn pick(&self) -> (usize, Client) {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        (i, self.clients[i].clone())
    }

    /// Moves on from member `i`, which did not answer (unless another request
    /// already moved on).
    pub(super) fn failed(&self, i: usize) {
        let next = (i + 1) % self.clients.len();
        let _ = self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Runs `f` on the member in use; moves on if it got no answer.
    pub(super) async fn with<T, F, Fut>(&self, f: F) -> std::result::Result<T, Fault>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let (i, client) = self.pick();
        let out = f(client).await.map_err(Fault::of);
        if let Err(Fault::Transient(_)) = &out {
            self.failed(i);
        }
        out
    }
}

/// Connects to the URL's members, a client each (connections are made on first use).
pub(super) async fn connect(opts: &Options) -> std::result::Result<Members, Fault> {
    let mut connect = ConnectOptions::new()
        .with_connect_timeout(opts.timeout.min(Duration::from_secs(3)))
        // A request is given a third of a step's time, so that one sent to a member
        // that stopped answering leaves time to ask another.
        .with_timeout((opts.timeout / 3).max(Duration::from_secs(1)))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_require_leader(true);
    if let Some((user, password)) = &opts.user {
        connect = connect.with_user(user, password);
    }
    let mut clients = Vec::new();
    let mut last = None;
    for e in &opts.endpoints {
        let endpoint = [format!("http://{e}")];
        let made = tokio::time::timeout(
            opts.timeout,
            Client::connect(endpoint, Some(connect.clone())),
        )
        .await;
        match made {
            Ok(Ok(c)) => clients.push(c),
            // (With credentials, connecting asks the member for a token: a member down
            // now is left out of this space.)
            Ok(Err(e)) => last = Some(Fault::of(e)),
            Err(_) => last = Some(Fault::Transient(format!("{e} did not answer"))),
        }
    }
    if clients.is_empty() {
        return Err(last.unwrap_or_else(|| Fault::Refused("no member".into())));
    }
    Ok(Members {
        clients,
        current: AtomicUsize::new(0),
    })
}

/// The etcd lease that carries a space's holds, and the task that keeps it alive.
///
/// Every hold's liveness key is attached to it: while the process lives and reaches
/// the cluster, the keeper renews it every third of its TTL; when the process dies or
/// is cut off for longer than the TTL, etcd deletes the keys, and the holds count as
/// dead. A keep-alive answer with no TTL left says the lease is gone: the holds it
/// carried are lost (their guards learn it at their next check), and a new lease is
/// granted for the holds to come.
pub(super) struct Session {
    members: Arc<Members>,
    ttl: Duration,
    /// The lease in force; 0 while none is (before the first grant, after a loss).
    id: tokio::sync::Mutex<i64>,
    /// The lease the keeper keeps; it moves on when `id` does.
    kept: Mutex<i64>,
}

impl Session {
    pub(super) fn new(members: Arc<Members>, ttl: Duration) -> Arc<Session> {
        Arc::new(Session {
            members,
            ttl,
            id: tokio::sync::Mutex::new(0),
            kept: Mutex::new(0),
        })
    }

    /// The lease to attach holds to, granted (and its keeper started) if there is
    /// none in force.
    pub(super) async fn lease(self: &Arc<Self>) -> std::result::Result<i64, Fault> {
        let mut id = self.id.lock().await;
        if *id != 0 {
            return Ok(*id);
        }
        let ttl = self.ttl.as_secs() as i64;
        let granted = self
            .members
            .with(|mut c| async move { c.lease_grant(ttl, None).await })
            .await?;
        *id = granted.id();
        *lock(&self.kept) = *id;
        tokio::spawn(keep(Arc::downgrade(self), *id, self.ttl));
        Ok(*id)
    }

    /// Forgets `gone`, found expired: the next hold gets a new lease.
    pub(super) async fn lost(&self, gone: i64) {
        let mut id = self.id.lock().await;
        if *id == gone {
            tracing::warn!(
                lease = gone,
                "the space's etcd lease expired: its holds are lost"
            );
            *id = 0;
        }
    }

    /// Forgets the lease in force, which a transaction found expired.
    pub(super) async fn lost_any(&self) {
        let mut id = self.id.lock().await;
        if *id != 0 {
            tracing::warn!(
                lease = *id,
                "the space's etcd lease expired: its holds are lost"
            );
            *id = 0;
        }
    }

    /// Revokes the lease in force, so that holds left by a space being closed end at
    /// once rather than a TTL later.
    pub(super) fn revoke(&self) {
        let id = std::mem::take(&mut *lock(&self.kept));
        if id == 0 {
            return;
        }
        let (_, mut client) = self.members.pick();
        if let Ok(rt) = runtime() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(id)).await;
            });
        }
    }
}

/// Keeps lease `id` alive while its session lives and it is the one in force.
async fn keep(session: Weak<Session>, id: i64, ttl: Duration) {
    let every = ttl / 3;
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    loop {
        let Some(s) = session.upgrade() else { return };
        if *lock(&s.kept) != id {
            return;
        }
        let (member, mut client) = s.members.pick();
        if stream.is_none() {
            stream = client.lease_keep_alive(id).await.ok();
        }
        drop(client);
        let answer = match &mut stream {
            Some((keeper, answers)) => match keeper.keep_alive().await {
                Ok(()) => tokio::time::timeout(every, answers.message()).await,
                Err(e) => Ok(Err(e)),
            },
            None => Ok(Err(etcd_client::Error::LeaseKeepAliveError(
                "no stream".into(),
            ))),
        };
        match answer {
            Ok(Ok(Some(resp))) if resp.ttl() <= 0 => {
                // The cluster says the lease is gone: its keys are deleted already.
                if let Some(s) = session.upgrade() {
                    s.lost(id).await;
                }
                return;
            }
            Ok(Ok(Some(_))) => tokio::time::sleep(every).await,
            // A broken stream (a member killed): make a new one, to another member.
            _ => {
                s.members.failed(member);
                stream = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
