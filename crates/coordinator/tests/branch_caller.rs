//! The branch caller against real local servers that misbehave: an HTTP
//! branch answering with a huge (or endless) body or a redirect, and branch
//! URLs naming ever new gRPC servers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use coordinator::branch::{BranchCaller, BranchRequest, MAX_REPLY_BYTES};
use coordinator::model::BranchUrl;
use dtm_protocol::{BranchCall, BranchId, BranchResult, Gid, Op, TransType};
use proto::order::{CreateReq, CreateResp, Order, OrderServer};
use tonic::{Request, Status};

/// Calls to `/ok`, the redirect's target.
#[derive(Clone, Default)]
struct Hits(Arc<AtomicUsize>);

const SUCCESS: &str = r#"{"dtm_result":"SUCCESS"}"#;

/// `/ok`; `/big` (one byte over the cap, with Content-Length); `/endless`
/// (64 KiB chunks forever, no length); `/exact` (exactly the cap);
/// `/redirect` (302 to `/ok`), `/moved` (308 to `/ok`, body says SUCCESS).
async fn start_http() -> (String, Hits) {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/ok",
            any(|State(hits): State<Hits>| async move {
                hits.0.fetch_add(1, Ordering::SeqCst);
                SUCCESS
            }),
        )
        .route("/big", any(|| async { vec![b' '; MAX_REPLY_BYTES + 1] }))
        .route(
            "/exact",
            any(|| async { format!("{SUCCESS}{}", " ".repeat(MAX_REPLY_BYTES - SUCCESS.len())) }),
        )
        .route(
            "/endless",
            any(|| async {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let stream = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
                Response::new(Body::from_stream(stream))
            }),
        )
        .route("/redirect", any(|| async { (StatusCode::FOUND, [(header::LOCATION, "/ok")]) }))
        .route(
            "/moved",
            any(|| async {
                (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/ok")], SUCCESS).into_response()
            }),
        )
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

async fn call(caller: &BranchCaller, url: &str) -> BranchResult {
    let url = BranchUrl::parse(url).unwrap();
    let (gid, branch_id, headers) = (Gid::new("caller-1").unwrap(), BranchId::nth(0), BTreeMap::new());
    caller
        .call(&BranchRequest {
            url: &url,
            payload: b"",
            call: BranchCall::new(gid, TransType::Saga, branch_id, Op::Action),
            headers: &headers,
            trace: None,
            timeout: Duration::from_secs(10),
        })
        .await
}

#[tokio::test]
async fn http_replies_are_read_up_to_the_cap_and_no_further() {
    let (base, _) = start_http().await;
    let caller = BranchCaller::new(None).unwrap();
    assert_eq!(call(&caller, &format!("{base}/ok")).await, BranchResult::Success);
    assert_eq!(
        call(&caller, &format!("{base}/exact")).await,
        BranchResult::Success,
        "the cap itself is fine"
    );
    for path in ["/big", "/endless"] {
        // `/endless` never ends: only the cap makes this call return.
        let result = tokio::time::timeout(Duration::from_secs(20), call(&caller, &format!("{base}{path}")))
            .await
            .expect("the read stops at the cap");
        match result {
            BranchResult::Retry(message) => {
                assert!(
                    message.contains(&format!("larger than {MAX_REPLY_BYTES} bytes")),
                    "{path}: {message}"
                );
                assert!(message.len() < 1024, "the message does not carry the body: {}", message.len());
            }
            other => panic!("{path}: expected a retry, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn http_redirects_are_retryable_errors_and_not_followed() {
    let (base, hits) = start_http().await;
    let caller = BranchCaller::new(None).unwrap();
    for path in ["/redirect", "/moved"] {
        match call(&caller, &format!("{base}{path}")).await {
            BranchResult::Retry(message) => {
                assert!(message.contains("redirect") && message.contains("\"/ok\""), "{path}: {message}");
            }
            other => panic!("{path}: expected a retry, got {other:?}"),
        }
    }
    assert_eq!(hits.0.load(Ordering::SeqCst), 0, "the redirect target was never called");
    assert_eq!(call(&caller, &format!("{base}/ok")).await, BranchResult::Success);
    assert_eq!(hits.0.load(Ordering::SeqCst), 1);
}

#[derive(Clone, Default)]
struct Orders;

#[tonic::async_trait]
impl Order for Orders {
    async fn create(&self, _: Request<CreateReq>) -> Result<tonic::Response<CreateResp>, Status> {
        Ok(tonic::Response::new(CreateResp {}))
    }

    async fn create_rollback(&self, _: Request<CreateReq>) -> Result<tonic::Response<CreateResp>, Status> {
        Ok(tonic::Response::new(CreateResp {}))
    }
}

#[tokio::test]
async fn the_grpc_channel_map_stays_within_its_capacity() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = listener.local_addr().unwrap().to_string();
    let incoming = futures::stream::unfold(listener, |listener| async move {
        Some((listener.accept().await.map(|(stream, _)| stream), listener))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(OrderServer::new(Orders))
            .serve_with_incoming(incoming),
    );

    let caller = BranchCaller::with_channel_capacity(None, 4).unwrap();
    let live_url = format!("{live}/pb.order/create");
    assert_eq!(call(&caller, &live_url).await, BranchResult::Success);
    assert_eq!(caller.cached_channels(), 1);
    // Forty distinct servers nobody listens on (127.0.0.0/8 is all loopback):
    // each gets a channel, the map never holds more than four.
    for i in 0..40 {
        let result = call(&caller, &format!("127.0.{}.{}:1/pb.order/create", i / 200, i % 200 + 2)).await;
        assert!(matches!(result, BranchResult::Retry(_)), "{result:?}");
        assert!(caller.cached_channels() <= 4, "{} channels", caller.cached_channels());
    }
    assert_eq!(caller.cached_channels(), 4);
    // The live server's channel was evicted long ago: the next call connects again.
    assert_eq!(call(&caller, &live_url).await, BranchResult::Success);
    assert!(caller.cached_channels() <= 4);
}
