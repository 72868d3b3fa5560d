//! `GrpcServer` against a real etcd: it registers in go-zero's format,
//! answers health checks, and on shutdown removes the key before draining.

use std::time::Duration;

use discovery::EtcdConf;
use etcd_client::{Client, GetOptions};
use harness::Etcd;
use service_kit::grpc::{GrpcServer, GrpcSettings};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn keys_under(etcd: &Etcd, prefix: &str) -> Vec<(String, String)> {
    let mut client = Client::connect(etcd.endpoints(), None).await.expect("etcd client");
    let reply = client.get(prefix, Some(GetOptions::new().with_prefix())).await.expect("etcd get");
    reply
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string()))
        .collect()
}

#[tokio::test]
async fn registers_serves_health_and_deregisters_before_draining() {
    harness::init_tracing();
    let etcd = Etcd::start();
    let settings = GrpcSettings { deregister_grace: Duration::from_secs(2), ..GrpcSettings::default() };
    let server = GrpcServer::bind("127.0.0.1:0", settings)
        .await
        .unwrap()
        .register_in(Some(EtcdConf::new(etcd.endpoints(), "kit-test.rpc")));
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0, "port 0 is resolved at bind time");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run_until_stopped(async {
        let _ = stop_rx.await;
    }));

    // Registered as go-zero does: `<Key>/<lease id in decimal>` → `host:port`.
    let mut registered = Vec::new();
    for _ in 0..100 {
        registered = keys_under(&etcd, "kit-test.rpc/").await;
        if !registered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(registered.len(), 1, "{registered:?}");
    let (key, value) = &registered[0];
    let id = key.strip_prefix("kit-test.rpc/").unwrap();
    assert!(id.parse::<i64>().is_ok(), "lease id in decimal: {key}");
    assert_eq!(value, &addr.to_string());

    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(status.into_inner().status(), ServingStatus::Serving);

    stop_tx.send(()).unwrap();
    // First the key goes…
    let mut gone = false;
    for _ in 0..40 {
        if keys_under(&etcd, "kit-test.rpc/").await.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gone, "key removed on graceful stop");
    // …while the server still answers (health says NOT_SERVING): draining
    // comes only after the deregistration grace period.
    let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(status.into_inner().status(), ServingStatus::NotServing);

    tokio::time::timeout(Duration::from_secs(10), running).await.unwrap().unwrap().unwrap();
    assert!(
        Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.is_err(),
        "listener closed after drain"
    );
}

#[tokio::test]
async fn unreachable_etcd_fails_start_up() {
    let dead = format!("127.0.0.1:{}", harness::closed_port());
    let server = GrpcServer::bind("127.0.0.1:0", GrpcSettings::default())
        .await
        .unwrap()
        .register_in(Some(EtcdConf::new(vec![dead], "kit-test.rpc")));
    let result =
        tokio::time::timeout(Duration::from_secs(30), server.run_until_stopped(std::future::pending()))
            .await
            .expect("start-up gives up instead of hanging");
    assert!(matches!(result, Err(service_kit::ServeError::Register(_))), "{result:?}");
}

#[tokio::test]
async fn bind_errors_name_the_address() {
    let taken = GrpcServer::bind("127.0.0.1:0", GrpcSettings::default()).await.unwrap();
    let addr = taken.local_addr().to_string();
    let Err(err) = GrpcServer::bind(&addr, GrpcSettings::default()).await else {
        panic!("second bind on {addr} must fail");
    };
    assert!(err.to_string().contains(&addr), "{err}");
}

/// Lists services through gRPC reflection, or returns the error status.
async fn reflected_services(addr: std::net::SocketAddr) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies =
        ServerReflectionClient::new(channel).server_reflection_info(once_stream(request)).await?.into_inner();
    let reply = replies.message().await?.expect("one reply");
    match reply.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("unexpected reflection reply {other:?}"),
    }
}

/// A one-item request stream.
fn once_stream<T: Send + 'static>(item: T) -> impl tokio_stream::Stream<Item = T> + Send + 'static {
    tokio_stream::iter(std::iter::once(item))
}

#[tokio::test]
async fn reflection_is_offered_only_when_asked() {
    for reflection in [true, false] {
        let settings = GrpcSettings { reflection, ..GrpcSettings::default() };
        let server = GrpcServer::bind("127.0.0.1:0", settings).await.unwrap();
        let addr = server.local_addr();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run_until_stopped(async {
            let _ = stop_rx.await;
        }));
        let listed = reflected_services(addr).await;
        if reflection {
            let services = listed.expect("reflection answers");
            for name in ["pb.order", "pb.stock", "grpc.health.v1.Health"] {
                assert!(services.iter().any(|s| s == name), "{name} in {services:?}");
            }
        } else {
            assert_eq!(listed.unwrap_err().code(), tonic::Code::Unimplemented);
        }
        stop_tx.send(()).unwrap();
        running.await.unwrap().unwrap();
    }
}
