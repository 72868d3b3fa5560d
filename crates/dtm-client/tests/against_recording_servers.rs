//! The client against tiny in-test dtm servers (gRPC with tonic, HTTP with
//! axum) that record what they receive and answer like dtm.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use discovery::{ChannelCache, EtcdConf, Registration};
use dtm_client::{ClientError, DtmClient, Saga, TransStatus};
use dtm_protocol::Gid;
use harness::{Etcd, free_port};
use proto::dtmgimp::dtm_server::{Dtm, DtmServer};
use proto::dtmgimp::{DtmBranchRequest, DtmGidReply, DtmProgressesReply, DtmRequest, DtmTopicRequest};
use proto::order::{CREATE_PATH, CREATE_ROLLBACK_PATH, CreateReq};
use tonic::{Request, Response, Status};

/// Requests a server received.
type Log<T> = Arc<Mutex<Vec<T>>>;

/// A gRPC dtm that records submits and answers by gid: `fail-*` → Aborted
/// (FAILURE), `ongoing-*` → FailedPrecondition, `slow-*` → answers after 5 s.
#[derive(Clone, Default)]
struct RecordingDtm {
    submits: Log<DtmRequest>,
}

#[tonic::async_trait]
impl Dtm for RecordingDtm {
    async fn new_gid(&self, _request: Request<()>) -> Result<Response<DtmGidReply>, Status> {
        Ok(Response::new(DtmGidReply { gid: "gid-from-grpc".into() }))
    }
    async fn submit(&self, request: Request<DtmRequest>) -> Result<Response<()>, Status> {
        let request = request.into_inner();
        let gid = request.gid.clone();
        self.submits.lock().unwrap().push(request);
        if gid.starts_with("fail") {
            return Err(Status::aborted("out of stock"));
        }
        if gid.starts_with("ongoing") {
            return Err(Status::failed_precondition("ONGOING"));
        }
        if gid.starts_with("slow") {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Ok(Response::new(()))
    }
    async fn prepare(&self, _: Request<DtmRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("not used"))
    }
    async fn abort(&self, _: Request<DtmRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("not used"))
    }
    async fn register_branch(&self, _: Request<DtmBranchRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("not used"))
    }
    async fn prepare_workflow(&self, _: Request<DtmRequest>) -> Result<Response<DtmProgressesReply>, Status> {
        Err(Status::unimplemented("not used"))
    }
    async fn subscribe(&self, _: Request<DtmTopicRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("not used"))
    }
    async fn unsubscribe(&self, _: Request<DtmTopicRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("not used"))
    }
    async fn delete_topic(&self, _: Request<DtmTopicRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("not used"))
    }
}

/// Starts the gRPC dtm on a random port; returns `127.0.0.1:port`.
async fn start_grpc_dtm(dtm: RecordingDtm) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DtmServer::new(dtm))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    address
}

fn order_saga(gid: &str) -> Saga {
    let order_rpc = "etcd://127.0.0.1:2379/order.rpc";
    Saga::new(Gid::new(gid).unwrap())
        .add(
            format!("{order_rpc}{CREATE_PATH}"),
            format!("{order_rpc}{CREATE_ROLLBACK_PATH}"),
            &CreateReq { goods_id: 1, user_id: 2, num: 3 },
        )
        .wait_result(true)
}

#[tokio::test]
async fn grpc_new_gid_and_submit_send_exactly_the_dtm_request() {
    let dtm = RecordingDtm::default();
    let address = start_grpc_dtm(dtm.clone()).await;
    let client = DtmClient::new(&address, ChannelCache::new()).unwrap();

    assert_eq!(client.new_gid().await.unwrap().as_str(), "gid-from-grpc");
    let saga = order_saga("ok-1");
    client.submit(&saga).await.unwrap();
    let received = dtm.submits.lock().unwrap().clone();
    assert_eq!(
        received,
        vec![saga.request().unwrap().to_grpc()],
        "the server got the request, byte for byte"
    );
    assert_eq!(received[0].trans_type, "saga");
    assert_eq!(received[0].bin_payloads, vec![vec![0x08, 1, 0x10, 2, 0x18, 3]]);
}

#[tokio::test]
async fn grpc_answers_map_to_typed_errors() {
    let address = start_grpc_dtm(RecordingDtm::default()).await;
    let client = DtmClient::new(&address, ChannelCache::new()).unwrap();
    let failure = client.submit(&order_saga("fail-1")).await.unwrap_err();
    assert!(matches!(&failure, ClientError::Failure(reason) if reason == "out of stock"), "{failure}");
    let ongoing = client.submit(&order_saga("ongoing-1")).await.unwrap_err();
    assert!(matches!(ongoing, ClientError::Ongoing), "{ongoing}");
    // dtm has no gRPC query.
    let gid = Gid::new("ok-1").unwrap();
    assert!(matches!(client.query(&gid).await, Err(ClientError::InvalidArgument(_))));
}

