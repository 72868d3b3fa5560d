//! XA — two-phase commit over the branches' own databases (dtm's
//! `dtmcli.XaGlobalTransaction`, `XaLocalTransaction`, and
//! `dtmimp/trans_xa_base.go`), on sqlx for MySQL/MariaDB and PostgreSQL.
//!
//! # The application's side ([`Xa`])
//!
//! 1. `prepare` the global transaction;
//! 2. call each branch itself ([`Xa::call_branch_json`], [`Xa::call_branch`]):
//!    op `action`, branch ids `01`, `02`, …, plus `dtm` (the coordinator)
//!    and `phase2_url` (where the coordinator will send `commit` or
//!    `rollback`; the branch's own URL, as in dtm);
//! 3. every branch answered success → `submit` (the coordinator commits
//!    each branch), else `abort` (it rolls each back). [`Xa::run`] does 1
//!    and 3 around your code.
//!
//! # The branch's side ([`XaDb`])
//!
//! One handler serves all three ops, as dtm's `XaLocalTransaction` does
//! ([`XaDb::handle`]):
//!
//! * `action` ([`XaDb::local_transaction`]): on a connection of its own,
//!   `XA START '<gid>-<branch_id>'` (PostgreSQL: `BEGIN`), the barrier row
//!   ([`barrier::XaBarrier`]), your SQL, `registerBranch` (type `xa`, `url`
//!   = the phase-2 URL), then `XA END` + `XA PREPARE` (PostgreSQL: `PREPARE
//!   TRANSACTION`), and the connection is closed: the prepared transaction
//!   now belongs to the database, not to this process. Registering *before*
//!   preparing means a crash in between leaves nothing prepared that the
//!   coordinator does not know of (the database rolls back an unprepared
//!   transaction whose session died).
//! * `commit` / `rollback` ([`XaDb::phase_two`]): `XA COMMIT` / `XA ROLLBACK`
//!   (`COMMIT PREPARED` / `ROLLBACK PREPARED`) on any connection. Idempotent:
//!   an xid the database does not know was already finished (or never
//!   prepared) — *unless* `XA RECOVER` still lists it, which on MariaDB
//!   means it is still attached to the session that prepared it: then the
//!   answer is "retry", never a success that committed nothing. After a
//!   rollback the barrier row with reason `rollback` is written, so a local
//!   transaction that arrives later gives up instead of preparing.
//!
//! A workflow's XA step ([`crate::workflow::Wf::xa_step`], dtm's `DoXa`)
//! runs the same local transaction in the workflow's own process, with the
//! progress op `business` in place of the `xa` registration, and the same
//! phase 2 as its `on_commit` / `on_rollback`.
//!
//! # No prepared transaction left behind ([`XaDb::recover`])
//!
//! A prepared transaction holds its row locks until someone commits or
//! rolls it back, across restarts of the branch service and of the
//! database. The coordinator retries phase 2 until it succeeds, so normally
//! nothing stays prepared for long. What can leave one behind: a global
//! transaction force-stopped (`forceStop` fails it without any rollback
//! call), a phase-2 URL that no longer reaches this service, a coordinator
//! store that was lost or cleaned. [`XaDb::recover`] is the safety net, and
//! [`XaDb::spawn_recovery`] runs it periodically: it lists the prepared xids
//! (`XA RECOVER`; PostgreSQL: `pg_prepared_xacts` of this database), reads
//! each one's gid and branch id back from `<gid>-<branch_id>`, asks the
//! coordinator for the global status (`query`, HTTP API), and finishes the
//! ones whose outcome is decided:
//!
//! | global status | decided? | recovery does |
//! |---|---|---|
//! | `succeed`, `submitted` | commit (a submitted XA only goes on to succeed) | `XA COMMIT` |
//! | `failed`, `aborting` | roll back | `XA ROLLBACK` + the `rollback` barrier row |
//! | `prepared` | not yet: the application is still calling branches, or the timeout will abort it | nothing |
//! | unknown gid, or not a `<gid>-<branch_id>` xid | not ours to decide | nothing (reported) |
//!
//! Doing what the coordinator would do, earlier, is safe because phase 2 is
//! idempotent on both sides. On MySQL/MariaDB `XA RECOVER` lists the
//! prepared transactions of the whole server, like dtm's default barrier
//! table `dtm_barrier.barrier` is one per server: one recovery per server
//! is enough, and it writes its `rollback` rows to that shared table.
//!
//! # Limits
//!
//! The xid is dtm's `<gid>-<branch_id>`; MySQL allows at most 64 bytes, and
//! the xid is written into the SQL as a literal (XA statements take no
//! parameters), so a gid whose xid is longer or contains `'` or `\` is
//! refused with [`BranchError::InvalidArgument`]. PostgreSQL needs
//! `max_prepared_transactions > 0`. On MySQL 8, `XA RECOVER` (recovery,
//! and the check after an unknown xid) needs the `XA_RECOVER_ADMIN`
//! privilege; MariaDB lets any user list the prepared transactions.
//! MariaDB keeps a prepared transaction across the end of its session and
//! across restarts from 10.5 on (MDEV-742); older versions roll it back when
//! the session that prepared it ends, which defeats XA.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use barrier::{BarrierDatabase, BarrierTable, BranchError, XaAction, XaBarrier};
use dtm_protocol::{BranchCall, BranchId, Gid, Op, ProtocolError, Received, TransType};
use serde::Serialize;
use sqlx::{ConnectOptions, Connection, Pool};

