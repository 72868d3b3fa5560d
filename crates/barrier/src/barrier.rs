//! [`BranchBarrier`]: dtm's subtransaction barrier around one local transaction.
//!
//! See the crate docs for the problem and the algorithm; this module is the
//! code, commented line by line against dtm's `BranchBarrier.Call`.

use sqlx::{Pool, Transaction};
use tonic::metadata::MetadataMap;
use tracing::Instrument;

use dtm_protocol::{BranchCall, BranchId, Gid, Op, ProtocolError, Received, TransType};

use crate::database::sealed::BarrierRow;
use crate::{BarrierDatabase, BarrierTable, BranchError};

/// Why the barrier did not run the business code. In every case the barrier
/// committed its own rows and the branch answers **success**: the coordinator
/// must not call again, and must not roll anything back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skipped {
    /// This (gid, branch, op) already ran and committed: a retry, or the same
    /// request delivered twice. For op `msg` it is dtm's `ErrDuplicated`: the
    /// message's local transaction already ran, or `QueryPrepared` already
    /// decided to roll the message back.
    Duplicate,
    /// A compensation whose forward op never committed (it failed, timed out
    /// before reaching the database, or has not arrived yet). There is nothing
    /// to undo. The barrier has recorded the forward op as done, so that a
    /// late forward op is recognised as [`Skipped::Hanging`].
    NullCompensation,
    /// A forward op arriving after its compensation already ran. Running it
    /// now would leave an effect that nothing will ever undo ("hanging").
    Hanging,
}

impl Skipped {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Skipped::Duplicate => "duplicate",
            Skipped::NullCompensation => "null_compensation",
            Skipped::Hanging => "hanging",
        }
    }
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`BranchBarrier::call`] did. Both variants mean the branch succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "the outcome says whether the business code ran"]
pub enum Outcome<T> {
    /// The business code ran and its transaction committed, with the barrier rows.
    Ran(T),
    /// The business code did not run; the barrier rows committed alone.
    Skipped(Skipped),
}

impl<T> Outcome<T> {
    /// The business code's value, if it ran.
    pub fn ran(self) -> Option<T> {
        match self {
            Outcome::Ran(value) => Some(value),
            Outcome::Skipped(_) => None,
        }
    }

    /// Why the business code was skipped, if it was.
    pub fn skipped(&self) -> Option<Skipped> {
        match self {
            Outcome::Ran(_) => None,
            Outcome::Skipped(why) => Some(*why),
        }
    }
}

/// The barrier for one branch call: the call's four dtm values, plus a counter.
///
/// Build one per incoming request ([`BranchBarrier::from_grpc`],
/// [`BranchBarrier::from_query`]) and run the branch's local transaction
/// through [`BranchBarrier::call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchBarrier {
    /// Written to the `trans_type` column (informational).
    trans_type: TransType,
    /// The global transaction this call belongs to.
    gid: Gid,
    /// Which branch of the global transaction.
    branch_id: BranchId,
    /// What the coordinator asks for (`action`, `compensate`, …).
    op: Op,
    /// How many guarded transactions this value has started. dtm formats
    /// the next one as `barrier_id` ("01", "02", …), so a handler may run
    /// several guarded transactions per call, and a retry of the same request
    /// (a fresh value) finds the same ids again.
    calls: u32,
    /// Where the rows go; `None` means the engine's default
    /// ([`BarrierDatabase::DEFAULT_TABLE`]).
    table: Option<BarrierTable>,
}

impl BranchBarrier {
    /// A barrier from already-typed values (tests, or callers that parsed them).
    pub fn new(trans_type: TransType, gid: Gid, branch_id: BranchId, op: Op) -> BranchBarrier {
        BranchBarrier { trans_type, gid, branch_id, op, calls: 0, table: None }
    }

    /// Uses `table` instead of the engine's default barrier table.
    pub fn with_table(mut self, table: BarrierTable) -> BranchBarrier {
        self.table = Some(table);
        self
    }

