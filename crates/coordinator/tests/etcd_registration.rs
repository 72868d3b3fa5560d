//! The coordinator in etcd, in go-zero's format, against a real etcd.
//!
//! * The real binary registers `dtmservice/<lease id in decimal>` → its
//!   `EndPoint` verbatim under a 10 s lease once it serves, and revokes it on
//!   SIGTERM before exiting with code 0 — exactly what dtm's go-zero driver
//!   does, so `etcd://…/dtmservice` clients find it and stop finding it.
//! * Branch URLs such as `etcd://127.0.0.1:2379/order.rpc/pb.order/create`
//!   are resolved through etcd: two instances of a branch service registered
//!   by the discovery crate share the calls, and when one stops mid-run the
//!   sagas still complete on the other.

mod edges_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edges_support::{CoordinatorProcess, InProcess, post, wait_final};
use etcd_client::GetOptions;
use prost::Message;
use proto::order::{CreateReq, CreateResp, Order, OrderServer};
use serde_json::json;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

async fn etcd_keys(endpoints: &[String], prefix: &str) -> Vec<(String, String, i64)> {
    let mut client = etcd_client::Client::connect(endpoints, None).await.expect("connect etcd");
    let reply = client.get(prefix, Some(GetOptions::new().with_prefix())).await.expect("etcd get");
    reply
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string(), kv.lease()))
        .collect()
}

#[tokio::test]
async fn the_binary_registers_dtmservice_and_revokes_it_on_sigterm() {
    let etcd = harness::Etcd::start();
    let endpoints = etcd.endpoints();
    let dir = tempfile::tempdir().unwrap();
    // dtm's own key, as `etcd://localhost:2379/dtmservice` clients expect.
    let key = "dtmservice";
    let yaml = format!(
        "Store:\n  Db: {}\nRetryInterval: 1\nTimeoutToFail: 3\nTransCronInterval: 1\n\
         MicroService:\n  Driver: dtm-driver-gozero\n  Target: etcd://{}/{key}\n  EndPoint: dtm.example:36790\n",
        dir.path().join("c.db").display(),
        etcd.hosts()
    );
    let mut coordinator = CoordinatorProcess::start(dir.path(), "registered", &yaml);

    let deadline = Instant::now() + Duration::from_secs(15);
    let registered = loop {
        let keys = etcd_keys(&endpoints, &format!("{key}/")).await;
        if !keys.is_empty() {
            break keys;
        }
        assert!(Instant::now() < deadline, "no registration:\n{}", coordinator.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(registered.len(), 1, "{registered:?}");
    let (full_key, value, lease) = &registered[0];
    assert_eq!(full_key, &format!("{key}/{lease}"), "key = <key>/<lease id in decimal>");
    assert_eq!(value, "dtm.example:36790", "EndPoint is published verbatim");
    let mut client = etcd_client::Client::connect(&endpoints, None).await.unwrap();
    let ttl = client.lease_time_to_live(*lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 10, "go-zero's 10 s lease");

    // The API is up while registered.
    let c = reqwest::Client::new();
    assert_eq!(c.get(format!("{}/api/ping", coordinator.http())).send().await.unwrap().status(), 200);

    let status = coordinator.terminate();
    assert_eq!(status.code(), Some(0), "graceful exit:\n{}", coordinator.log_tail());
    assert!(
        etcd_keys(&endpoints, &format!("{key}/")).await.is_empty(),
        "the key must be revoked, not left to expire"
    );
    let log = std::fs::read_to_string(&coordinator.log).unwrap();
    let deregistered = log.find("deregistered").expect("deregistration logged");
    let stopped = log.find("coordinator stopped").expect("stop logged");
    assert!(deregistered < stopped, "deregister happens before draining:\n{log}");
}

/// One instance of the order service, counting the calls it served.
#[derive(Clone, Default)]
struct Instance {
    calls: Arc<Mutex<u32>>,
}

#[tonic::async_trait]
impl Order for Instance {
    async fn create(&self, _request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        *self.calls.lock().unwrap() += 1;
        Ok(Response::new(CreateResp {}))
    }

    async fn create_rollback(&self, _request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        *self.calls.lock().unwrap() += 1;
        Ok(Response::new(CreateResp {}))
    }
}

/// A running, registered instance; `stop` deregisters then stops serving.
struct Running {
    instance: Instance,
    registration: Option<discovery::Registration>,
    stop: Option<oneshot::Sender<()>>,
}

impl Running {
    async fn start(endpoints: &[String], key: &str) -> Running {
        let instance = Instance::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming =
            futures::stream::unfold(listener, |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) });
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(OrderServer::new(instance.clone()))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.await;
                }),
        );
        let conf = discovery::EtcdConf::new(endpoints.to_vec(), key);
        let registration = discovery::Registration::register_value(&conf, addr.to_string()).await.unwrap();
        Running { instance, registration: Some(registration), stop: Some(stop) }
    }

    async fn stop(&mut self) {
        if let Some(registration) = self.registration.take() {
            registration.deregister().await.unwrap();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    fn calls(&self) -> u32 {
        *self.instance.calls.lock().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_branch_urls_are_resolved_and_survive_losing_an_instance() {
    let etcd = harness::Etcd::start();
    let endpoints = etcd.endpoints();
    let key = format!("order{}.rpc", std::process::id());
    let mut a = Running::start(&endpoints, &key).await;
    let b = Running::start(&endpoints, &key).await;
    let coordinator = InProcess::sqlite(|_| {}).await;
    let c = reqwest::Client::new();
    let server = format!("etcd://{}/{key}", etcd.hosts());
    let payload = String::from_utf8(CreateReq { goods_id: 1, user_id: 1, num: 1 }.encode_to_vec()).unwrap();

    let submit = |gid: String| {
        let (c, base) = (c.clone(), coordinator.http.clone());
        let body = json!({
            "gid": gid, "trans_type": "saga", "protocol": "grpc", "wait_result": true,
            "steps": [{"action": format!("{server}/pb.order/create"), "compensate": format!("{server}/pb.order/createRollback")},
                      {"action": format!("{server}/pb.order/create"), "compensate": format!("{server}/pb.order/createRollback")}],
            "payloads": [payload.clone(), payload.clone()],
        });
        async move { post(&c, &format!("{base}/api/dtmsvr/submit"), &body).await }
    };

    let mut gids = Vec::new();
    for i in 0..10 {
        let gid = format!("etcd-{i}");
        let (status, reply) = submit(gid.clone()).await;
        assert_eq!(status, 200, "{gid}: {reply}");
        gids.push(gid);
    }
    assert!(a.calls() > 0 && b.calls() > 0, "both instances serve: a={} b={}", a.calls(), b.calls());

    // One instance goes away mid-run; the next sagas must still complete.
    a.stop().await;
    let a_calls = a.calls();
    for i in 10..20 {
        let gid = format!("etcd-{i}");
        let (status, _reply) = submit(gid.clone()).await;
        // A call already routed to the stopping instance may fail once and be
        // retried later: wait_result then answers 409/425 while the saga lives on.
        assert!([200, 409, 425].contains(&status), "{gid}: {status}");
        gids.push(gid);
    }
    for gid in &gids {
        assert_eq!(wait_final(&c, &coordinator.http, gid, Duration::from_secs(30)).await, "succeed", "{gid}");
    }
    assert_eq!(a.calls(), a_calls, "a stopped instance receives nothing");
    assert!(b.calls() >= 20, "b took over: {}", b.calls());
    coordinator.stop().await.expect("clean shutdown");
}