use crate::branch::{BranchIdGen, BranchRequest};
use crate::two_phase;
use crate::{ClientError, DtmClient, RegisterBranch, TransOptions, TransRequest, TransStatus};

/// The query parameter (HTTP) or `dtm-` metadata (gRPC) naming the phase-2 URL.
pub const PHASE2_URL: &str = "phase2_url";

/// MySQL's limit on the gtrid part of an xid.
const MAX_XID_BYTES: usize = 64;

/// An XA global transaction, driven by the application (dtm's `Xa`).
#[derive(Debug)]
pub struct Xa {
    /// The coordinator; its address is sent to branches as `dtm`.
    dtm: DtmClient,
    /// The global transaction id.
    gid: Gid,
    /// Options sent with prepare/submit/abort; `request_timeout` and
    /// `branch_headers` also apply to the action calls.
    options: TransOptions,
    /// Hands out branch ids; behind a lock so `&self` can call branches.
    ids: Mutex<BranchIdGen>,
}

two_phase::two_phase_type!(Xa, "commits/rollbacks", "action");

impl Xa {
    /// A new global transaction `gid` at `dtm` (not prepared yet).
    pub fn new(dtm: DtmClient, gid: Gid) -> Xa {
        Xa { dtm, gid, options: TransOptions::default(), ids: Mutex::default() }
    }

    /// The global transaction id.
    pub fn gid(&self) -> &Gid {
        &self.gid
    }

    /// What prepare, submit and abort send.
    pub fn request(&self) -> TransRequest {
        let mut request = TransRequest::new(self.gid.clone(), TransType::Xa);
        request.options = self.options.clone();
        request
    }

    /// `prepare`: the coordinator now knows the transaction (idempotent).
    pub async fn prepare(&self) -> Result<(), ClientError> {
        self.dtm.prepare_request(&self.request()).await
    }

    /// `submit`: every registered branch will be committed.
    pub async fn submit(&self) -> Result<(), ClientError> {
        self.dtm.submit_request(&self.request()).await
    }

    /// `abort`: every registered branch will be rolled back; `reason` is
    /// recorded as the rollback reason.
    pub async fn abort(&self, reason: &str) -> Result<(), ClientError> {
        let mut request = self.request();
        request.rollback_reason = two_phase::truncate(reason, two_phase::MAX_REASON_BYTES).to_string();
        self.dtm.abort_request(&request).await
    }

    /// POSTs `body` as JSON to the HTTP branch `url` with op `action` and
    /// `phase2_url` = `url` (dtm's `CallBranch`). Returns the reply body.
    pub async fn call_branch_json(&self, body: &impl Serialize, url: &str) -> Result<Vec<u8>, ClientError> {
        let payload =
            serde_json::to_vec(body).map_err(|err| ClientError::InvalidArgument(err.to_string()))?;
        self.call_branch_raw(&payload, url, url).await
    }

