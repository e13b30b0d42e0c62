//! The store's tables, created on first use in a schema of their own, and refused
//! (left untouched) when the schema holds something else or a newer version.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::conn::{describe, Fault};
use crate::Error;

/// The schema version this build reads and writes, kept in `meta` under [`VERSION_KEY`].
pub(crate) const VERSION: i64 = 1;
pub(crate) const VERSION_KEY: &str = "locksmith_schema_version";

/// Why the schema cannot be used: a server fault, or a schema that is not ours.
pub(crate) enum Refusal {
    Fault(Fault),
    Foreign(Error),
}

impl From<tokio_postgres::Error> for Refusal {
    fn from(e: tokio_postgres::Error) -> Refusal {
        Refusal::Fault(Fault::before_commit(&e))
    }
}

/// Makes sure `schema` holds a store of this version: creates it if the schema is
/// missing or empty, accepts it if it holds one, refuses anything else. One
/// transaction, serialized with other processes doing the same by a
/// transaction-scoped advisory lock.
pub(crate) async fn ensure(client: &Client, schema: &str) -> std::result::Result<(), Refusal> {
    client.batch_execute("BEGIN").await?;
    let out = check_or_create(client, schema).await;
    let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
    match (out, client.batch_execute(end).await) {
        (Ok(()), Err(e)) => Err(Refusal::Fault(Fault::at_commit(&e))),
        (out, _) => out,
    }
}

async fn check_or_create(client: &Client, schema: &str) -> std::result::Result<(), Refusal> {
    let s = &schema;
    client
        .query_typed(
            "SELECT pg_advisory_xact_lock(hashtext('locksmith schema ' || $1))",
            &[(s, Type::TEXT)],
        )
        .await?;
    let exists = client
        .query_typed(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[(s, Type::TEXT)],
        )
        .await?
        .len()
        == 1;
    let tables: Vec<String> = client
        .query_typed(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1",
            &[(s, Type::TEXT)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if tables.is_empty() {
        // The schema is missing, or empty (made for the store by an administrator):
        // only then is anything created.
        if !exists {
            client
                .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
                .await?;
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE \"{schema}\".meta (key text PRIMARY KEY, value bigint NOT NULL);
                 INSERT INTO \"{schema}\".meta (key, value)
                     VALUES ('{VERSION_KEY}', {VERSION}), ('token_floor', 0);
                 CREATE TABLE \"{schema}\".prim (name text PRIMARY KEY, token bigint NOT NULL,
                     tag text, state text, kind text);
                 CREATE INDEX prim_tag ON \"{schema}\".prim (tag) WHERE tag IS NOT NULL;"
            ))
            .await?;
        return Ok(());
    }
    let foreign = || {
        Refusal::Foreign(Error::invalid(format!(
            "the schema '{schema}' holds tables that are not a locksmith store ({}); it was \
             left as it is: name another one with ?schema=",
            tables.join(", ")
        )))
    };
    if !tables.iter().any(|t| t == "meta") || !tables.iter().any(|t| t == "prim") {
        return Err(foreign());
    }
    // Read inside a savepoint: a `meta` of another shape is an error that must not
    // abort the transaction (only refuse the schema).
    client.batch_execute("SAVEPOINT look").await?;
    let version = client
        .query_typed(
            &format!("SELECT value::bigint FROM \"{schema}\".meta WHERE key = $1"),
            &[(&VERSION_KEY, Type::TEXT)],
        )
        .await;
    let version: Option<i64> = match version {
        Ok(rows) => rows.first().map(|r| r.get(0)),
        Err(e) if e.as_db_error().is_some() && !e.is_closed() => {
            tracing::debug!(error = %describe(&e), "not a locksmith meta table");
            client.batch_execute("ROLLBACK TO SAVEPOINT look").await?;
            None
        }
        Err(e) => return Err(e.into()),
    };
    match version {
        None => Err(foreign()),
        Some(VERSION) => Ok(()),
        Some(v) => Err(Refusal::Foreign(Error::invalid(format!(
            "the schema '{schema}' holds a locksmith store of schema version {v}; this build \
             reads version {VERSION} only; it was left as it is"
        )))),
    }
}

/// Removes the store in `schema`: its tables, then the schema itself, unless something
/// else was put there or the schema is not ours to drop (made for the store by an
/// administrator), in which case it is left, empty, for the next store. One
/// transaction, under [`ensure`]'s advisory lock.
pub(crate) async fn remove(client: &Client, schema: &str) -> std::result::Result<(), Fault> {
    let fail = |e: tokio_postgres::Error| Fault::before_commit(&e);
    client.batch_execute("BEGIN").await.map_err(fail)?;
    let out = async {
        client
            .query_typed(
                "SELECT pg_advisory_xact_lock(hashtext('locksmith schema ' || $1))",
                &[(&schema, Type::TEXT)],
            )
            .await
            .map_err(fail)?;
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS \"{schema}\".meta, \"{schema}\".prim; SAVEPOINT tables"
            ))
            .await
            .map_err(fail)?;
        if let Err(e) = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" RESTRICT"))
            .await
        {
            if e.as_db_error().is_none() || e.is_closed() {
                return Err(fail(e));
            }
            tracing::debug!(error = %describe(&e), "the store's schema is kept");
            client
                .batch_execute("ROLLBACK TO SAVEPOINT tables")
                .await
                .map_err(fail)?;
        }
        Ok(())
    }
    .await;
    let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
    match (out, client.batch_execute(end).await) {
        (Ok(()), Err(e)) => Err(Fault::at_commit(&e)),
        (out, _) => out,
    }
}