#[tokio::test]
async fn an_unreachable_or_silent_coordinator_is_unavailable() {
    let nobody = format!("127.0.0.1:{}", harness::closed_port());
    let client = DtmClient::new(&nobody, ChannelCache::new()).unwrap();
    let err = client.new_gid().await.unwrap_err();
    assert!(matches!(err, ClientError::Unavailable(_)), "{err}");

    let address = start_grpc_dtm(RecordingDtm::default()).await;
    let client = DtmClient::with_timeout(&address, ChannelCache::new(), Duration::from_millis(300)).unwrap();
    let err = client.submit(&order_saga("slow-1")).await.unwrap_err();
    assert!(matches!(err, ClientError::Unavailable(_)), "{err}");

    let err = DtmClient::new(
        &format!("http://127.0.0.1:{}/api/dtmsvr", harness::closed_port()),
        ChannelCache::new(),
    )
    .unwrap()
    .new_gid()
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Unavailable(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_the_coordinator_through_etcd_like_dtms_go_zero_driver() {
    let etcd = Etcd::start();
    let dtm = RecordingDtm::default();
    let address = start_grpc_dtm(dtm.clone()).await;
    let target = format!("etcd://{}/dtmservice-{}", etcd.hosts(), free_port());
    let channels = ChannelCache::new();
    let client = DtmClient::new(&target, channels.clone()).unwrap();

    // Not registered yet: refused as unavailable, not hanging.
    let err = client.new_gid().await.unwrap_err();
    assert!(matches!(err, ClientError::Unavailable(_)), "{err}");

    // dtm registers `dtmservice/<lease>` → its EndPoint, verbatim.
    let key = target.rsplit('/').next().unwrap();
    let registration =
        Registration::register_value(&EtcdConf::new(etcd.endpoints(), key), &address).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let gid = loop {
        match client.new_gid().await {
            Ok(gid) => break gid,
            Err(err) => assert!(tokio::time::Instant::now() < deadline, "never found dtm: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(gid.as_str(), "gid-from-grpc");
    client.submit(&order_saga("ok-etcd")).await.unwrap();
    assert_eq!(dtm.submits.lock().unwrap().len(), 1);
    registration.deregister().await.unwrap();
}

/// What the HTTP dtm recorded: (content type, body) of each submit.
type HttpLog = Log<(String, String)>;

async fn http_submit(State(log): State<HttpLog>, headers: HeaderMap, body: String) -> (StatusCode, String) {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let fail = body.contains(r#""gid":"fail"#);
    let ongoing = body.contains(r#""gid":"ongoing"#);
    log.lock().unwrap().push((content_type, body));
    if fail {
        (StatusCode::CONFLICT, r#"{"dtm_result":"FAILURE","message":"out of stock"}"#.into())
    } else if ongoing {
        (StatusCode::from_u16(425).unwrap(), r#"{"dtm_result":"ONGOING"}"#.into())
    } else {
        (StatusCode::OK, r#"{"dtm_result":"SUCCESS"}"#.into())
    }
}

async fn http_query(Query(params): Query<Vec<(String, String)>>) -> (StatusCode, String) {
    let gid = params.iter().find(|(k, _)| k == "gid").map(|(_, v)| v.clone()).unwrap_or_default();
    if gid == "a+b&c=d%" {
        let body = r#"{"branches":[{"gid":"a+b&c=d%","url":"http://h/TransOut","branch_id":"01","op":"action","status":"failed"}],
            "transaction":{"gid":"a+b&c=d%","trans_type":"saga","status":"failed","rollback_reason":"out of stock"}}"#;
        (StatusCode::OK, body.into())
    } else {
        (StatusCode::OK, r#"{"branches":[],"transaction":null}"#.into())
    }
}

/// Starts the HTTP dtm; returns its base URL (…/api/dtmsvr).
async fn start_http_dtm(log: HttpLog) -> String {
    let app = axum::Router::new()
        .route("/api/dtmsvr/newGid", get(|| async { r#"{"gid":"gid-from-http","dtm_result":"SUCCESS"}"# }))
        .route("/api/dtmsvr/submit", post(http_submit))
        .route("/api/dtmsvr/query", get(http_query))
        .with_state(log);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api/dtmsvr", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn http_submit_posts_dtms_json_body_and_maps_answers() {
    let log = HttpLog::default();
    let base = start_http_dtm(log.clone()).await;
    let client = DtmClient::new(&base, ChannelCache::new()).unwrap();
    assert_eq!(client.new_gid().await.unwrap().as_str(), "gid-from-http");

    let saga = Saga::new(Gid::new("ok-http").unwrap())
        .add_json("http://h/TransOut", "http://h/TransOutRevert", &serde_json::json!({"amount": 30}))
        .unwrap();
    client.submit(&saga).await.unwrap();
    let (content_type, body) = log.lock().unwrap()[0].clone();
    assert_eq!(content_type, "application/json");
    assert_eq!(body, saga.request().unwrap().to_http_json().unwrap());

    let fail = Saga::new(Gid::new("fail-http").unwrap());
    let err = client.submit(&fail).await.unwrap_err();
    assert!(matches!(&err, ClientError::Failure(reason) if reason == "out of stock"), "{err}");
    let err = client.submit(&Saga::new(Gid::new("ongoing-http").unwrap())).await.unwrap_err();
    assert!(matches!(err, ClientError::Ongoing), "{err}");
}

#[tokio::test]
async fn http_query_returns_typed_status_and_branches() {
    let base = start_http_dtm(HttpLog::default()).await;
    let client = DtmClient::new(&base, ChannelCache::new()).unwrap();
    // The gid is sent URL-encoded and arrives intact.
    let result = client.query(&Gid::new("a+b&c=d%").unwrap()).await.unwrap();
    let transaction = result.transaction.unwrap();
    assert_eq!(transaction.status, TransStatus::Failed);
    assert_eq!(transaction.rollback_reason.as_deref(), Some("out of stock"));
    assert_eq!(result.branches.len(), 1);
    assert_eq!(result.branches[0].op, "action");

    let unknown = client.query(&Gid::new("nope").unwrap()).await.unwrap();
    assert!(unknown.transaction.is_none());
    assert!(unknown.branches.is_empty());
}
