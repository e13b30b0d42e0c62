//! The PostgreSQL store: a fresh schema per test on the machine's server, and the
//! tests only a server store needs (connections ended by the server mid-test, two
//! schemas of one database, schemas that are not the store's, a server that cannot be
//! reached).
//!
//! The server is `LOCKSMITH_POSTGRES_URL`, else `postgres://postgres@127.0.0.1:5432/test`
//! (`scripts/test-deps` makes sure it runs). Without it the tests fail and say why:
//! they never skip.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use locksmith::{Error, Space};

use crate::{eventually, threads, unique, Store, Test};

pub fn tests() -> Vec<Test> {
    vec![
        (
            "postgres::connections_ended_by_the_server_give_typed_errors_or_retries_never_a_false_grant",
            terminated,
        ),
        (
            "postgres::a_waiter_is_served_after_its_listening_connection_is_ended",
            listener_terminated,
        ),
        (
            "postgres::two_spaces_on_two_schemas_do_not_see_each_other",
            two_schemas,
        ),
        (
            "postgres::a_foreign_schema_is_refused_and_left_untouched",
            foreign_schema,
        ),
        (
            "postgres::a_newer_schema_version_is_refused_and_left_untouched",
            newer_schema,
        ),
        (
            "postgres::an_unreachable_server_is_a_backend_error_within_the_timeout",
            unreachable,
        ),
    ]
}

/// The server the suite uses.
fn server() -> String {
    match std::env::var("LOCKSMITH_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => "postgres://postgres@127.0.0.1:5432/test".to_owned(),
    }
}

/// The prefix of the schemas this process creates; [`drop_schemas`] drops them.
fn schema_prefix() -> String {
    format!("lsc_{}_", std::process::id())
}

fn fresh_schema() -> String {
    format!("{}{}", schema_prefix(), unique() & 0xffff_ffff)
}

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// A URL naming a fresh schema on the suite's server.
pub fn fresh_url() -> String {
    with_params(&server(), &format!("schema={}", fresh_schema()))
}

/// Runs `sql` (simple statements) on the suite's server; answers the first column of
/// each row, as text.
fn sql(sql: &str) -> Vec<Option<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&server(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("the suite's PostgreSQL server {}: {e}", server()));
        tokio::spawn(conn);
        let mut out = Vec::new();
        for m in client.simple_query(sql).await.unwrap() {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                out.push(r.get(0).map(str::to_owned));
            }
        }
        out
    })
}

/// Drops the schemas this process created (called once the suite is done).
pub fn drop_schemas() {
    let prefix = schema_prefix();
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let Ok((client, conn)) = tokio_postgres::connect(&server(), tokio_postgres::NoTls).await
        else {
            return;
        };
        tokio::spawn(conn);
        let like = format!("{prefix}%");
        let Ok(rows) = client
            .query(
                "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1",
                &[&like],
            )
            .await
        else {
            return;
        };
        for r in rows {
            let name: String = r.get(0);
            let _ = client
                .batch_execute(&format!("DROP SCHEMA \"{name}\" CASCADE"))
                .await;
        }
    });
}

/// Ends every connection of `application_name` = `app`; answers how many.
fn terminate(app: &str) -> usize {
    let n = sql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = '{app}'"
    ));
    n[0].as_deref().unwrap_or("0").parse().unwrap()
}

/// A space on a fresh schema whose connections carry an application name of their
/// own, so that a test ends only its connections.
fn open_tagged() -> (Space, String) {
    let app = format!("lsterm_{}", unique());
    let url = with_params(&fresh_url(), &format!("application_name={app}"));
    (Space::open(&url).unwrap(), app)
}