    /// Calls the gRPC branch `url` (`host:port/pkg.Svc/Method`) with `req`,
    /// op `action`, and `phase2_url` (`dtm-phase2_url`) = `phase2_url`.
    pub async fn call_branch<Req, Resp>(
        &self,
        req: &Req,
        url: &str,
        phase2_url: &str,
    ) -> Result<Resp, ClientError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let reply = self.call_branch_raw(&req.encode_to_vec(), url, phase2_url).await?;
        Resp::decode(reply.as_slice())
            .map_err(|err| ClientError::Other(format!("unreadable reply of {url}: {err}")))
    }

    /// The action call with an already encoded payload, for any transport.
    /// FAILURE (409 / `Aborted`) is [`ClientError::Failure`].
    pub async fn call_branch_raw(
        &self,
        payload: &[u8],
        url: &str,
        phase2_url: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let branch_id = self.ids.lock().unwrap_or_else(PoisonError::into_inner).next_id()?;
        let call = BranchRequest {
            url,
            payload,
            call: BranchCall::new(self.gid.clone(), TransType::Xa, branch_id, Op::Action)
                .with_dtm(self.dtm.address()),
            headers: &self.options.branch_headers,
            extra: &[(PHASE2_URL, phase2_url)],
            timeout: self.options.request_timeout.unwrap_or(crate::DEFAULT_BRANCH_TIMEOUT),
        };
        self.dtm.branches().call(&call).await
    }

    /// The whole global transaction: prepare, run `body` (which calls the
    /// branches), then submit if it returned `Ok`, or abort with its error
    /// as the rollback reason (dtm's `XaGlobalTransaction`). A failed abort
    /// is logged: the transaction's timeout rolls it back instead.
    pub async fn run<T>(
        self,
        body: impl AsyncFnOnce(&Xa) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        two_phase::run(self, body).await
    }
}

/// An XA transaction id: dtm's `<gid>-<branch_id>`, checked to be usable as
/// a literal in `XA …` / `PREPARE TRANSACTION` statements.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Xid(String);

impl Xid {
    /// The xid of branch `branch_id` of `gid`.
    pub fn new(gid: &Gid, branch_id: &BranchId) -> Result<Xid, BranchError> {
        let xid = format!("{gid}-{branch_id}");
        if xid.len() > MAX_XID_BYTES {
            return Err(BranchError::InvalidArgument(format!(
                "XA xid {xid:?} is longer than {MAX_XID_BYTES} bytes (MySQL's limit): use a shorter gid"
            )));
        }
        if xid.contains(['\'', '\\']) {
            return Err(BranchError::InvalidArgument(format!("XA xid {xid:?} may not contain ' or \\")));
        }
        Ok(Xid(xid))
    }

    /// The gid and branch id an xid of ours was made of (split at the last
    /// `-`: branch ids have none). `None` for another application's xid.
    pub fn parts(&self) -> Option<(Gid, BranchId)> {
        let (gid, branch_id) = self.0.rsplit_once('-')?;
        Some((Gid::new(gid).ok()?, BranchId::new(branch_id).ok()?))
    }

    /// The xid as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The dtm values an XA branch receives (dtm's `XaFromQuery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XaBranch {
    /// The global transaction.
    pub gid: Gid,
    /// This branch.
    pub branch_id: BranchId,
    /// `action` (from the application), `commit` or `rollback` (from the coordinator).
    pub op: Op,
    /// Where the coordinator sends phase 2 (`phase2_url`; actions only).
    pub phase2_url: Option<String>,
}

impl XaBranch {
    /// From an HTTP query string (`gid=…&branch_id=…&op=…&phase2_url=…`).
    pub fn from_query(query: &str) -> Result<XaBranch, ProtocolError> {
        let phase2_url = url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == PHASE2_URL)
            .map(|(_, value)| value.into_owned());
        XaBranch::from_received(&Received::from_query(query), phase2_url)
    }

    /// From gRPC metadata (`dtm-gid`, `dtm-branch_id`, `dtm-op`, `dtm-phase2_url`).
    pub fn from_grpc(metadata: &tonic::metadata::MetadataMap) -> Result<XaBranch, ProtocolError> {
        let phase2_url = metadata
            .get(format!("dtm-{PHASE2_URL}").as_str())
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        XaBranch::from_received(&Received::from_grpc(metadata), phase2_url)
    }

    fn from_received(received: &Received, phase2_url: Option<String>) -> Result<XaBranch, ProtocolError> {
        Ok(XaBranch {
            gid: received.gid()?,
            branch_id: received.branch_id()?,
            op: received.op()?,
            phase2_url: phase2_url.filter(|url| !url.is_empty()),
        })
    }

    /// `<gid>-<branch_id>`.
    pub fn xid(&self) -> Result<Xid, BranchError> {
        Xid::new(&self.gid, &self.branch_id)
    }
}

