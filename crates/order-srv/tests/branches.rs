//! order-srv's branch semantics through real gRPC calls carrying dtm's
//! metadata, on real databases (MariaDB, PostgreSQL, SQLite).

use std::time::Duration;

use proto::order::{CreateReq, OrderClient};
use service_kit::testing::RunningService;
use sqlx::Row;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// A running order-srv on port 0.
struct Running {
    client: OrderClient<Channel>,
    service: RunningService,
}

impl Running {
    async fn start(data_source: &str) -> Running {
        let service = RunningService::start::<order_srv::OrderParts>("order.rpc", data_source, false).await;
        let channel =
            Channel::from_shared(format!("http://{}", service.grpc)).unwrap().connect().await.unwrap();
        Running { client: OrderClient::new(channel), service }
    }

    async fn stop(self) {
        self.service.stop().await;
    }
}

/// A request as dtm sends it: the payload plus `dtm-*` metadata.
fn branch<T>(payload: T, gid: &str, branch_id: &str, op: &str) -> Request<T> {
    let mut request = Request::new(payload);
    let metadata = request.metadata_mut();
    metadata.insert("dtm-gid", gid.parse().unwrap());
    metadata.insert("dtm-trans_type", "saga".parse().unwrap());
    metadata.insert("dtm-branch_id", branch_id.parse().unwrap());
    metadata.insert("dtm-op", op.parse().unwrap());
    metadata.insert("dtm-dtm", "".parse().unwrap());
    request
}

fn req(user_id: i64, goods_id: i64, num: i64) -> CreateReq {
    CreateReq { user_id, goods_id, num }
}

