//! 2-phase messages through the client against our coordinator (in
//! process): plain submit over both APIs, abort, DoAndSubmit with a local
//! transaction on SQLite, the coordinator's check-back deciding a message
//! the application left prepared, and delayed delivery.

mod support;

use std::time::Duration;

use barrier::{BarrierTable, BranchBarrier, BranchError, MsgBarrier, MsgLocal};
use dtm_client::{ClientError, Msg, MsgError, TransStatus};
use dtm_protocol::Gid;
use harness::branches::{BranchServers, Call, Reply, c};
use proto::stock::DeductReq;
use serde_json::json;
use sqlx::SqlitePool;
use support::InProcess;

const FINAL_WITHIN: Duration = Duration::from_secs(20);

fn gid(name: &str) -> Gid {
    Gid::new(format!("{name}-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

fn transfer(b: &BranchServers, g: &Gid) -> Msg {
    Msg::new(g.clone())
        .add_json(b.http_url("TransOut"), &json!({"amount": 30}))
        .unwrap()
        .add_json(b.http_url("TransIn"), &json!({"amount": 30}))
        .unwrap()
}

/// A SQLite database with the barrier and stock tables, and an HTTP
/// check-back handler on `/QueryPrepared` that is dtm's one-liner.
async fn local_db(b: &BranchServers) -> (harness::TestDatabase, SqlitePool) {
    let db = harness::sqlite_database();
    let pool = SqlitePool::connect(&db.url).await.unwrap();
    barrier::schema::ensure_barrier_table(&pool, &BarrierTable::new("barrier").unwrap()).await.unwrap();
    stock_srv::schema::ensure_stock_table(&pool).await.unwrap();
    let check_pool = pool.clone();
    b.recorder.hook("/QueryPrepared", move |call| {
        let pool = check_pool.clone();
        async move {
            let query =
                url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&call.params).finish();
            let result = match BranchBarrier::from_query(&query) {
                Ok(barrier) => barrier.query_prepared(&pool).await,
                Err(err) => Err(err.into()),
            };
            match result {
                Ok(()) => (200, r#"{"dtm_result":"SUCCESS"}"#.into()),
                Err(err) => {
                    let (status, body) = err.into_http();
                    (status.as_u16(), body)
                }
            }
        }
    });
    (db, pool)
}

async fn stock(pool: &SqlitePool) -> i64 {
    sqlx::query_scalar("select num from stock where goods_id = 1").fetch_one(pool).await.unwrap()
}

async fn deduct(conn: &mut sqlx::SqliteConnection, num: i64) -> Result<(), BranchError> {
    let done = sqlx::query("update stock set num = num - ? where goods_id = 1 and num >= ?")
        .bind(num)
        .bind(num)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(BranchError::failure("insufficient stock"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_message_over_http_delivers_its_actions_in_order() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    let g = gid("msg-http");
    transfer(&b, &g).wait_result(true).submit(&dtm.http_client()).await.unwrap();
    let calls = b.recorder.calls_of(g.as_str());
    assert_eq!(
        calls.iter().map(Call::short).collect::<Vec<_>>(),
        [c("/TransOut", "01", "action"), c("/TransIn", "02", "action")]
    );
    for call in &calls {
        assert_eq!((call.method.as_str(), call.param("trans_type").as_str()), ("POST", "msg"));
        assert_eq!(call.body, br#"{"amount":30}"#);
    }
    assert_eq!(dtm.status(g.as_str()).await, Some(TransStatus::Succeed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_message_over_grpc_retries_a_failing_action() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    b.recorder.script("/pb.stock/deduct", [Reply::Failure]);
    let g = gid("msg-grpc");
    Msg::new(g.clone())
        .add(b.grpc_url("pb.order/create"), &DeductReq { goods_id: 1, num: 2 })
        .add(b.grpc_url("pb.stock/deduct"), &DeductReq { goods_id: 1, num: 2 })
        .submit(&dtm.grpc_client())
        .await
        .unwrap();
    assert_eq!(dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Succeed);
    assert_eq!(
        b.recorder.sequence(g.as_str()),
        [
            c("/pb.order/create", "01", "action"),
            c("/pb.stock/deduct", "02", "action"),
            // Actions cannot fail a message: FAILURE is retried.
            c("/pb.stock/deduct", "02", "action"),
        ]
    );
    assert!(b.recorder.calls().iter().all(|call| call.body == [0x08, 1, 0x10, 2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_prepared_message_fails_without_delivering() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    let g = gid("msg-abort");
    let client = dtm.grpc_client();
    let msg = transfer(&b, &g);
    msg.prepare(&client, &b.http_url("QueryPrepared")).await.unwrap();
    assert_eq!(dtm.status(g.as_str()).await, Some(TransStatus::Prepared));
    msg.abort(&client).await.unwrap();
    assert_eq!(dtm.status(g.as_str()).await, Some(TransStatus::Failed));
    let err = msg.submit(&client).await.unwrap_err();
    assert!(matches!(err, ClientError::Failure(_)), "a failed message cannot be submitted: {err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.recorder.calls_of(g.as_str()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_and_submit_commits_locally_then_delivers() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    let (_db, pool) = local_db(&b).await;
    let g = gid("msg-do");
    let msg = transfer(&b, &g).wait_result(true);
    msg.do_and_submit_db(&dtm.http_client(), &b.http_url("QueryPrepared"), &pool, async |conn| {
        deduct(conn, 3).await
    })
    .await
    .unwrap();
    assert_eq!(stock(&pool).await, 97);
    assert_eq!(dtm.status(g.as_str()).await, Some(TransStatus::Succeed));
    assert_eq!(
        b.recorder.sequence(g.as_str()),
        [c("/TransOut", "01", "action"), c("/TransIn", "02", "action")],
        "no check-back was needed"
    );
    let reason: String = sqlx::query_scalar("select reason from barrier where gid = ? and branch_id = '00'")
        .bind(g.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(reason, "msg");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_and_submit_aborts_on_a_business_failure() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    let (_db, pool) = local_db(&b).await;
    let g = gid("msg-do-fail");
    let err = transfer(&b, &g)
        .do_and_submit_db(&dtm.grpc_client(), &b.http_url("QueryPrepared"), &pool, async |conn| {
            deduct(conn, 1000).await
        })
        .await
        .unwrap_err();
    assert!(matches!(err, MsgError::Local(BranchError::Failure(_))), "{err}");
    assert_eq!(dtm.status(g.as_str()).await, Some(TransStatus::Failed));
    assert_eq!(stock(&pool).await, 100);
    assert!(b.recorder.calls_of(g.as_str()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_and_submit_asks_the_check_back_when_the_outcome_is_unknown() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    let (_db, pool) = local_db(&b).await;
    let g = gid("msg-do-unknown");
    // The local transaction commits, but its caller sees an error (say the
    // answer of the commit was lost): only the barrier row knows.
    let err = transfer(&b, &g)
        .wait_result(true)
        .do_and_submit(&dtm.http_client(), &b.http_url("QueryPrepared"), async |mut barrier: MsgBarrier| {
            let local = barrier.call_with_pool(&pool, async |conn| deduct(conn, 2).await).await?;
            assert_eq!(local, MsgLocal::Committed(()));
            Err::<MsgLocal<()>, _>(BranchError::retry("the commit's answer was lost"))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, MsgError::Local(BranchError::Retry(_))), "{err}");
    assert_eq!(
        b.recorder.sequence(g.as_str()),
        [c("/QueryPrepared", "00", "msg"), c("/TransOut", "01", "action"), c("/TransIn", "02", "action")]
    );
    let check = &b.recorder.calls_of(g.as_str())[0];
    assert_eq!((check.method.as_str(), check.param("dtm")), ("GET", dtm.http.clone()));
    assert_eq!(dtm.status(g.as_str()).await, Some(TransStatus::Succeed));
    assert_eq!(stock(&pool).await, 98);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinators_check_back_submits_a_committed_prepared_message() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    let (_db, pool) = local_db(&b).await;
    let g = gid("msg-check-yes");
    let client = dtm.grpc_client();
    let msg = transfer(&b, &g).timeout_to_fail(Duration::from_secs(1));
    // DoAndSubmit by hand, "crashing" between the commit and the submit.
    msg.prepare(&client, &b.http_url("QueryPrepared")).await.unwrap();
    let local =
        MsgBarrier::new(g.clone()).call_with_pool(&pool, async |conn| deduct(conn, 4).await).await.unwrap();
    assert_eq!(local, MsgLocal::Committed(()));

    assert_eq!(dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Succeed);
    assert_eq!(
        b.recorder.sequence(g.as_str()),
        [c("/QueryPrepared", "00", "msg"), c("/TransOut", "01", "action"), c("/TransIn", "02", "action")]
    );
    let check = &b.recorder.calls_of(g.as_str())[0];
    assert_eq!((check.method.as_str(), check.body.len()), ("GET", 0));
    assert_eq!(check.params.get("dtm"), None, "the coordinator's own calls carry no dtm");
    assert_eq!(stock(&pool).await, 96);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinators_check_back_fails_a_message_whose_local_transaction_never_committed() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    let (_db, pool) = local_db(&b).await;
    let g = gid("msg-check-no");
    let client = dtm.http_client();
    let msg = transfer(&b, &g).timeout_to_fail(Duration::from_secs(1));
    msg.prepare(&client, &b.http_url("QueryPrepared")).await.unwrap();
    // Crashed before the local transaction.
    assert_eq!(dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Failed);
    assert_eq!(b.recorder.sequence(g.as_str()), [c("/QueryPrepared", "00", "msg")]);
    // The late local transaction can no longer commit its effect.
    let local =
        MsgBarrier::new(g.clone()).call_with_pool(&pool, async |conn| deduct(conn, 4).await).await.unwrap();
    assert_eq!(local, MsgLocal::Duplicated);
    assert_eq!(stock(&pool).await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_is_delivered_only_after_its_delay() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    let g = gid("msg-delay");
    let sent = tokio::time::Instant::now();
    Msg::new(g.clone())
        .add_json(b.http_url("TransIn"), &json!({"amount": 1}))
        .unwrap()
        .delay(Duration::from_secs(3))
        .submit(&dtm.http_client())
        .await
        .unwrap();
    let custom = dtm.query(g.as_str()).await.transaction.unwrap().custom_data;
    assert_eq!(custom.as_deref(), Some(r#"{"delay":3}"#));
    // The coordinator counts from the creation time in whole seconds, so
    // the action may come up to 1 s early, but never in the first 2 s.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(b.recorder.calls_of(g.as_str()).is_empty(), "delivered before its delay");
    let calls = b.recorder.wait_calls(g.as_str(), 1, FINAL_WITHIN).await;
    assert!(calls[0].at - sent >= Duration::from_secs(2), "after {:?}", calls[0].at - sent);
    assert_eq!(dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Succeed);
}
