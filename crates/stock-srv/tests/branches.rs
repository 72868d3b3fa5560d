//! stock-srv's branch semantics through real gRPC calls carrying dtm's
//! metadata, on real databases (MariaDB, PostgreSQL, SQLite).

use proto::stock::{DeductReq, StockClient};
use service_kit::testing::RunningService;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// A running stock-srv on port 0.
struct Running {
    client: StockClient<Channel>,
    service: RunningService,
}

impl Running {
    async fn start(data_source: &str) -> Running {
        let service = RunningService::start::<stock_srv::StockParts>("stock.rpc", data_source, false).await;
        let channel =
            Channel::from_shared(format!("http://{}", service.grpc)).unwrap().connect().await.unwrap();
        Running { client: StockClient::new(channel), service }
    }

    async fn stop(self) {
        self.service.stop().await;
    }

    async fn deduct(&mut self, gid: &str, goods_id: i64, num: i64) -> Result<(), tonic::Status> {
        self.client.deduct(branch(DeductReq { goods_id, num }, gid, "action")).await.map(drop)
    }

    async fn rollback(&mut self, gid: &str, goods_id: i64, num: i64) -> Result<(), tonic::Status> {
        self.client.deduct_rollback(branch(DeductReq { goods_id, num }, gid, "compensate")).await.map(drop)
    }
}

/// A request as dtm sends it to branch 02: the payload plus `dtm-*` metadata.
fn branch<T>(payload: T, gid: &str, op: &str) -> Request<T> {
    let mut request = Request::new(payload);
    let metadata = request.metadata_mut();
    metadata.insert("dtm-gid", gid.parse().unwrap());
    metadata.insert("dtm-trans_type", "saga".parse().unwrap());
    metadata.insert("dtm-branch_id", "02".parse().unwrap());
    metadata.insert("dtm-op", op.parse().unwrap());
    request
}

fn new_gid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn mysql_stock(url: &str, goods_id: i64) -> Option<i32> {
    let pool = sqlx::MySqlPool::connect(url).await.unwrap();
    sqlx::query_scalar("select num from stock where goods_id = ?")
        .bind(goods_id)
        .fetch_optional(&pool)
        .await
        .unwrap()
}

async fn mysql_barrier_rows(url: &str, gid: &str) -> Vec<(String, String, String)> {
    let pool = sqlx::MySqlPool::connect(url).await.unwrap();
    sqlx::query_as("select branch_id, op, reason from dtm_barrier.barrier where gid = ? order by id")
        .bind(gid)
        .fetch_all(&pool)
        .await
        .unwrap()
}

fn row(op: &str, reason: &str) -> (String, String, String) {
    ("02".to_string(), op.to_string(), reason.to_string())
}

#[tokio::test]
async fn deduct_takes_units_and_leaves_one_barrier_row() {
    let db = harness::mysql_database().await;
    let mut srv = Running::start(&db.url).await;
    assert_eq!(mysql_stock(&db.url, 1).await, Some(100), "seeded like the demo");
    let gid = new_gid();
    srv.deduct(&gid, 1, 1).await.unwrap();
    assert_eq!(mysql_stock(&db.url, 1).await, Some(99));
    assert_eq!(mysql_barrier_rows(&db.url, &gid).await, vec![row("action", "action")]);
    srv.stop().await;
}

#[tokio::test]
async fn insufficient_stock_is_aborted_failure_and_changes_nothing() {
    let db = harness::mysql_database().await;
    let mut srv = Running::start(&db.url).await;
    let gid = new_gid();
    let status = srv.deduct(&gid, 1, 101).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Aborted, "FAILURE"));
    assert_eq!(mysql_stock(&db.url, 1).await, Some(100));
    assert!(
        mysql_barrier_rows(&db.url, &gid).await.is_empty(),
        "the failed action rolled back its barrier row"
    );

    // dtm then compensates the failed branch too: a null compensation.
    srv.rollback(&gid, 1, 101).await.unwrap();
    assert_eq!(mysql_stock(&db.url, 1).await, Some(100), "nothing was deducted, nothing is added back");
    assert_eq!(
        mysql_barrier_rows(&db.url, &gid).await,
        vec![row("action", "compensate"), row("compensate", "compensate")]
    );
    srv.stop().await;
}

#[tokio::test]
async fn unknown_goods_is_aborted_failure() {
    let db = harness::mysql_database().await;
    let mut srv = Running::start(&db.url).await;
    let status = srv.deduct(&new_gid(), 999, 1).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Aborted, "FAILURE"));
    assert_eq!(mysql_stock(&db.url, 999).await, None);
    srv.stop().await;
}