/// Holders that take and give back a lock while another thread keeps ending their
/// connections: every acquisition is a true grant or a typed error, two holders never
/// overlap, and once the ending stops everything works again.
fn terminated(_: &Store) {
    let (space, app) = open_tagged();
    let stop = Arc::new(AtomicBool::new(false));
    let killer = std::thread::spawn({
        let (stop, app) = (stop.clone(), app.clone());
        move || {
            let mut ended = 0;
            while !stop.load(Ordering::Relaxed) {
                ended += terminate(&app);
                std::thread::sleep(Duration::from_millis(20));
            }
            ended
        }
    });
    let inside = Arc::new(AtomicBool::new(false));
    let (granted, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    threads(2, {
        let (space, inside) = (space.clone(), inside.clone());
        let (granted, failed) = (granted.clone(), failed.clone());
        move |_| {
            // A short lease: a release whose commit was cut off leaves a hold that
            // lapses soon.
            let lock = space.lock("contended").lease(Duration::from_secs(2));
            for _ in 0..30 {
                match lock.acquire_timeout(Duration::from_secs(20)) {
                    Ok(Some(guard)) => {
                        assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                        granted.fetch_add(1, Ordering::Relaxed);
                        inside.store(false, Ordering::SeqCst);
                        drop(guard);
                    }
                    Ok(None) => panic!("no grant within 20 s"),
                    Err(Error::Backend(_)) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("an error other than Backend: {e:?}"),
                }
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    let ended = killer.join().unwrap();
    assert!(
        ended > 0,
        "the server ended some of the space's connections"
    );
    assert!(
        granted.load(Ordering::Relaxed) > 0,
        "some acquisitions passed"
    );
    // Afterwards the store works, and tokens still go up.
    let lock = space.lock("contended");
    let a = lock
        .acquire_timeout(Duration::from_secs(20))
        .unwrap()
        .expect("the lock is free again once leases of cut-off releases lapse");
    let first = a.token();
    drop(a);
    let b = lock.acquire().unwrap();
    assert!(b.token() > first);
}

/// A waiter whose process's listening connection (and every other) is ended while it
/// waits is still served when the holder releases: the connection comes back and the
/// waiter re-checks on its own meanwhile.
fn listener_terminated(_: &Store) {
    let (space, app) = open_tagged();
    let lock = space.lock("l");
    let guard = lock.acquire().unwrap();
    let held = guard.token();
    let waiter = std::thread::spawn({
        let lock = lock.clone();
        move || {
            lock.acquire_timeout(Duration::from_secs(60))
                .unwrap()
                .map(|g| g.token())
        }
    });
    eventually("the waiter queued", || space.waiting("l").unwrap() == 1);
    assert!(
        terminate(&app) >= 2,
        "the pool's and the listener's connections"
    );
    drop(guard);
    let got = waiter.join().unwrap().expect("the waiter got the lock");
    assert!(got > held);
}

/// Two schemas of one database are two stores: the same name is held in both at once,
/// and neither lists the other's names.
fn two_schemas(_: &Store) {
    let a = Space::open(&fresh_url()).unwrap();
    let b = Space::open(&fresh_url()).unwrap();
    let in_a = a.lock("same").acquire().unwrap();
    let in_b = b
        .lock("same")
        .try_acquire()
        .unwrap()
        .expect("the other schema's lock is free");
    let _only_a = a.semaphore("only-a", 1).acquire().unwrap();
    assert!(a.names().unwrap().contains(&"only-a".to_owned()));
    assert!(!b.names().unwrap().contains(&"only-a".to_owned()));
    assert_eq!(a.holders("same").unwrap().len(), 1);
    assert_eq!(b.holders("same").unwrap().len(), 1);
    drop((in_a, in_b));
}

/// A schema that holds someone else's table is refused with a clear error, and
/// nothing is added to it.
fn foreign_schema(_: &Store) {
    let schema = fresh_schema();
    sql(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.prim (id int); \
         INSERT INTO {schema}.prim VALUES (7)"
    ));
    let url = with_params(&server(), &format!("schema={schema}"));
    match Space::open(&url) {
        Err(Error::InvalidArgument(msg)) => {
            assert!(msg.contains("not a locksmith store"), "{msg}");
            assert!(msg.contains("left as it is"), "{msg}");
        }
        other => panic!("a foreign schema was not refused: {:?}", other.map(|_| ())),
    }
    let tables = sql(&format!(
        "SELECT relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE nspname = '{schema}' AND relkind = 'r' ORDER BY 1"
    ));
    assert_eq!(tables, vec![Some("prim".to_owned())], "nothing was created");
    assert_eq!(
        sql(&format!("SELECT id::text FROM {schema}.prim")),
        vec![Some("7".to_owned())]
    );
}

/// A store written by a newer version is refused, with both versions named, and left
/// as it is.
fn newer_schema(_: &Store) {
    let schema = fresh_schema();
    let url = with_params(&server(), &format!("schema={schema}"));
    let space = Space::open(&url).unwrap();
    let token = space.lock("kept").acquire().unwrap().token();
    drop(space);
    sql(&format!(
        "UPDATE {schema}.meta SET value = 99 WHERE key = 'locksmith_schema_version'"
    ));
    match Space::open(&url) {
        Err(Error::InvalidArgument(msg)) => {
            assert!(msg.contains("version 99"), "{msg}");
            assert!(msg.contains("left as it is"), "{msg}");
        }
        other => panic!("a newer schema was not refused: {:?}", other.map(|_| ())),
    }
    assert_eq!(
        sql(&format!(
            "SELECT value::text FROM {schema}.meta WHERE key = 'locksmith_schema_version'"
        )),
        vec![Some("99".to_owned())]
    );
    assert_eq!(
        sql(&format!(
            "SELECT token::text FROM {schema}.prim WHERE name = 'kept'"
        )),
        vec![Some(token.to_string())]
    );
}

/// A server that cannot be reached: opening fails with a Backend error, within the
/// URL's timeout (plus slack for a loaded machine).
fn unreachable(_: &Store) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let started = Instant::now();
    let url = format!("postgres://postgres@127.0.0.1:{port}/test?schema=x&timeout=1500");
    match Space::open(&url) {
        Err(Error::Backend(e)) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&port.to_string()),
                "the message names the server: {msg}"
            );
        }
        other => panic!("an unreachable server opened: {:?}", other.map(|_| ())),
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up within the timeout's order of magnitude"
    );
}