/// How finishing a prepared transaction went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Committed or rolled back now.
    Done,
    /// The database does not know the xid (already finished, or never
    /// prepared): `XAER_NOTA` / `does not exist`.
    Unknown,
}

/// The XA statements of an engine. Implemented for `sqlx::MySql`
/// (MySQL/MariaDB `XA …`) and `sqlx::Postgres` (`PREPARE TRANSACTION`).
pub trait XaDatabase: BarrierDatabase {
    /// Begins the local transaction `xid` on a fresh connection.
    fn start<'a>(
        conn: &'a mut Self::Connection,
        xid: &'a Xid,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Ends and prepares it: durable, invisible, locks held.
    fn prepare<'a>(
        conn: &'a mut Self::Connection,
        xid: &'a Xid,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Rolls back a local transaction that was started but not prepared.
    fn abandon<'a>(
        conn: &'a mut Self::Connection,
        xid: &'a Xid,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Commits (`commit`) or rolls back a prepared transaction, from any session.
    fn finish<'a>(
        conn: &'a mut Self::Connection,
        xid: &'a Xid,
        commit: bool,
    ) -> impl Future<Output = Result<Finished, sqlx::Error>> + Send + 'a;

    /// The xids of the prepared transactions the database holds (MySQL: the
    /// whole server's; PostgreSQL: this database's).
    fn prepared(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<Vec<Xid>, sqlx::Error>> + Send + '_;

    /// Bounds how long the next statements of the open transaction on
    /// `conn` wait for a row lock (PostgreSQL waits forever by default;
    /// MySQL has `innodb_lock_wait_timeout`).
    fn bound_lock_wait(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_;
}

/// Runs one statement over the text protocol (XA statements cannot be
/// prepared), on either engine's connection.
macro_rules! exec {
    ($conn:expr, $sql:expr) => {{
        // A plain string has no arguments: sqlx sends it as a simple query.
        let sql: &str = &$sql;
        sqlx::Executor::execute(&mut *$conn, sql).await.map(drop)
    }};
}

/// The database's own code of an error (MySQL's error number as text,
/// PostgreSQL's SQLSTATE).
fn db_code(err: &sqlx::Error) -> Option<String> {
    let db = err.as_database_error()?;
    if let Some(mysql) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return Some(mysql.number().to_string());
    }
    db.code().map(|code| code.into_owned())
}

/// A finish whose error means "no such xid" becomes [`Finished::Unknown`].
fn finished(result: Result<(), sqlx::Error>, unknown_code: &str) -> Result<Finished, sqlx::Error> {
    match result {
        Ok(()) => Ok(Finished::Done),
        Err(err) if db_code(&err).as_deref() == Some(unknown_code) => Ok(Finished::Unknown),
        Err(err) => Err(err),
    }
}

/// MySQL's `XAER_NOTA` (unknown xid).
const MYSQL_XAER_NOTA: &str = "1397";
/// PostgreSQL's `undefined_object` ("prepared transaction … does not exist").
const PG_UNDEFINED_OBJECT: &str = "42704";

