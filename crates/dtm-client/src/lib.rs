//! A client of dtm's coordinator API — the Rust counterpart of dtm's Go
//! `dtmgrpc` and `dtmcli` packages — usable against our coordinator or a
//! real dtm server.
//!
//! How the parts fit:
//!
//! * [`Saga`] builds a saga: steps (action URL, compensation URL, payload)
//!   and options ([`TransOptions`]: `wait_result`, timeouts, retry limits,
//!   branch headers, concurrency with branch orders);
//! * [`TransRequest`] is what any transaction type sends to dtm, with the
//!   two encodings dtm accepts ([`TransRequest::to_grpc`],
//!   [`TransRequest::to_http_json`]);
//! * [`DtmClient`] talks to dtm over gRPC ([`GrpcDtm`], `host:port` or
//!   `etcd://…/dtmservice` resolved through [`discovery`]) or HTTP
//!   ([`HttpDtm`], `http://host:36789/api/dtmsvr`): `new_gid`, `submit`,
//!   `prepare`, `abort`, `registerBranch`, message topics (`subscribe`,
//!   `unsubscribe`, `delete_topic`), and over HTTP `query`, `query_kv`,
//!   `scan_kv` ([`kv`]);
//! * [`ClientError`] sorts every outcome into what a caller acts on:
//!   `Failure` (rolled back → HTTP 409), `Unavailable` (→ 503), ….
//!
//! * [`Tcc`] runs a TCC global transaction: `prepare`, the try calls the
//!   application makes itself ([`Tcc::call_branch`] over gRPC,
//!   [`Tcc::call_branch_json`] over HTTP, each after a `registerBranch`),
//!   then `submit` or `abort` ([`Tcc::run`] does all of it). Branch ids come
//!   from [`BranchIdGen`] (`01`, `02`, …, nested `0101`); a try handler
//!   registers sub-branches with [`Tcc::from_branch`] and [`TccBranch`];
//! * [`Msg`] sends a 2-phase message: plain `submit`, or `prepare` + local
//!   transaction + `submit`/`abort` ([`Msg::do_and_submit_db`], dtm's
//!   `DoAndSubmitDB`, on MySQL, PostgreSQL or SQLite through
//!   [`barrier::MsgBarrier`]), with a check-back URL and an optional delay;
//!   a step may go to every subscriber of a topic ([`Msg::add_topic_json`],
//!   [`DtmClient::subscribe`]);
//! * [`Xa`] runs an XA global transaction (prepare, the action calls with
//!   their `phase2_url`, submit/abort), and [`XaDb`] is a branch's side on
//!   MySQL/MariaDB or PostgreSQL: the local XA transaction, phase-2
//!   commit/rollback, and the recovery of prepared transactions (module
//!   [`xa`] explains the reasoning);
//! * [`workflow`] runs dtm's workflow mode: a registered async function
//!   whose saga and TCC steps are recorded by the coordinator and
//!   replayed, never re-run, when a crash resumes it.
//!
//! Every transaction type works over both APIs; what differs is only the
//! payload encoding (protobuf bytes for gRPC branches, JSON for HTTP ones).
//! dtm's gRPC API cannot carry a message's `concurrent` flag, so
//! concurrent messages need the HTTP API, as with dtm.
//!
//! # The article's quick order
//!
//! order-api creates the order row and deducts the stock in one saga; if the
//! stock service answers FAILURE (not enough stock), dtm compensates the
//! order. Both services are found in etcd by go-zero target, and so is dtm.
//!
//! ```no_run
//! use discovery::ChannelCache;
//! use dtm_client::{ClientError, DtmClient, Saga};
//! use proto::order::{CreateReq, CREATE_PATH, CREATE_ROLLBACK_PATH};
//! use proto::stock::{DeductReq, DEDUCT_PATH, DEDUCT_ROLLBACK_PATH};
//!
//! # async fn quick_order() -> Result<(), ClientError> {
//! let channels = ChannelCache::new();
//! let dtm = DtmClient::new("etcd://127.0.0.1:2379/dtmservice", channels)?;
//!
//! // What RpcClientConf::build_target() gives for the two services.
//! let order_rpc = "etcd://127.0.0.1:2379/order.rpc";
//! let stock_rpc = "etcd://127.0.0.1:2379/stock.rpc";
//!
//! // As the article does; `dtm_protocol::Gid::random()` makes one locally in
//! // the same format and saves the round trip (order-api does that).
//! let gid = dtm.new_gid().await?;
//! let saga = Saga::new(gid)
//!     .add(
//!         format!("{order_rpc}{CREATE_PATH}"),
//!         format!("{order_rpc}{CREATE_ROLLBACK_PATH}"),
//!         &CreateReq { user_id: 1, goods_id: 1, num: 1 },
//!     )
//!     .add(
//!         format!("{stock_rpc}{DEDUCT_PATH}"),
//!         format!("{stock_rpc}{DEDUCT_ROLLBACK_PATH}"),
//!         &DeductReq { goods_id: 1, num: 1 },
//!     )
//!     .wait_result(true);
//!
//! match dtm.submit(&saga).await {
//!     Ok(()) => println!("order placed"),
//!     Err(ClientError::Failure(reason)) => println!("rolled back: {reason}"), // → 409
//!     Err(ClientError::Unavailable(why)) => println!("try again later: {why}"), // → 503
//!     Err(other) => return Err(other),
//! }
//! # Ok(()) }
//! ```
//!
//! # TCC: transfer between two accounts over HTTP
//!
//! Each branch offers try (freeze the amount), confirm (apply it) and
//! cancel (unfreeze); the application calls the tries, the coordinator the
//! rest. If the second try answers FAILURE, the closure's error aborts the
//! transaction and the coordinator cancels both branches (the second one's
//! cancel is a null compensation for the barrier).
//!
//! ```no_run
//! use dtm_protocol::Gid;
//! use discovery::ChannelCache;
//! use dtm_client::{ClientError, DtmClient, Tcc};
//! use serde_json::json;
//!
//! # async fn transfer() -> Result<(), ClientError> {
//! let dtm = DtmClient::new("http://127.0.0.1:36789/api/dtmsvr", ChannelCache::new())?;
//! let busi = "http://127.0.0.1:8081/api/busi";
//! let gid = dtm.new_gid().await?;
//! Tcc::new(dtm, gid)
//!     .run(async |tcc| {
//!         let body = json!({"amount": 30});
//!         tcc.call_branch_json(&body, &format!("{busi}/TransOutTry"),
//!             &format!("{busi}/TransOutConfirm"), &format!("{busi}/TransOutCancel")).await?;
//!         tcc.call_branch_json(&body, &format!("{busi}/TransInTry"),
//!             &format!("{busi}/TransInConfirm"), &format!("{busi}/TransInCancel")).await?;
//!         Ok(())
//!     })
//!     .await
//! # }
//! ```
//!
//! Over gRPC the same transaction uses `DtmClient::new("127.0.0.1:36790", …)`
//! and `tcc.call_branch::<Req, Resp>(&req, "host:port/pkg.Busi/TransOutTry", …)`.
//! A try handler that is itself a TCC reads its context with
//! [`TccBranch::from_query`] (or [`TccBranch::from_grpc`]) and calls
//! `Tcc::from_branch(dtm, &branch).call_branch_json(…)`: its branches are
//! `0101`, `0102`, … of the same global transaction.
//!
//! # A 2-phase message with a local transaction
//!
//! Deduct the stock locally and guarantee that the order service hears of
//! it. If this process dies after the commit, the coordinator asks
//! `…/queryPrepared`, whose handler is
//! `BranchBarrier::from_query(q)?.query_prepared(&pool)`.
//!
//! ```no_run
//! use barrier::BranchError;
//! use discovery::ChannelCache;
//! use dtm_client::{DtmClient, Msg, MsgError};
//! use serde_json::json;
//!
//! # async fn deduct(pool: sqlx::MySqlPool) -> Result<(), MsgError> {
//! let dtm = DtmClient::new("http://127.0.0.1:36789/api/dtmsvr", ChannelCache::new())?;
//! let msg = Msg::new(dtm.new_gid().await?)
//!     .add_json("http://127.0.0.1:8081/api/order/create", &json!({"userId": 1, "goodsId": 1, "num": 1}))?;
//! msg.do_and_submit_db(&dtm, "http://127.0.0.1:8082/api/stock/queryPrepared", &pool, async |conn| {
//!     let done = sqlx::query("update stock set num = num - 1 where goods_id = 1 and num >= 1")
//!         .execute(&mut *conn)
//!         .await?;
//!     if done.rows_affected() == 0 {
//!         return Err(BranchError::failure("insufficient stock")); // → abort
//!     }
//!     Ok(())
//! })
//! .await
//! # }
//! ```
//!
//! # XA: the same transfer as two-phase commit
//!
//! Each branch does its SQL in a local XA transaction and prepares it;
//! the coordinator commits them all after `submit`, or rolls them back.
//! The application's side:
//!
//! ```no_run
//! use discovery::ChannelCache;
//! use dtm_client::{ClientError, DtmClient, Xa};
//! use serde_json::json;
//!
//! # async fn transfer() -> Result<(), ClientError> {
//! let dtm = DtmClient::new("http://127.0.0.1:36789/api/dtmsvr", ChannelCache::new())?;
//! let busi = "http://127.0.0.1:8081/api/busi";
//! Xa::new(dtm.clone(), dtm.new_gid().await?)
//!     .run(async |xa| {
//!         xa.call_branch_json(&json!({"amount": -30}), &format!("{busi}/TransOutXa")).await?;
//!         xa.call_branch_json(&json!({"amount": 30}), &format!("{busi}/TransInXa")).await?;
//!         Ok(())
//!     })
//!     .await
//! # }
//! ```
//!
//! A branch's handler serves `action`, `commit` and `rollback` on one URL:
//!
//! ```no_run
//! use barrier::BranchError;
//! use dtm_client::{DtmClient, XaBranch, XaDb};
//!
//! # async fn trans_out_xa(xa: &XaDb<sqlx::MySql>, dtm: &DtmClient, query: &str) -> Result<(), BranchError> {
//! let branch = XaBranch::from_query(query)?;
//! let _ = xa
//!     .handle(&branch, dtm, async |conn: &mut sqlx::MySqlConnection| {
//!         sqlx::query("update account set balance = balance - 30 where id = 1").execute(conn).await?;
//!         Ok(())
//!     })
//!     .await?;
//! Ok(())
//! # }
//! ```
//!
//! and `xa.clone().spawn_recovery(dtm, Duration::from_secs(60))` keeps
//! prepared transactions from outliving their global transaction.

pub mod branch;
pub mod client;
pub mod error;
pub mod grpc;
pub mod http;
pub mod kv;
pub mod msg;
pub mod query;
pub mod saga;
pub mod tcc;
pub mod trans;
mod two_phase;
pub mod workflow;
pub mod xa;

pub use branch::{BranchIdGen, TccBranch};
pub use client::{DEFAULT_TIMEOUT, DtmClient};
pub use error::ClientError;
pub use grpc::GrpcDtm;
pub use http::HttpDtm;
pub use kv::{KvPage, KvRow, KvRows};
pub use msg::{Msg, MsgError};
pub use query::{Branch, BranchStatus, QueryResult, TransStatus, Transaction};
pub use saga::Saga;
pub use tcc::{DEFAULT_BRANCH_TIMEOUT, Tcc};
pub use trans::{RegisterBranch, TransOptions, TransRequest};
pub use xa::{Xa, XaBranch, XaDatabase, XaDb, XaLocal, Xid};