    /// Reads `dtm-gid`, `dtm-trans_type`, `dtm-branch_id` and `dtm-op` from
    /// the metadata dtm attaches to every gRPC branch call (dtm's
    /// `BarrierFromGrpc`). A missing or malformed value is the caller's
    /// mistake: [`ProtocolError`], which becomes `InvalidArgument`.
    pub fn from_grpc(metadata: &MetadataMap) -> Result<BranchBarrier, ProtocolError> {
        BranchBarrier::from_received(&Received::from_grpc(metadata))
    }

    /// Reads `gid`, `trans_type`, `branch_id` and `op` from a raw URL query
    /// string such as `gid=abc&trans_type=saga&branch_id=01&op=action`
    /// (dtm's `BarrierFromQuery`). Percent-encoding is decoded; the first
    /// occurrence of a repeated parameter wins, as with Go's `Query().Get`.
    pub fn from_query(query: &str) -> Result<BranchBarrier, ProtocolError> {
        BranchBarrier::from_received(&Received::from_query(query))
    }

    /// Like [`BranchBarrier::from_query`], from already-decoded pairs (for
    /// example axum's `Query<Vec<(String, String)>>`).
    pub fn from_query_pairs<I, K, V>(pairs: I) -> Result<BranchBarrier, ProtocolError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        BranchBarrier::from_received(&Received::from_query_pairs(pairs))
    }

    /// The barrier of a call as the branch received it: all four values
    /// must be there and valid (absent and empty are both "missing").
    pub fn from_received(received: &Received) -> Result<BranchBarrier, ProtocolError> {
        let BranchCall { gid, trans_type, branch_id, op, dtm: _ } = received.call()?;
        Ok(BranchBarrier::new(trans_type, gid, branch_id, op))
    }

    /// The global transaction id.
    pub fn gid(&self) -> &Gid {
        &self.gid
    }

    /// The kind of global transaction.
    pub fn trans_type(&self) -> TransType {
        self.trans_type
    }

    /// The branch id.
    pub fn branch_id(&self) -> &BranchId {
        &self.branch_id
    }

    /// The op the coordinator asked for.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The configured table, if not the engine's default.
    pub fn table(&self) -> Option<&BarrierTable> {
        self.table.as_ref()
    }

    /// The table this barrier writes to on engine `DB`.
    pub(crate) fn table_for<DB: BarrierDatabase>(&self) -> BarrierTable {
        self.table.clone().unwrap_or_else(|| BarrierTable::trusted(DB::DEFAULT_TABLE))
    }

    /// Runs `busi` inside `tx`, guarded by the barrier, and ends `tx`.
    ///
    /// The transaction is taken by value, so the business code can only
    /// reach the database through the connection it is handed — the very
    /// connection that holds the barrier rows. That is the whole trick: the
    /// barrier rows and the business effect commit together or not at all.
    ///
    /// * `Ok(Outcome::Ran(value))`: business ran; everything committed.
    /// * `Ok(Outcome::Skipped(why))`: business did not run; the barrier rows
    ///   committed. Answer success.
    /// * `Err(error)`: `busi` failed (its error is returned unchanged) or the
    ///   database did (as [`BranchError::Retry`]). Everything rolled back,
    ///   barrier rows included, so the op is as if it never arrived.
    ///
    /// Begin `tx` just for this call and do all of the branch's work inside
    /// `busi`: anything run on `tx` before the call would commit even when
    /// the barrier skips the business code.
    pub async fn call<DB, T>(
        &mut self,
        mut tx: Transaction<'_, DB>,
        busi: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, BranchError>,
    ) -> Result<Outcome<T>, BranchError>
    where
        DB: BarrierDatabase,
    {
        // Step 1 of dtm's algorithm: a new barrier id for every guarded
        // transaction, even one that fails.
        self.calls += 1;
        let barrier_id = format!("{:02}", self.calls);

        // A span per step, so a trace shows where a branch spent its time:
        // the barrier's inserts, the business SQL (the caller's spans), the
        // commit. tracing only: exporting them is the process's choice.
        let barrier_span = tracing::info_span!(
            "barrier",
            otel.name = "barrier insert",
            %barrier_id,
            op = %self.op,
            decision = tracing::field::Empty,
        );
        let inserted =
            self.insert_barrier_rows::<DB>(&mut tx, &barrier_id).instrument(barrier_span.clone()).await;
        let decision = match inserted {
            Ok(decision) => decision,
            Err(error) => {
                rollback(tx).await;
                return Err(error.into());
            }
        };
        if let Some(why) = decision {
            barrier_span.record("decision", why.to_string());
            tracing::info!(
                gid = %self.gid, branch_id = %self.branch_id, op = %self.op, %barrier_id, skipped = %why,
                "barrier skipped the business code"
            );
            tx.commit().instrument(commit_span()).await?;
            return Ok(Outcome::Skipped(why));
        }
        barrier_span.record("decision", "run");

        // Step 8: the business code, on the same connection and transaction.
        match busi(&mut *tx).await {
            Ok(value) => {
                tx.commit().instrument(commit_span()).await?;
                Ok(Outcome::Ran(value))
            }
            Err(error) => {
                // Rolling back also removes this call's barrier rows: a failed
                // action leaves no trace, so its compensation will find no
                // action row and be a null compensation.
                rollback(tx).await;
                Err(error)
            }
        }
    }

    /// Like [`BranchBarrier::call`], beginning the transaction on `pool`
    /// itself (dtm's `CallWithDB`).
    pub async fn call_with_pool<DB, T>(
        &mut self,
        pool: &Pool<DB>,
        busi: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, BranchError>,
    ) -> Result<Outcome<T>, BranchError>
    where
        DB: BarrierDatabase,
    {
        let tx = pool.begin().await?;
        self.call(tx, busi).await
    }

    /// Steps 2 to 7 of dtm's algorithm: insert the barrier rows and decide
    /// whether the business code may run (`None`) or must be skipped.
    async fn insert_barrier_rows<DB: BarrierDatabase>(
        &self,
        conn: &mut DB::Connection,
        barrier_id: &str,
    ) -> Result<Option<Skipped>, sqlx::Error> {
        let table = self.table_for::<DB>();
        let insert = DB::insert_ignore_sql(&table);
        let row = |op: Op| BarrierRow {
            trans_type: self.trans_type.as_str(),
            gid: self.gid.as_str(),
            branch_id: self.branch_id.as_str(),
            op: op.as_str(),
            barrier_id,
            // The row remembers which call inserted it.
            reason: self.op.as_str(),
        };

        // Steps 2-3: a compensation first inserts the row of the op it
        // undoes. 1 affected row means that forward op never committed.
        let origin_affected = match self.op.origin() {
            Some(origin) => DB::insert_row(conn, &insert, &row(origin)).await?,
            None => 0,
        };
        // Step 4: the row of this op itself. 0 affected rows means it is
        // already there. If another transaction is inserting the same key
        // right now, this statement waits for it to commit or roll back.
        let current_affected = DB::insert_row(conn, &insert, &row(self.op)).await?;
        tracing::debug!(
            gid = %self.gid, branch_id = %self.branch_id, op = %self.op, barrier_id,
            origin_affected, current_affected, "barrier rows inserted"
        );

        // Step 5: a 2-phase message's local transaction found its row taken
        // (it already ran, or QueryPrepared inserted it to force a rollback).
        if self.op == Op::Msg && current_affected == 0 {
            return Ok(Some(Skipped::Duplicate));
        }
        // Step 6: null compensation.
        if self.op.is_compensation() && origin_affected > 0 {
            return Ok(Some(Skipped::NullCompensation));
        }
        // Step 7: idempotency and anti-hanging.
        if current_affected == 0 {
            if self.op.is_compensation() {
                return Ok(Some(Skipped::Duplicate));
            }
            // A forward op's row exists. Who wrote it? Only on this skip path
            // do we pay for a query to tell a retry from a hanging call.
            // (The row is committed: the insert above waited for its writer.
            // A fresh transaction sees it; one that already read under
            // MySQL's REPEATABLE READ snapshot might not, and then reports
            // Duplicate — still a skip, only the label differs.)
            let select = DB::select_reason_sql(&table);
            let key = [self.gid.as_str(), self.branch_id.as_str(), self.op.as_str(), barrier_id];
            let reason = DB::select_reason(conn, &select, key).await?;
            let by_compensation =
                reason.as_deref().and_then(|r| r.parse::<Op>().ok()).is_some_and(Op::is_compensation);
            return Ok(Some(if by_compensation { Skipped::Hanging } else { Skipped::Duplicate }));
        }
        Ok(None)
    }

    /// dtm's `QueryPrepared`: the check-back handler of a 2-phase message.
    ///
    /// dtm calls it (branch `00`, op `msg`) when it holds a prepared message
    /// whose sender never submitted it. The handler must answer whether the
    /// sender's local transaction committed. It inserts the row that local
    /// transaction would have inserted — `(gid, 00, msg, 01)` — with reason
    /// `rollback`, then reads the row's reason:
    ///
    /// * reason `msg`: the local transaction committed → `Ok(())`; dtm submits.
    /// * reason `rollback`: it did not, and now never can (its own insert
    ///   will find the row taken) → [`BranchError::Failure`]; dtm drops the message.
    ///
    /// If the local transaction is still running, the insert waits for it.
    /// Uses only `gid` and `trans_type` of `self`. Runs outside any
    /// transaction, like dtm.
    pub async fn query_prepared<DB: BarrierDatabase>(&self, pool: &Pool<DB>) -> Result<(), BranchError> {
        const BRANCH: &str = "00";
        const BARRIER_ID: &str = "01";
        let table = self.table_for::<DB>();
        let mut conn = pool.acquire().await?;
        let row = BarrierRow {
            trans_type: self.trans_type.as_str(),
            gid: self.gid.as_str(),
            branch_id: BRANCH,
            op: Op::Msg.as_str(),
            barrier_id: BARRIER_ID,
            reason: Op::Rollback.as_str(),
        };
        DB::insert_row(&mut conn, &DB::insert_ignore_sql(&table), &row).await?;
        let key = [self.gid.as_str(), BRANCH, Op::Msg.as_str(), BARRIER_ID];
        let reason = DB::select_reason(&mut conn, &DB::select_reason_sql(&table), key).await?;
        if reason.as_deref() == Some(Op::Rollback.as_str()) {
            return Err(BranchError::failure(format!(
                "the local transaction of message {} did not commit; it is rolled back",
                self.gid
            )));
        }
        Ok(())
    }
}

