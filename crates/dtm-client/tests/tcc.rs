//! TCC through the client against our coordinator (in process), over both
//! APIs, with recording branch servers: what each branch receives, in which
//! order, and where the transaction ends.

mod support;

use std::sync::Arc;
use std::time::Duration;

use barrier::{BarrierTable, BranchBarrier, BranchError, Outcome, Skipped};
use dtm_client::{ClientError, DtmClient, Tcc, TccBranch, TransStatus};
use dtm_protocol::Gid;
use harness::branches::{BranchServers, Call, Reply, c};
use proto::stock::{DeductReq, DeductResp};
use serde_json::json;
use support::InProcess;
use tokio::sync::Notify;

const FINAL_WITHIN: Duration = Duration::from_secs(20);

fn gid(name: &str) -> Gid {
    Gid::new(format!("{name}-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

/// try/confirm/cancel URLs of account `name` on `b`.
fn urls(b: &BranchServers, name: &str) -> (String, String, String) {
    (
        b.http_url(&format!("{name}Try")),
        b.http_url(&format!("{name}Confirm")),
        b.http_url(&format!("{name}Cancel")),
    )
}

async fn transfer(tcc: &Tcc, b: &BranchServers) -> Result<(), ClientError> {
    for name in ["TransOut", "TransIn"] {
        let (try_url, confirm, cancel) = urls(b, name);
        tcc.call_branch_json(&json!({"amount": 30}), &try_url, &confirm, &cancel).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tcc_success_tries_then_confirms_newest_first() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    let g = gid("tcc-ok");
    let client = dtm.http_client();
    Tcc::new(client, g.clone()).wait_result(true).run(async |tcc| transfer(tcc, &b).await).await.unwrap();

    let calls = b.recorder.calls_of(g.as_str());
    assert_eq!(
        calls.iter().map(Call::short).collect::<Vec<_>>(),
        [
            c("/TransOutTry", "01", "try"),
            c("/TransInTry", "02", "try"),
            c("/TransInConfirm", "02", "confirm"),
            c("/TransOutConfirm", "01", "confirm"),
        ]
    );
    for call in &calls {
        assert_eq!(call.method, "POST");
        assert_eq!(call.param("trans_type"), "tcc");
        assert_eq!(call.body, br#"{"amount":30}"#, "tries and confirms get the registered payload");
    }
    // The application's tries name the coordinator; the coordinator's calls do not.
    assert_eq!(calls[0].param("dtm"), dtm.http);
    assert_eq!(calls[2].params.get("dtm"), None);
    assert_eq!(dtm.status(g.as_str()).await, Some(TransStatus::Succeed));
    assert_eq!(
        dtm.branches(g.as_str()).await,
        [
            ("01".into(), "cancel".into(), "prepared".into()),
            ("01".into(), "confirm".into(), "succeed".into()),
            ("02".into(), "cancel".into(), "prepared".into()),
            ("02".into(), "confirm".into(), "succeed".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_tcc_success_sends_metadata_and_protobuf_payloads() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    let g = gid("tcc-grpc");
    let req = DeductReq { goods_id: 1, num: 3 };
    Tcc::new(dtm.grpc_client(), g.clone())
        .wait_result(true)
        .branch_header("x-tenant", "t1")
        .run(async |tcc| {
            let _: DeductResp = tcc
                .call_branch(
                    &req,
                    &b.grpc_url("pb.stock/TryDeduct"),
                    &b.grpc_url("pb.stock/ConfirmDeduct"),
                    &b.grpc_url("pb.stock/CancelDeduct"),
                )
                .await?;
            Ok(())
        })
        .await
        .unwrap();
    let calls = b.recorder.calls_of(g.as_str());
    assert_eq!(
        calls.iter().map(Call::short).collect::<Vec<_>>(),
        [c("/pb.stock/TryDeduct", "01", "try"), c("/pb.stock/ConfirmDeduct", "01", "confirm")]
    );
    for call in &calls {
        assert_eq!(call.body, vec![0x08, 1, 0x10, 3], "protobuf DeductReq, byte for byte");
        assert_eq!(call.param("trans_type"), "tcc");
    }
    assert_eq!(calls[0].param("dtm"), dtm.grpc, "the try carries the coordinator in dtm-dtm");
    assert_eq!(dtm.status(g.as_str()).await, Some(TransStatus::Succeed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_try_aborts_and_every_registered_branch_is_cancelled() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    b.recorder.script("/TransInTry", [Reply::Failure]);
    let g = gid("tcc-abort");
    let err =
        Tcc::new(dtm.http_client(), g.clone()).run(async |tcc| transfer(tcc, &b).await).await.unwrap_err();
    assert!(matches!(err, ClientError::Failure(_)), "{err}");
    assert_eq!(dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Failed);
    assert_eq!(
        b.recorder.sequence(g.as_str()),
        [
            c("/TransOutTry", "01", "try"),
            c("/TransInTry", "02", "try"),
            // Newest first; 02's try failed, its cancel is still called (a
            // null compensation for a barrier-guarded branch).
            c("/TransInCancel", "02", "cancel"),
            c("/TransOutCancel", "01", "cancel"),
        ]
    );
    let global = dtm.query(g.as_str()).await.transaction.unwrap();
    assert_eq!(
        global.rollback_reason.as_deref(),
        Some("transaction failed: no"),
        "the try's error is the reason"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubmitted_tcc_is_cancelled_when_it_times_out() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    let g = gid("tcc-timeout");
    // The application prepares, calls one try, and "crashes" (never submits).
    let tcc = Tcc::new(dtm.grpc_client(), g.clone()).timeout_to_fail(Duration::from_secs(1));
    tcc.prepare().await.unwrap();
    let (try_url, confirm, cancel) = urls(&b, "TransOut");
    tcc.call_branch_json(&json!({"amount": 30}), &try_url, &confirm, &cancel).await.unwrap();
    drop(tcc);

    assert_eq!(dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Failed);
    assert_eq!(
        b.recorder.sequence(g.as_str()),
        [c("/TransOutTry", "01", "try"), c("/TransOutCancel", "01", "cancel")]
    );
    let global = dtm.query(g.as_str()).await.transaction.unwrap();
    assert_eq!(global.rollback_reason.as_deref(), Some("Timeout after 1 seconds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_failing_is_retried_until_it_succeeds() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    // FAILURE of a confirm is not a business answer: dtm retries it too.
    b.recorder.script("/TransOutConfirm", [Reply::Error, Reply::Failure]);
    let g = gid("tcc-confirm-retry");
    Tcc::new(dtm.http_client(), g.clone()).run(async |tcc| transfer(tcc, &b).await).await.unwrap();
    assert_eq!(dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Succeed);
    assert_eq!(
        b.recorder.sequence(g.as_str()),
        [
            c("/TransOutTry", "01", "try"),
            c("/TransInTry", "02", "try"),
            c("/TransInConfirm", "02", "confirm"),
            c("/TransOutConfirm", "01", "confirm"),
            c("/TransOutConfirm", "01", "confirm"),
            c("/TransOutConfirm", "01", "confirm"),
        ],
        "the succeeded confirm of 02 is not repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_handler_registers_nested_branches_0101_and_0102() {
    let dtm = InProcess::start().await;
    let b = Arc::new(BranchServers::start().await);
    let nested = b.clone();
    // Branch 01's try is itself a TCC: it registers two sub-branches at the
    // coordinator named in its `dtm` parameter.
    b.recorder.hook("/HubTry", move |call| {
        let b = nested.clone();
        async move {
            let query: String =
                url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&call.params).finish();
            let branch = match TccBranch::from_query(&query) {
                Ok(branch) => branch,
                Err(err) => return (400, err.to_string()),
            };
            let dtm = DtmClient::new(&branch.dtm, discovery::ChannelCache::new()).unwrap();
            let sub = Tcc::from_branch(dtm, &branch);
            for name in ["SubA", "SubB"] {
                let (try_url, confirm, cancel) = urls(&b, name);
                if let Err(err) =
                    sub.call_branch_json(&json!({"sub": name}), &try_url, &confirm, &cancel).await
                {
                    return (500, err.to_string());
                }
            }
            (200, r#"{"dtm_result":"SUCCESS"}"#.into())
        }
    });
    let g = gid("tcc-nested");
    Tcc::new(dtm.http_client(), g.clone())
        .wait_result(true)
        .run(async |tcc| {
            let (try_url, confirm, cancel) = urls(&b, "Hub");
            tcc.call_branch_json(&json!({"hub": 1}), &try_url, &confirm, &cancel).await?;
            let (try_url, confirm, cancel) = urls(&b, "TransIn");
            tcc.call_branch_json(&json!({"amount": 30}), &try_url, &confirm, &cancel).await?;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(
        b.recorder.sequence(g.as_str()),
        [
            c("/HubTry", "01", "try"),
            c("/SubATry", "0101", "try"),
            c("/SubBTry", "0102", "try"),
            c("/TransInTry", "02", "try"),
            // Reverse registration order: 02, then 01's children, then 01.
            c("/TransInConfirm", "02", "confirm"),
            c("/SubBConfirm", "0102", "confirm"),
            c("/SubAConfirm", "0101", "confirm"),
            c("/HubConfirm", "01", "confirm"),
        ]
    );
    let sub_try = &b.recorder.calls_of(g.as_str())[1];
    assert_eq!(sub_try.param("dtm"), dtm.http, "the nested try names the same coordinator");
    assert_eq!(dtm.status(g.as_str()).await, Some(TransStatus::Succeed));
}

/// dtm's `TestTccBarrierDisorder`, through the client: the try is held in
/// the network until the transaction has timed out and been cancelled. The
/// cancel is a null compensation, the late try is skipped (anti-hanging),
/// and the stock never moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_overtaking_a_delayed_try_is_null_and_the_try_hangs_harmlessly() {
    let dtm = InProcess::start().await;
    let db = harness::sqlite_database();
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    barrier::schema::ensure_barrier_table(&pool, &BarrierTable::new("barrier").unwrap()).await.unwrap();
    stock_srv::schema::ensure_stock_table(&pool).await.unwrap();
    let b = BranchServers::start().await;
    let cancelled = Arc::new(Notify::new());
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));

    for (path, op_effect) in [("/StockTry", -5i64), ("/StockCancel", 5), ("/StockConfirm", 0)] {
        let (pool, cancelled, outcomes) = (pool.clone(), cancelled.clone(), outcomes.clone());
        b.recorder.hook(path, move |call| {
            let (pool, cancelled, outcomes) = (pool.clone(), cancelled.clone(), outcomes.clone());
            async move {
                if call.param("op") == "try" {
                    // Held until the coordinator's cancel has been handled.
                    cancelled.notified().await;
                }
                let query =
                    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&call.params).finish();
                let mut guard = BranchBarrier::from_query(&query).unwrap();
                let result = guard
                    .call_with_pool(&pool, async |conn| {
                        sqlx::query("update stock set num = num + ? where goods_id = 1")
                            .bind(op_effect)
                            .execute(&mut *conn)
                            .await?;
                        Ok::<(), BranchError>(())
                    })
                    .await;
                outcomes.lock().unwrap().push((call.param("op"), result.as_ref().ok().cloned()));
                if call.param("op") == "cancel" {
                    cancelled.notify_one();
                }
                match result {
                    Ok(_) => (200, r#"{"dtm_result":"SUCCESS"}"#.into()),
                    Err(err) => {
                        let (status, body) = err.into_http();
                        (status.as_u16(), body)
                    }
                }
            }
        });
    }

    let g = gid("tcc-disorder");
    let err = Tcc::new(dtm.http_client(), g.clone())
        .timeout_to_fail(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(15))
        .run(async |tcc| {
            let (try_url, confirm, cancel) = urls(&b, "Stock");
            tcc.call_branch_json(&json!({"num": 5}), &try_url, &confirm, &cancel).await?;
            Ok(())
        })
        .await
        .unwrap_err();
    // The try "succeeded" (skipped by the barrier) but the transaction was
    // already cancelled: the submit is refused.
    assert!(matches!(&err, ClientError::Failure(m) if m.contains("cannot submit")), "{err}");
    assert_eq!(dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Failed);
    assert_eq!(
        *outcomes.lock().unwrap(),
        [
            ("cancel".to_string(), Some(Outcome::Skipped(Skipped::NullCompensation))),
            ("try".to_string(), Some(Outcome::Skipped(Skipped::Hanging))),
        ]
    );
    let num: i64 =
        sqlx::query_scalar("select num from stock where goods_id = 1").fetch_one(&pool).await.unwrap();
    assert_eq!(num, 100, "neither the cancel nor the late try touched the stock");
    assert_eq!(
        b.recorder.sequence(g.as_str()),
        [c("/StockTry", "01", "try"), c("/StockCancel", "01", "cancel")],
        "the try arrived first but was handled last"
    );
}