#[tokio::test]
async fn duplicate_deduct_and_duplicate_rollback_each_happen_once() {
    let db = harness::mysql_database().await;
    let mut srv = Running::start(&db.url).await;
    let gid = new_gid();
    for _ in 0..3 {
        srv.deduct(&gid, 1, 5).await.unwrap();
    }
    assert_eq!(mysql_stock(&db.url, 1).await, Some(95));
    for _ in 0..3 {
        srv.rollback(&gid, 1, 5).await.unwrap();
    }
    assert_eq!(mysql_stock(&db.url, 1).await, Some(100), "restored exactly what this saga deducted, once");
    srv.stop().await;
}

#[tokio::test]
async fn rollback_before_deduct_restores_nothing_and_blocks_the_late_deduct() {
    let db = harness::mysql_database().await;
    let mut srv = Running::start(&db.url).await;
    let gid = new_gid();
    srv.rollback(&gid, 1, 7).await.unwrap();
    assert_eq!(mysql_stock(&db.url, 1).await, Some(100), "null compensation adds nothing");
    srv.deduct(&gid, 1, 7).await.unwrap(); // hanging action: success, skipped
    assert_eq!(mysql_stock(&db.url, 1).await, Some(100), "a deduct after its compensation never runs");
    srv.stop().await;
}

#[tokio::test]
async fn concurrent_sagas_never_oversell() {
    let db = harness::mysql_database().await;
    let srv = Running::start(&db.url).await;
    let mut calls = Vec::new();
    for _ in 0..40 {
        let mut client = srv.client.clone();
        calls.push(tokio::spawn(async move {
            client.deduct(branch(DeductReq { goods_id: 1, num: 3 }, &new_gid(), "action")).await.map(drop)
        }));
    }
    let mut succeeded = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => succeeded += 1,
            Err(status) => assert_eq!((status.code(), status.message()), (Code::Aborted, "FAILURE")),
        }
    }
    assert_eq!(succeeded, 33, "100 units / 3 per saga");
    assert_eq!(mysql_stock(&db.url, 1).await, Some(1));
    srv.stop().await;
}

#[tokio::test]
async fn missing_metadata_and_bad_requests_are_invalid_argument() {
    let db = harness::mysql_database().await;
    let mut srv = Running::start(&db.url).await;
    let status = srv.client.deduct(Request::new(DeductReq { goods_id: 1, num: 1 })).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("dtm-gid"), "{}", status.message());
    for (goods_id, num, field) in [(0, 1, "goodsId"), (1, 0, "num"), (1, -3, "num")] {
        let status = srv.deduct(&new_gid(), goods_id, num).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{}", status.message());
    }
    assert_eq!(mysql_stock(&db.url, 1).await, Some(100));
    srv.stop().await;
}

#[tokio::test]
async fn database_down_is_unavailable_never_aborted() {
    // Let the shared server of this test binary finish its bootstrap first:
    // two `mariadb-install-db` runs at once can trip over each other's temp files.
    let _shared = harness::mysql_database().await;
    let mut mariadb = tokio::task::spawn_blocking(harness::MariaDb::start).await.unwrap();
    let db = harness::mysql_database_on(&mariadb.url()).await;
    let mut srv = Running::start(&db.url).await;
    mariadb.kill();
    let status = srv.deduct(&new_gid(), 1, 1).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = srv.rollback(&new_gid(), 1, 1).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    srv.stop().await;
}

#[tokio::test]
async fn postgres_deduct_failure_and_rollback() {
    let db = harness::postgres_database().await;
    let mut srv = Running::start(&db.url).await;
    let gid = new_gid();
    srv.deduct(&gid, 1, 10).await.unwrap();
    let status = srv.deduct(&new_gid(), 1, 91).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    srv.rollback(&gid, 1, 10).await.unwrap();
    srv.rollback(&gid, 1, 10).await.unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let num: i32 =
        sqlx::query_scalar("select num from stock where goods_id = 1").fetch_one(&pool).await.unwrap();
    assert_eq!(num, 100);
    srv.stop().await;
}

#[tokio::test]
async fn sqlite_deduct_failure_and_rollback() {
    let db = harness::sqlite_database();
    let mut srv = Running::start(&db.url).await;
    let gid = new_gid();
    srv.deduct(&gid, 1, 10).await.unwrap();
    let status = srv.deduct(&new_gid(), 1, 91).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    let num: i64 =
        sqlx::query_scalar("select num from stock where goods_id = 1").fetch_one(&pool).await.unwrap();
    assert_eq!(num, 90);
    srv.rollback(&gid, 1, 10).await.unwrap();
    let num: i64 =
        sqlx::query_scalar("select num from stock where goods_id = 1").fetch_one(&pool).await.unwrap();
    assert_eq!(num, 100);
    srv.stop().await;
}