fn new_gid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `(gid, row_state, user_id, num)` of every order, by id.
async fn mysql_orders(url: &str) -> Vec<(String, i64, i64, i64)> {
    let pool = sqlx::MySqlPool::connect(url).await.unwrap();
    let rows =
        sqlx::query("select cast(gid as char) as gid, row_state, user_id, num from `order` order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    rows.iter()
        .map(|r| (r.get(0), i64::from(r.get::<i8, _>(1)), r.get(2), i64::from(r.get::<i32, _>(3))))
        .collect()
}

async fn mysql_barrier_rows(url: &str, gid: &str) -> Vec<(String, String, String, String)> {
    let pool = sqlx::MySqlPool::connect(url).await.unwrap();
    sqlx::query_as(
        "select branch_id, op, barrier_id, reason from dtm_barrier.barrier where gid = ? order by id",
    )
    .bind(gid)
    .fetch_all(&pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn create_inserts_a_live_order_carrying_the_gid_and_one_barrier_row() {
    let db = harness::mysql_database().await;
    let mut srv = Running::start(&db.url).await;
    let gid = new_gid();

    srv.client.create(branch(req(7, 1, 2), &gid, "01", "action")).await.unwrap();

    assert_eq!(mysql_orders(&db.url).await, vec![(gid.clone(), 0, 7, 2)]);
    let rows = mysql_barrier_rows(&db.url, &gid).await;
    assert_eq!(rows, vec![("01".into(), "action".into(), "01".into(), "action".into())]);
    srv.stop().await;
}

#[tokio::test]
async fn rollback_cancels_the_order_of_its_own_saga_not_the_latest_one() {
    let db = harness::mysql_database().await;
    let mut srv = Running::start(&db.url).await;
    let (first, second) = (new_gid(), new_gid());

    // Same user, same goods, two sagas: the Go demo's rollback would cancel
    // the *latest* order (the second saga's).
    srv.client.create(branch(req(7, 1, 1), &first, "01", "action")).await.unwrap();
    srv.client.create(branch(req(7, 1, 1), &second, "01", "action")).await.unwrap();
    srv.client.create_rollback(branch(req(7, 1, 1), &first, "01", "compensate")).await.unwrap();

    assert_eq!(mysql_orders(&db.url).await, vec![(first.clone(), -1, 7, 1), (second, 0, 7, 1)]);
    let rows = mysql_barrier_rows(&db.url, &first).await;
    assert_eq!(
        rows,
        vec![
            ("01".into(), "action".into(), "01".into(), "action".into()),
            ("01".into(), "compensate".into(), "01".into(), "compensate".into()),
        ]
    );
    srv.stop().await;
}

#[tokio::test]
async fn duplicate_delivery_creates_one_order() {
    let db = harness::mysql_database().await;
    let mut srv = Running::start(&db.url).await;
    let gid = new_gid();
    for _ in 0..3 {
        srv.client.create(branch(req(1, 1, 1), &gid, "01", "action")).await.unwrap();
    }
    assert_eq!(mysql_orders(&db.url).await.len(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn rollback_before_create_is_a_null_compensation_and_blocks_the_late_create() {
    let db = harness::mysql_database().await;
    let mut srv = Running::start(&db.url).await;
    let gid = new_gid();

    srv.client.create_rollback(branch(req(1, 1, 1), &gid, "01", "compensate")).await.unwrap();
    // The action arrives late ("hanging"): answered success, but skipped.
    srv.client.create(branch(req(1, 1, 1), &gid, "01", "action")).await.unwrap();

    assert!(mysql_orders(&db.url).await.is_empty(), "no order may appear after its compensation");
    let rows = mysql_barrier_rows(&db.url, &gid).await;
    assert_eq!(
        rows,
        vec![
            ("01".into(), "action".into(), "01".into(), "compensate".into()),
            ("01".into(), "compensate".into(), "01".into(), "compensate".into()),
        ]
    );
    srv.stop().await;
}

#[tokio::test]
async fn missing_or_malformed_metadata_is_invalid_argument() {
    let db = harness::mysql_database().await;
    let mut srv = Running::start(&db.url).await;

    let status = srv.client.create(Request::new(req(1, 1, 1))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("dtm-gid"), "{}", status.message());

    let status = srv.client.create(branch(req(1, 1, 1), &new_gid(), "01", "fly")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());

    assert!(mysql_orders(&db.url).await.is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn invalid_requests_are_invalid_argument_naming_the_field() {
    let db = harness::mysql_database().await;
    let mut srv = Running::start(&db.url).await;
    for (bad, field) in [
        (req(0, 1, 1), "userId"),
        (req(1, -1, 1), "goodsId"),
        (req(1, 1, 0), "num"),
        (req(1, 1, 1 << 40), "num"),
    ] {
        let status = srv.client.create(branch(bad, &new_gid(), "01", "action")).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{}", status.message());
    }
    assert!(mysql_orders(&db.url).await.is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn database_down_is_retryable_unavailable_never_aborted() {
    // Let the shared server of this test binary finish its bootstrap first:
    // two `mariadb-install-db` runs at once can trip over each other's temp files.
    let _shared = harness::mysql_database().await;
    let mut mariadb = tokio::task::spawn_blocking(harness::MariaDb::start).await.unwrap();
    let db = harness::mysql_database_on(&mariadb.url()).await;
    let mut srv = Running::start(&db.url).await;
    srv.client.create(branch(req(1, 1, 1), &new_gid(), "01", "action")).await.unwrap();

    mariadb.kill();
    for op in ["action", "compensate"] {
        let call = branch(req(1, 1, 1), &new_gid(), "01", op);
        let status = match op {
            "action" => srv.client.create(call).await.unwrap_err(),
            _ => srv.client.create_rollback(call).await.unwrap_err(),
        };
        assert_eq!(status.code(), Code::Unavailable, "{op}: {status:?}");
        assert!(
            !status.message().contains("127.0.0.1"),
            "internal causes stay in the log: {}",
            status.message()
        );
    }

    // The database comes back: the retried call succeeds, the service never restarted.
    let _mariadb = tokio::task::spawn_blocking(move || {
        mariadb.restart();
        mariadb
    })
    .await
    .unwrap();
    let gid = new_gid();
    let mut result = Err(tonic::Status::unavailable("not tried"));
    for _ in 0..20 {
        result = srv.client.create(branch(req(1, 1, 1), &gid, "01", "action")).await;
        if result.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    result.expect("create succeeds once the database is back");
    assert_eq!(mysql_orders(&db.url).await.len(), 2);
    srv.stop().await;
}

#[tokio::test]
async fn postgres_create_and_rollback() {
    let db = harness::postgres_database().await;
    let mut srv = Running::start(&db.url).await;
    let gid = new_gid();
    srv.client.create(branch(req(3, 1, 4), &gid, "01", "action")).await.unwrap();
    srv.client.create_rollback(branch(req(3, 1, 4), &gid, "01", "compensate")).await.unwrap();
    srv.client.create_rollback(branch(req(3, 1, 4), &gid, "01", "compensate")).await.unwrap();

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let rows: Vec<(String, i16, i32)> =
        sqlx::query_as(r#"select gid, row_state, num from "order""#).fetch_all(&pool).await.unwrap();
    assert_eq!(rows, vec![(gid.clone(), -1, 4)]);
    let barrier: i64 = sqlx::query_scalar("select count(*) from dtm_barrier.barrier where gid = $1")
        .bind(&gid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(barrier, 2);
    srv.stop().await;
}

#[tokio::test]
async fn sqlite_create_and_rollback() {
    let db = harness::sqlite_database();
    let mut srv = Running::start(&db.url).await;
    let gid = new_gid();
    srv.client.create(branch(req(3, 1, 4), &gid, "01", "action")).await.unwrap();
    srv.client.create(branch(req(3, 1, 4), &gid, "01", "action")).await.unwrap();
    srv.client.create_rollback(branch(req(3, 1, 4), &gid, "01", "compensate")).await.unwrap();

    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    let rows: Vec<(String, i64)> =
        sqlx::query_as(r#"select gid, row_state from "order""#).fetch_all(&pool).await.unwrap();
    assert_eq!(rows, vec![(gid, -1)]);
    assert_ne!(srv.service.grpc.port(), 0);
    srv.stop().await;
}

#[tokio::test]
async fn restart_keeps_the_schema_and_data() {
    let db = harness::mysql_database().await;
    let mut srv = Running::start(&db.url).await;
    let gid = new_gid();
    srv.client.create(branch(req(1, 1, 1), &gid, "01", "action")).await.unwrap();
    srv.stop().await;

    // Schema application is idempotent; the barrier still knows the action.
    let mut srv = Running::start(&db.url).await;
    srv.client.create(branch(req(1, 1, 1), &gid, "01", "action")).await.unwrap();
    assert_eq!(mysql_orders(&db.url).await.len(), 1);
    srv.stop().await;
}