impl XaDatabase for sqlx::MySql {
    async fn start<'a>(conn: &'a mut sqlx::MySqlConnection, xid: &'a Xid) -> Result<(), sqlx::Error> {
        exec!(conn, format!("XA START '{xid}'"))
    }

    async fn prepare<'a>(conn: &'a mut sqlx::MySqlConnection, xid: &'a Xid) -> Result<(), sqlx::Error> {
        exec!(conn, format!("XA END '{xid}'"))?;
        exec!(conn, format!("XA PREPARE '{xid}'"))
    }

    async fn abandon<'a>(conn: &'a mut sqlx::MySqlConnection, xid: &'a Xid) -> Result<(), sqlx::Error> {
        // XA END fails if the transaction already ended; the rollback is what matters.
        let _ = exec!(conn, format!("XA END '{xid}'"));
        exec!(conn, format!("XA ROLLBACK '{xid}'"))
    }

    async fn finish<'a>(
        conn: &'a mut sqlx::MySqlConnection,
        xid: &'a Xid,
        commit: bool,
    ) -> Result<Finished, sqlx::Error> {
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        finished(exec!(conn, format!("XA {verb} '{xid}'")), MYSQL_XAER_NOTA)
    }

    async fn prepared(conn: &mut sqlx::MySqlConnection) -> Result<Vec<Xid>, sqlx::Error> {
        use sqlx::Row;
        let rows = sqlx::Executor::fetch_all(&mut *conn, "XA RECOVER").await?;
        let mut xids = Vec::with_capacity(rows.len());
        for row in rows {
            let gtrid_length: i64 = row.try_get("gtrid_length")?;
            let data: Vec<u8> = match row.try_get::<Vec<u8>, _>("data") {
                Ok(bytes) => bytes,
                Err(_) => row.try_get::<String, _>("data")?.into_bytes(),
            };
            let gtrid = &data[..usize::try_from(gtrid_length).unwrap_or(0).min(data.len())];
            xids.push(Xid(String::from_utf8_lossy(gtrid).into_owned()));
        }
        Ok(xids)
    }

    async fn bound_lock_wait(_conn: &mut sqlx::MySqlConnection) -> Result<(), sqlx::Error> {
        // innodb_lock_wait_timeout (50 s by default) already bounds it.
        Ok(())
    }
}

impl XaDatabase for sqlx::Postgres {
    async fn start<'a>(conn: &'a mut sqlx::PgConnection, _xid: &'a Xid) -> Result<(), sqlx::Error> {
        exec!(conn, "BEGIN")
    }

    async fn prepare<'a>(conn: &'a mut sqlx::PgConnection, xid: &'a Xid) -> Result<(), sqlx::Error> {
        exec!(conn, format!("PREPARE TRANSACTION '{xid}'"))
    }

    async fn abandon<'a>(conn: &'a mut sqlx::PgConnection, _xid: &'a Xid) -> Result<(), sqlx::Error> {
        exec!(conn, "ROLLBACK")
    }

    async fn finish<'a>(
        conn: &'a mut sqlx::PgConnection,
        xid: &'a Xid,
        commit: bool,
    ) -> Result<Finished, sqlx::Error> {
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        finished(exec!(conn, format!("{verb} PREPARED '{xid}'")), PG_UNDEFINED_OBJECT)
    }

    async fn prepared(conn: &mut sqlx::PgConnection) -> Result<Vec<Xid>, sqlx::Error> {
        let gids: Vec<String> =
            sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
                .fetch_all(conn)
                .await?;
        Ok(gids.into_iter().map(Xid).collect())
    }

    async fn bound_lock_wait(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        exec!(conn, "SET LOCAL lock_timeout = '10s'")
    }
}

/// A refused registration is a FAILURE (the global transaction is no
/// longer `prepared`); anything else is retried.
pub(crate) fn registration_error(err: ClientError) -> BranchError {
    match err {
        ClientError::Failure(reason) => BranchError::failure(format!("registerBranch refused: {reason}")),
        other => BranchError::retry(other),
    }
}

/// What the local transaction of an `action` call did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "Duplicate means the business code did not run"]
pub enum XaLocal<T> {
    /// The business SQL ran; the branch is registered and its local
    /// transaction prepared, waiting for phase 2.
    Prepared(T),
    /// This action already ran and was committed: nothing was done again.
    Duplicate,
}

/// What [`XaDb::recover`] did with one prepared transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Committed: its global transaction is `succeed` or `submitted`.
    Committed(Xid),
    /// Rolled back: its global transaction is `failed` or `aborting`.
    RolledBack(Xid),
    /// Left prepared, and why (undecided, unknown to the coordinator, not
    /// ours, or the coordinator could not be asked).
    Left(Xid, String),
}

