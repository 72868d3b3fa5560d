//! dtm's subtransaction barrier for sqlx.
//!
//! # The problem
//!
//! A coordinator such as dtm drives a saga by calling each service's branch
//! ops (`action`, `compensate`, …) over the network. Networks lose answers,
//! so the coordinator retries until it hears one, and a branch must expect
//! three kinds of misbehaving calls:
//!
//! * **duplicate delivery** — the same op arrives twice (the first answer was
//!   lost, or two coordinator instances raced). Deducting stock twice is a bug.
//! * **null compensation** — a `compensate` arrives for an `action` that never
//!   committed (it failed, or its request is still stuck in the network).
//!   Adding back stock that was never deducted is a bug.
//! * **hanging** — the stuck `action` finally arrives *after* its
//!   `compensate`. If it runs now, nothing will ever undo it.
//!
//! Writing the checks for these by hand in every handler is error-prone.
//! dtm's answer, the *subtransaction barrier*, handles all three with one
//! table and two inserts, in the branch's own local transaction.
//!
//! # The table
//!
//! `barrier(trans_type, gid, branch_id, op, barrier_id, reason, …)` with a
//! UNIQUE key on `(gid, branch_id, op, barrier_id)`; see
//! `sql/<engine>/barrier.sql` and [`schema`]. A row means "this op of this
//! branch has happened"; `reason` records which op's call inserted it.
//!
//! # The algorithm ([`BranchBarrier::call`])
//!
//! In ONE local transaction, before the business code:
//!
//! 1. If the op is a compensation (`compensate`, `cancel`, `rollback`),
//!    insert-ignore the row of the op it undoes (`action`, `try`), with reason
//!    = the compensation. Inserted (1 row) ⇒ the forward op never committed.
//! 2. Insert-ignore the row of the op itself. Ignored (0 rows) ⇒ it already
//!    happened — or, for a forward op, the compensation of step 1 got there first.
//! 3. Decide:
//!    * compensation whose step 1 inserted → **null compensation**: skip;
//!    * step 2 ignored → **duplicate** (or **hanging**, if the existing row's
//!      reason is a compensation): skip;
//!    * otherwise run the business code in the same transaction.
//! 4. Commit. If the business code fails, roll back — barrier rows too — so a
//!    failed action leaves no trace and its compensation becomes a null one.
//!
//! Concurrency comes free from the unique key: a second transaction inserting
//! the same key waits until the first commits (then sees 0 rows) or rolls
//! back (then inserts). Skipped calls answer **success**: the op's effect is
//! exactly as the coordinator wants it.
//!
//! The article's two walkthroughs, in rows. A quick order that succeeds
//! leaves `(gid, 01, action, 01, action)` from the order service and
//! `(gid, 02, action, 01, action)` from the stock service. With too little
//! stock, the stock action's failure rolls back its own barrier row, and the
//! saga compensates both branches: the order's compensation finds its action
//! row and cancels the order (`(gid, 01, compensate, 01, compensate)`); the
//! stock's compensation inserts `(gid, 02, action, 01, compensate)` — null
//! compensation, nothing to add back — and `(gid, 02, compensate, 01, compensate)`.
//! Four rows, and the stock untouched.
//!
//! # An example handler
//!
//! ```no_run
//! use barrier::{BarrierTable, BranchBarrier, BranchError};
//!
//! /// stock-srv's `deduct`, called by the coordinator with dtm's gRPC metadata.
//! async fn deduct(
//!     pool: &sqlx::MySqlPool,
//!     metadata: &tonic::metadata::MetadataMap,
//!     goods_id: i64,
//!     num: i32,
//! ) -> Result<(), tonic::Status> {
//!     // Missing metadata → ProtocolError → InvalidArgument.
//!     let mut barrier = BranchBarrier::from_grpc(metadata).map_err(BranchError::from)?;
//!     let outcome = barrier
//!         .call_with_pool(pool, async |conn| {
//!             let done = sqlx::query("update stock set num = num - ? where goods_id = ? and num >= ?")
//!                 .bind(num)
//!                 .bind(goods_id)
//!                 .bind(num)
//!                 .execute(&mut *conn) // the barrier's own transaction
//!                 .await?; // a database error → BranchError::Retry → the coordinator retries
//!             if done.rows_affected() == 0 {
//!                 // The only way to say "roll the saga back".
//!                 return Err(BranchError::failure("insufficient stock"));
//!             }
//!             Ok(())
//!         })
//!         .await?;
//!     tracing::debug!(?outcome, "deduct done"); // Ran(()) or Skipped(why): both are success
//!     Ok(())
//! }
//! ```
//!
//! # Layout
//!
//! The words of the protocol — `Gid`, `BranchId`, `TransType`, `Op`, the
//! `dtm-*` metadata and query parameters a call carries, `BranchResult` —
//! are the `dtm_protocol` crate's; this one adds what a branch does with them:
//!
//! * [`result`] — [`BranchError`]: what a handler returns, answered over gRPC and HTTP.
//! * [`barrier`](mod@barrier) — [`BranchBarrier`], [`Outcome`], [`Skipped`].
//! * [`msg`] — the 2-phase message's local transaction and QueryPrepared check-back.
//! * [`xa`] — the two rows an XA branch writes so that a late local
//!   transaction cannot prepare after its rollback (the XA SQL itself is
//!   `dtm-client`'s `xa` module).
//! * [`database`] — [`BarrierDatabase`]: what differs between MySQL, PostgreSQL and SQLite.
//! * [`table`] — [`BarrierTable`], the validated table name.
//! * [`schema`] — the barrier table's DDL, the functions that apply DDL
//!   files, and the migration to exact (binary) gid columns, which the
//!   services use for their own tables too.

pub mod barrier;
pub mod database;
pub mod msg;
pub mod result;
pub mod schema;
pub mod table;
pub mod xa;

pub use barrier::{BranchBarrier, Outcome, Skipped};
pub use database::BarrierDatabase;
pub use msg::{MsgBarrier, MsgLocal};
pub use result::BranchError;
pub use table::BarrierTable;
pub use xa::{XaAction, XaBarrier};