/// Rolls back, logging (not returning) a failure: the caller already has the
/// error that matters, and a transaction that cannot roll back is rolled
/// back by the server when the connection closes anyway.
/// The span of the local transaction's commit (barrier rows and business
/// effect together).
fn commit_span() -> tracing::Span {
    tracing::info_span!("commit", otel.name = "barrier commit")
}

async fn rollback<DB: sqlx::Database>(tx: Transaction<'_, DB>) {
    let span = tracing::info_span!("rollback", otel.name = "barrier rollback");
    if let Err(error) = tx.rollback().instrument(span).await {
        tracing::warn!(%error, "rollback of a barrier transaction failed");
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn metadata(pairs: &[(&'static str, &'static str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (key, value) in pairs {
            map.insert(*key, MetadataValue::from_static(value));
        }
        map
    }

    const FULL: [(&str, &str); 4] =
        [("dtm-gid", "g1"), ("dtm-trans_type", "saga"), ("dtm-branch_id", "01"), ("dtm-op", "compensate")];

    #[test]
    fn reads_dtm_grpc_metadata() {
        let barrier = BranchBarrier::from_grpc(&metadata(&FULL)).unwrap();
        assert_eq!(barrier.gid().as_str(), "g1");
        assert_eq!(barrier.trans_type(), TransType::Saga);
        assert_eq!(barrier.branch_id().as_str(), "01");
        assert_eq!(barrier.op(), Op::Compensate);
        assert_eq!(barrier.table(), None);
    }

    #[test]
    fn missing_grpc_metadata_names_the_field() {
        for (index, field) in ["gid", "trans_type", "branch_id", "op"].into_iter().enumerate() {
            let mut pairs = FULL.to_vec();
            pairs.remove(index);
            assert_eq!(BranchBarrier::from_grpc(&metadata(&pairs)), Err(ProtocolError::Missing(field)));
        }
        let mut empty_gid = FULL.to_vec();
        empty_gid[0] = ("dtm-gid", "");
        assert_eq!(BranchBarrier::from_grpc(&metadata(&empty_gid)), Err(ProtocolError::Missing("gid")));
    }

    #[test]
    fn malformed_grpc_metadata_names_the_field() {
        let mut bad_op = FULL.to_vec();
        bad_op[3] = ("dtm-op", "drop");
        assert!(matches!(
            BranchBarrier::from_grpc(&metadata(&bad_op)),
            Err(ProtocolError::Invalid { field: "op", .. })
        ));
        let mut bad_type = FULL.to_vec();
        bad_type[1] = ("dtm-trans_type", "sagaa");
        assert!(matches!(
            BranchBarrier::from_grpc(&metadata(&bad_type)),
            Err(ProtocolError::Invalid { field: "trans_type", .. })
        ));
        let mut bad_branch = FULL.to_vec();
        bad_branch[2] = ("dtm-branch_id", "01;drop");
        assert!(matches!(
            BranchBarrier::from_grpc(&metadata(&bad_branch)),
            Err(ProtocolError::Invalid { field: "branch_id", .. })
        ));
        // Non-ASCII bytes are legal in gRPC metadata but not in a gid.
        let mut map = metadata(&FULL);
        map.insert("dtm-gid", MetadataValue::try_from(&b"g\xff"[..]).unwrap());
        assert!(matches!(BranchBarrier::from_grpc(&map), Err(ProtocolError::Invalid { field: "gid", .. })));
    }

    #[test]
    fn reads_http_query_parameters() {
        let barrier =
            BranchBarrier::from_query("dtm=x&gid=g%2F1&trans_type=msg&branch_id=00&op=msg&gid=ignored")
                .unwrap();
        assert_eq!(barrier.gid().as_str(), "g/1", "percent-decoded, first occurrence wins");
        // A space is no gid (it could not travel as gRPC metadata): refused, not trimmed.
        assert!(matches!(
            BranchBarrier::from_query("gid=g%201&trans_type=msg&branch_id=00&op=msg"),
            Err(ProtocolError::Invalid { field: "gid", .. })
        ));
        assert_eq!(barrier.trans_type(), TransType::Msg);
        assert_eq!(barrier.branch_id().as_str(), "00");
        assert_eq!(barrier.op(), Op::Msg);
        let pairs = [("op", "action"), ("branch_id", "02"), ("trans_type", "saga"), ("gid", "g2")];
        let barrier = BranchBarrier::from_query_pairs(pairs).unwrap();
        assert_eq!((barrier.gid().as_str(), barrier.op()), ("g2", Op::Action));
    }

    #[test]
    fn bad_http_query_is_a_protocol_error_and_a_400() {
        assert_eq!(BranchBarrier::from_query(""), Err(ProtocolError::Missing("gid")));
        assert_eq!(
            BranchBarrier::from_query("gid=g&trans_type=saga&branch_id=01"),
            Err(ProtocolError::Missing("op"))
        );
        assert_eq!(
            BranchBarrier::from_query("gid=g&trans_type=saga&op=action&branch_id="),
            Err(ProtocolError::Missing("branch_id"))
        );
        let error =
            BranchBarrier::from_query("gid=a%3Bb&trans_type=saga&branch_id=01&op=action").unwrap_err();
        assert!(matches!(error, ProtocolError::Invalid { field: "gid", .. }), "{error:?}");
        let (status, _) = BranchError::from(error.clone()).into_http();
        assert_eq!(status, http::StatusCode::BAD_REQUEST);
        assert_eq!(BranchError::from(error).into_status().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn default_table_depends_on_the_engine() {
        let barrier = BranchBarrier::from_query("gid=g&trans_type=saga&branch_id=01&op=action").unwrap();
        assert_eq!(barrier.table_for::<sqlx::MySql>().as_str(), "dtm_barrier.barrier");
        assert_eq!(barrier.table_for::<sqlx::Postgres>().as_str(), "dtm_barrier.barrier");
        assert_eq!(barrier.table_for::<sqlx::Sqlite>().as_str(), "barrier");
        let custom = barrier.with_table(BarrierTable::new("b2").unwrap());
        assert_eq!(custom.table_for::<sqlx::MySql>().as_str(), "b2");
    }
}