/// A branch service's database, for its XA branches. Cheap to clone (the
/// pool is shared).
#[derive(Debug)]
pub struct XaDb<DB: XaDatabase> {
    /// Phase 2 and recovery run on it; each local transaction gets a
    /// connection of its own from its options (closed after `PREPARE`).
    pool: Pool<DB>,
    /// The barrier table; `None`: the engine's default (`dtm_barrier.barrier`).
    table: Option<BarrierTable>,
}

// By hand: a derive would ask `DB: Clone`, which the engines are not.
impl<DB: XaDatabase> Clone for XaDb<DB> {
    fn clone(&self) -> Self {
        XaDb { pool: self.pool.clone(), table: self.table.clone() }
    }
}

impl<DB: XaDatabase> XaDb<DB> {
    /// XA branches on `pool`'s database, barrier rows in the default table.
    pub fn new(pool: Pool<DB>) -> XaDb<DB> {
        XaDb { pool, table: None }
    }

    /// Uses `table` for the barrier rows.
    pub fn with_table(mut self, table: BarrierTable) -> XaDb<DB> {
        self.table = Some(table);
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    fn barrier(&self, gid: &Gid, branch_id: &BranchId) -> XaBarrier {
        XaBarrier::new(gid.clone(), branch_id.clone()).with_table(self.table.clone())
    }

    /// dtm's `XaLocalTransaction`: `action` runs [`XaDb::local_transaction`],
    /// `commit`/`rollback` run [`XaDb::phase_two`] (`None`).
    pub async fn handle<T>(
        &self,
        branch: &XaBranch,
        dtm: &DtmClient,
        busi: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, BranchError>,
    ) -> Result<Option<XaLocal<T>>, BranchError> {
        match branch.op {
            Op::Commit | Op::Rollback => self.phase_two(branch).await.map(|()| None),
            _ => self.local_transaction(branch, dtm, busi).await.map(Some),
        }
    }

    /// Runs `busi` in the local XA transaction of an `action` call,
    /// registers the branch at `dtm` (the coordinator the call names in
    /// `dtm`) and prepares. Errors roll the local transaction back:
    /// `busi`'s own, a refused registration (the global transaction is no
    /// longer `prepared`: FAILURE), or a rollback that came first (FAILURE).
    pub async fn local_transaction<T>(
        &self,
        branch: &XaBranch,
        dtm: &DtmClient,
        busi: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, BranchError>,
    ) -> Result<XaLocal<T>, BranchError> {
        if branch.op != Op::Action {
            return Err(BranchError::InvalidArgument(format!(
                "an XA local transaction has op action, not {}",
                branch.op
            )));
        }
        let phase2_url = branch
            .phase2_url
            .as_deref()
            .ok_or_else(|| BranchError::InvalidArgument(format!("{PHASE2_URL} is missing")))?;
        let registration = RegisterBranch::xa(branch.gid.clone(), branch.branch_id.clone(), phase2_url);
        self.prepare_local(&branch.gid, &branch.branch_id, busi, async |_| {
            dtm.register_branch(&registration).await.map_err(registration_error)
        })
        .await
    }

    /// The local XA transaction `<gid>-<branch_id>`, shared by XA branches
    /// and workflow XA steps (`crate::workflow`): on a connection of its
    /// own, the barrier row, `busi`, then `register` (told what `busi`
    /// returned; it tells the coordinator about the transaction), then
    /// prepare and close the session. Any error rolls the local
    /// transaction back.
    pub(crate) async fn prepare_local<T>(
        &self,
        gid: &Gid,
        branch_id: &BranchId,
        busi: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, BranchError>,
        register: impl AsyncFnOnce(&T) -> Result<(), BranchError>,
    ) -> Result<XaLocal<T>, BranchError> {
        let xid = Xid::new(gid, branch_id)?;
        let mut conn = self.pool.connect_options().connect().await?;
        DB::start(&mut conn, &xid).await?;
        let ran = async {
            match self.barrier(gid, branch_id).action::<DB>(&mut conn).await? {
                XaAction::Fresh => {}
                XaAction::Duplicate => return Ok(None),
                XaAction::RolledBack => {
                    return Err(BranchError::failure(format!(
                        "branch {branch_id} of {gid} was rolled back before its local transaction ran"
                    )));
                }
            }
            let value = busi(&mut conn).await?;
            register(&value).await?;
            Ok(Some(value))
        }
        .await;
        let outcome = match ran {
            Ok(Some(value)) => match DB::prepare(&mut conn, &xid).await {
                Ok(()) => Ok(XaLocal::Prepared(value)),
                Err(err) => Err(err.into()),
            },
            Ok(None) => {
                DB::abandon(&mut conn, &xid).await.map(|()| XaLocal::Duplicate).map_err(BranchError::from)
            }
            Err(err) => {
                if let Err(rollback) = DB::abandon(&mut conn, &xid).await {
                    tracing::warn!(%xid, error = %rollback, "rolling back an XA local transaction failed; closing its session does");
                }
                Err(err)
            }
        };
        // Closing the session detaches a prepared transaction from it (and
        // rolls back one that is not prepared): from now on any session
        // may commit or roll it back.
        if let Err(err) = conn.close().await {
            tracing::warn!(%xid, error = %err, "closing the XA session failed");
        }
        outcome
    }

    /// Phase 2 of one branch: `commit` or `rollback` of its prepared local
    /// transaction, idempotent (see the module docs).
    pub async fn phase_two(&self, branch: &XaBranch) -> Result<(), BranchError> {
        let commit = match branch.op {
            Op::Commit => true,
            Op::Rollback => false,
            other => {
                return Err(BranchError::InvalidArgument(format!(
                    "XA phase 2 is commit or rollback, not {other}"
                )));
            }
        };
        self.finish(&branch.gid, &branch.branch_id, commit).await
    }

    /// Commits (`commit`) or rolls back the prepared transaction of branch
    /// `branch_id` of `gid`, idempotent; also a workflow XA step's phase 2.
    pub(crate) async fn finish(
        &self,
        gid: &Gid,
        branch_id: &BranchId,
        commit: bool,
    ) -> Result<(), BranchError> {
        let xid = Xid::new(gid, branch_id)?;
        let mut conn = self.pool.acquire().await?;
        if DB::finish(&mut conn, &xid, commit).await? == Finished::Unknown
            && DB::prepared(&mut conn).await?.contains(&xid)
        {
            // MariaDB: prepared, but still attached to the session that
            // prepared it (it has not closed yet). Not done: try again.
            return Err(BranchError::retry(format!("XA transaction {xid} is still attached to its session")));
        }
        if !commit {
            let mut tx = conn.begin().await?;
            DB::bound_lock_wait(&mut tx).await?;
            self.barrier(gid, branch_id).rolled_back::<DB>(&mut tx).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// The prepared transactions the database holds (see [`XaDatabase::prepared`]).
    pub async fn prepared_xids(&self) -> Result<Vec<Xid>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        DB::prepared(&mut conn).await
    }

    /// One round of recovery: every prepared transaction whose global
    /// transaction is decided is committed or rolled back (the table in the
    /// module docs). `dtm` must be an HTTP client (dtm has no gRPC query).
    pub async fn recover(&self, dtm: &DtmClient) -> Result<Vec<Recovery>, BranchError> {
        let mut done = Vec::new();
        for xid in self.prepared_xids().await? {
            let Some((gid, branch_id)) = xid.parts() else {
                done.push(Recovery::Left(xid, "not a <gid>-<branch_id> xid".into()));
                continue;
            };
            let status = match dtm.query(&gid).await {
                Ok(result) => result.transaction.map(|t| t.status),
                Err(err) => {
                    done.push(Recovery::Left(xid, format!("cannot ask the coordinator: {err}")));
                    continue;
                }
            };
            let commit = match status {
                Some(TransStatus::Succeed | TransStatus::Submitted) => true,
                Some(TransStatus::Failed | TransStatus::Aborting) => false,
                Some(TransStatus::Prepared) => {
                    done.push(Recovery::Left(xid, "its global transaction is still prepared".into()));
                    continue;
                }
                None => {
                    done.push(Recovery::Left(xid, "unknown to the coordinator".into()));
                    continue;
                }
            };
            match self.finish(&gid, &branch_id, commit).await {
                Ok(()) if commit => done.push(Recovery::Committed(xid)),
                Ok(()) => done.push(Recovery::RolledBack(xid)),
                Err(err) => done.push(Recovery::Left(xid, err.to_string())),
            }
        }
        Ok(done)
    }

    /// Runs [`XaDb::recover`] every `every` (first round at once), logging
    /// what it finished; stops when the handle is aborted.
    pub fn spawn_recovery(self, dtm: DtmClient, every: Duration) -> tokio::task::JoinHandle<()>
    where
        DB: 'static,
    {
        tokio::spawn(async move {
            loop {
                match self.recover(&dtm).await {
                    Ok(round) => {
                        for recovery in round {
                            match recovery {
                                Recovery::Committed(xid) => tracing::info!(%xid, "XA recovery committed"),
                                Recovery::RolledBack(xid) => tracing::info!(%xid, "XA recovery rolled back"),
                                Recovery::Left(xid, why) => {
                                    tracing::debug!(%xid, %why, "XA recovery left it prepared")
                                }
                            }
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "XA recovery round failed"),
                }
                tokio::time::sleep(every).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xids_are_dtms_and_read_back() {
        let gid = Gid::new("g-1-x").unwrap();
        let xid = Xid::new(&gid, &BranchId::new("02").unwrap()).unwrap();
        assert_eq!(xid.as_str(), "g-1-x-02");
        let (g, b) = xid.parts().unwrap();
        assert_eq!((g.as_str(), b.as_str()), ("g-1-x", "02"));
        assert!(Xid("nodash".into()).parts().is_none());
        let long = Gid::new("a".repeat(62)).unwrap();
        assert!(matches!(
            Xid::new(&long, &BranchId::new("01").unwrap()),
            Err(BranchError::InvalidArgument(_))
        ));
        let quote = Gid::new("a'b").unwrap();
        assert!(matches!(
            Xid::new(&quote, &BranchId::new("01").unwrap()),
            Err(BranchError::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_branch_reads_its_phase2_url() {
        let branch = XaBranch::from_query(
            "dtm=http%3A%2F%2Fd%2Fapi%2Fdtmsvr&gid=g1&trans_type=xa&branch_id=01&op=action&phase2_url=http%3A%2F%2Fb%2Fxa",
        )
        .unwrap();
        assert_eq!(branch.phase2_url.as_deref(), Some("http://b/xa"));
        assert_eq!((branch.gid.as_str(), branch.branch_id.as_str(), branch.op), ("g1", "01", Op::Action));
        let commit = XaBranch::from_query("gid=g1&trans_type=xa&branch_id=01&op=commit").unwrap();
        assert_eq!((commit.op, commit.phase2_url), (Op::Commit, None));
        assert_eq!(XaBranch::from_query("gid=g1&op=commit"), Err(ProtocolError::Missing("branch_id")));

        let mut metadata = tonic::metadata::MetadataMap::new();
        for (key, value) in [
            ("dtm-gid", "g2"),
            ("dtm-trans_type", "xa"),
            ("dtm-branch_id", "02"),
            ("dtm-op", "action"),
            ("dtm-phase2_url", "127.0.0.1:9/pb.busi/Xa"),
        ] {
            metadata.insert(key, value.parse().unwrap());
        }
        let grpc = XaBranch::from_grpc(&metadata).unwrap();
        assert_eq!((grpc.gid.as_str(), grpc.branch_id.as_str(), grpc.op), ("g2", "02", Op::Action));
        assert_eq!(grpc.phase2_url.as_deref(), Some("127.0.0.1:9/pb.busi/Xa"));
    }

    #[test]
    fn the_request_is_a_bare_xa() {
        let dtm = DtmClient::new("http://127.0.0.1:1/api/dtmsvr", discovery::ChannelCache::new()).unwrap();
        let xa = Xa::new(dtm, Gid::new("x1").unwrap()).timeout_to_fail(Duration::from_secs(30));
        assert_eq!(
            xa.request().to_http_json().unwrap(),
            r#"{"gid":"x1","trans_type":"xa","timeout_to_fail":30,"concurrent":false,"protocol":""}"#
        );
    }
}
