//! Registration, resolution and balancing against a real etcd and real
//! tonic servers.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use discovery::{
    ChannelCache, DiscoveryError, EtcdConf, LEASE_TTL_SECS, Registration, Resolver, RpcClientConf,
    balanced_channel, direct_channel, parse_server_method, publish_address, rpc_client_channel,
};
use etcd_client::{Client, GetOptions};
use harness::Etcd;
use proto::order::{CREATE_PATH, CreateReq, CreateResp, Order, OrderClient, OrderServer};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Polls `check` every 100 ms until it holds; panics after 30 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn etcd_client(etcd: &Etcd) -> Client {
    Client::connect(etcd.endpoints(), None).await.unwrap()
}

/// Every `key → value` under `prefix/`.
async fn instances(client: &mut Client, prefix: &str) -> Vec<(String, String, i64)> {
    let response = client.get(format!("{prefix}/"), Some(GetOptions::new().with_prefix())).await.unwrap();
    response
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string(), kv.lease()))
        .collect()
}

/// A tiny `pb.order` server that counts the calls it gets.
#[derive(Clone, Default)]
struct CountingOrder {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Order for CountingOrder {
    async fn create(&self, _request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(CreateResp {}))
    }
    async fn create_rollback(&self, _request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        Ok(Response::new(CreateResp {}))
    }
}

/// A running server: its address, call counter and shutdown switch.
struct TestServer {
    address: String,
    calls: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start() -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let service = CountingOrder::default();
        let calls = service.calls.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(OrderServer::new(service))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = rx.await;
                    },
                )
                .await
                .unwrap();
        });
        TestServer { address, calls, shutdown: Some(tx), task }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

async fn call(channel: &Channel) -> Result<(), Status> {
    let mut client = OrderClient::new(channel.clone());
    let mut request = Request::new(CreateReq { goods_id: 1, user_id: 1, num: 1 });
    request.set_timeout(Duration::from_secs(2));
    tokio::time::timeout(Duration::from_secs(3), client.create(request))
        .await
        .map_err(|_| Status::deadline_exceeded("local timeout"))?
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_go_zeros_key_value_and_lease() {
    let etcd = Etcd::start();
    let mut client = etcd_client(&etcd).await;
    let conf = EtcdConf::new(etcd.endpoints(), "reg-format.rpc");

    let registration = Registration::register(&conf, "0.0.0.0:9001").await.unwrap();
    let key = registration.key();
    let id = key.strip_prefix("reg-format.rpc/").expect("key is <Key>/<id>");
    let lease_id: i64 = id.parse().expect("the id is a decimal integer");
    assert_eq!(registration.value(), publish_address("0.0.0.0:9001").unwrap());
    assert!(!registration.value().starts_with("0.0.0.0"), "the wildcard host is replaced");

    let stored = instances(&mut client, "reg-format.rpc").await;
    assert_eq!(stored, vec![(key.clone(), registration.value().to_string(), lease_id)]);
    let ttl = client.lease_time_to_live(lease_id, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), LEASE_TTL_SECS);
    assert!(ttl.ttl() > 0 && ttl.ttl() <= LEASE_TTL_SECS, "ttl {}", ttl.ttl());

    // An explicit host is published verbatim, and a literal value too.
    let explicit = Registration::register(&conf, "127.0.0.1:9002").await.unwrap();
    assert_eq!(explicit.value(), "127.0.0.1:9002");
    let literal = Registration::register_value(&conf, "localhost:36790").await.unwrap();
    assert_eq!(literal.value(), "localhost:36790");
    assert_eq!(instances(&mut client, "reg-format.rpc").await.len(), 3);

    // Deregistering revokes the lease: the key is gone at once.
    registration.deregister().await.unwrap();
    explicit.deregister().await.unwrap();
    literal.deregister().await.unwrap();
    assert!(instances(&mut client, "reg-format.rpc").await.is_empty());
    let revoked = client.lease_time_to_live(lease_id, None).await.unwrap();
    assert_eq!(revoked.ttl(), -1, "the lease no longer exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_id_replaces_the_lease_id_in_the_key() {
    let etcd = Etcd::start();
    let mut client = etcd_client(&etcd).await;
    let mut conf = EtcdConf::new(etcd.endpoints(), "fixed-id.rpc");
    conf.id = Some(42);
    let registration = Registration::register(&conf, "127.0.0.1:9001").await.unwrap();
    assert_eq!(registration.key(), "fixed-id.rpc/42");
    let stored = instances(&mut client, "fixed-id.rpc").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, "fixed-id.rpc/42");
    assert!(stored[0].2 != 0, "still under a lease");
    registration.deregister().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_again_with_a_new_lease_when_the_lease_is_revoked() {
    let etcd = Etcd::start();
    let mut client = etcd_client(&etcd).await;
    let conf = EtcdConf::new(etcd.endpoints(), "re-register.rpc");
    let registration = Registration::register(&conf, "127.0.0.1:9100").await.unwrap();
    let old_key = registration.key();
    let old_lease: i64 = old_key.rsplit('/').next().unwrap().parse().unwrap();

    // Someone revokes our lease behind our back (or it expired during a partition).
    client.lease_revoke(old_lease).await.unwrap();

    let mut keys = registration.key_updates();
    tokio::time::timeout(Duration::from_secs(30), keys.wait_for(|key| *key != old_key))
        .await
        .expect("re-registered in time")
        .unwrap();
    let new_key = registration.key();
    let new_lease: i64 = new_key.rsplit('/').next().unwrap().parse().unwrap();
    assert_ne!(new_lease, old_lease);
    assert_eq!(
        instances(&mut client, "re-register.rpc").await,
        vec![(new_key, "127.0.0.1:9100".to_string(), new_lease)]
    );
    registration.deregister().await.unwrap();
    assert!(instances(&mut client, "re-register.rpc").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_the_key_back_when_it_is_deleted_while_the_lease_lives() {
    let etcd = Etcd::start();
    let mut client = etcd_client(&etcd).await;
    let conf = EtcdConf::new(etcd.endpoints(), "re-put.rpc");
    let registration = Registration::register(&conf, "127.0.0.1:9200").await.unwrap();
    let key = registration.key();

    client.delete(key.clone(), None).await.unwrap();
    eventually("the key is put back", || {
        let mut client = client.clone();
        async move { instances(&mut client, "re-put.rpc").await.len() == 1 }
    })
    .await;
    let stored = instances(&mut client, "re-put.rpc").await;
    assert_eq!(stored[0].0, key, "same lease, same key");
    assert_eq!(stored[0].1, "127.0.0.1:9200");
    registration.deregister().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_follows_instances_under_the_exact_prefix() {
    let etcd = Etcd::start();
    let mut client = etcd_client(&etcd).await;
    let conf = EtcdConf::new(etcd.endpoints(), "resolve.rpc");
    // A sibling service whose key merely starts with ours must not match.
    client.put("resolve.rpc2/1", "127.0.0.1:1", None).await.unwrap();

    let a = Registration::register(&conf, "127.0.0.1:1111").await.unwrap();
    let resolver = Resolver::connect(&conf).await.unwrap();
    assert_eq!(resolver.current(), BTreeSet::from(["127.0.0.1:1111".to_string()]));

    let b = Registration::register(&conf, "127.0.0.1:2222").await.unwrap();
    // A second key with a value already known is the same instance.
    let twin = Registration::register(&conf, "127.0.0.1:2222").await.unwrap();
    let mut addresses = resolver.addresses();
    let both = BTreeSet::from(["127.0.0.1:1111".to_string(), "127.0.0.1:2222".to_string()]);
    tokio::time::timeout(Duration::from_secs(10), addresses.wait_for(|set| *set == both))
        .await
        .expect("sees both instances")
        .unwrap();

    a.deregister().await.unwrap();
    let only_b = BTreeSet::from(["127.0.0.1:2222".to_string()]);
    tokio::time::timeout(Duration::from_secs(10), addresses.wait_for(|set| *set == only_b))
        .await
        .expect("drops the deregistered instance")
        .unwrap();

    twin.deregister().await.unwrap();
    b.deregister().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), addresses.wait_for(BTreeSet::is_empty))
        .await
        .expect("ends empty")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_channel_spreads_calls_and_survives_an_instance_leaving() {
    let etcd = Etcd::start();
    let conf = EtcdConf::new(etcd.endpoints(), "balance.rpc");
    let one = TestServer::start().await;
    let two = TestServer::start().await;
    let reg_one = Registration::register(&conf, &one.address).await.unwrap();
    let reg_two = Registration::register(&conf, &two.address).await.unwrap();

    let channel = balanced_channel(&conf.target()).await.unwrap();
    eventually("both instances get calls", || {
        let channel = channel.clone();
        let (one, two) = (one.calls(), two.calls());
        async move {
            call(&channel).await.unwrap();
            one > 0 && two > 0
        }
    })
    .await;

    // Instance one shuts down like a go-zero server: deregister, then stop.
    reg_one.deregister().await.unwrap();
    one.stop().await;
    // Calls already routed to the leaving instance may fail (go-zero does
    // not retry them either); once the removal is seen, all must succeed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut successes_in_a_row = 0;
    while successes_in_a_row < 20 {
        assert!(tokio::time::Instant::now() < deadline, "calls keep failing after the instance left");
        match call(&channel).await {
            Ok(()) => successes_in_a_row += 1,
            Err(_) => successes_in_a_row = 0,
        }
    }
    let before = two.calls();
    for _ in 0..10 {
        call(&channel).await.unwrap();
    }
    assert_eq!(two.calls(), before + 10, "every call now goes to the remaining instance");
    reg_two.deregister().await.unwrap();
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_channel_spreads_calls_over_a_fixed_list() {
    let one = TestServer::start().await;
    let two = TestServer::start().await;
    let channel = direct_channel(&[one.address.clone(), two.address.clone()]).unwrap();
    eventually("both instances get calls", || {
        let channel = channel.clone();
        let (one, two) = (one.calls(), two.calls());
        async move {
            call(&channel).await.unwrap();
            one > 0 && two > 0
        }
    })
    .await;
    // The go-zero `direct:///` spelling of the same list works too.
    let channel = balanced_channel(&format!("direct:///{},{}", one.address, two.address)).await.unwrap();
    call(&channel).await.unwrap();
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_cache_resolves_dtm_branch_urls() {
    let etcd = Etcd::start();
    let conf = EtcdConf::new(etcd.endpoints(), "cache.rpc");
    let server = TestServer::start().await;
    let registration = Registration::register(&conf, &server.address).await.unwrap();
    let cache = ChannelCache::new();

    // The URL the order API puts in a saga step, split as dtm splits it.
    let url = format!("{}{CREATE_PATH}", conf.target());
    let (target, method) = parse_server_method(&url).unwrap();
    assert_eq!(target, conf.target());
    assert_eq!(method, CREATE_PATH);
    let channel = cache.get(&target).await.unwrap();
    call(&channel).await.unwrap();
    // Same target → the cached channel.
    let again = cache.get(&target).await.unwrap();
    call(&again).await.unwrap();
    assert_eq!(server.calls(), 2);

    // host:port targets work without etcd.
    let direct = cache.get(&server.address).await.unwrap();
    call(&direct).await.unwrap();

    // A service with no live instance is refused up front.
    let missing = format!("etcd://{}/nobody.rpc", etcd.hosts());
    assert!(matches!(cache.get(&missing).await, Err(DiscoveryError::NoInstances(_))));
    // A malformed target is a configuration error.
    assert!(matches!(cache.get("consul://x:8500/a").await, Err(DiscoveryError::Config(_))));

    registration.deregister().await.unwrap();
    eventually("the cache sees the instance gone", || {
        let cache = cache.clone();
        let target = target.clone();
        async move { matches!(cache.get(&target).await, Err(DiscoveryError::NoInstances(_))) }
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_resolver_recover_from_an_etcd_restart() {
    let mut etcd = Etcd::start_private();
    let conf = EtcdConf::new(etcd.endpoints(), "restart.rpc");
    let registration = Registration::register(&conf, "127.0.0.1:3333").await.unwrap();
    let resolver = Resolver::connect(&conf).await.unwrap();
    let first_key = registration.key();
    assert_eq!(resolver.current(), BTreeSet::from(["127.0.0.1:3333".to_string()]));

    etcd.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.restart();

    // The publisher notices its keepalive stream broke and registers a new
    // lease; the resolver reloads and keeps following the prefix.
    let mut keys = registration.key_updates();
    tokio::time::timeout(Duration::from_secs(30), keys.wait_for(|key| *key != first_key))
        .await
        .expect("re-registered after the restart")
        .unwrap();
    let late = Registration::register(&conf, "127.0.0.1:4444").await.unwrap();
    let both = BTreeSet::from(["127.0.0.1:3333".to_string(), "127.0.0.1:4444".to_string()]);
    let mut addresses = resolver.addresses();
    tokio::time::timeout(Duration::from_secs(30), addresses.wait_for(|set| *set == both))
        .await
        .expect("the resolver follows changes made after the restart")
        .unwrap();

    let mut client = etcd_client(&etcd).await;
    let stored: BTreeSet<String> =
        instances(&mut client, "restart.rpc").await.into_iter().map(|(key, _, _)| key).collect();
    assert!(stored.contains(&registration.key()));
    assert!(!stored.contains(&first_key), "the old lease was revoked, not left to expire");
    late.deregister().await.unwrap();
    registration.deregister().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_client_conf_channels_honour_non_block() {
    let etcd = Etcd::start();
    let etcd_conf = EtcdConf::new(etcd.endpoints(), "non-block.rpc");
    let mut conf = RpcClientConf::from_etcd(etcd_conf.clone());

    // NonBlock: false and nobody registered: refuse, like a go-zero client.
    conf.non_block = false;
    assert!(matches!(rpc_client_channel(&conf).await, Err(DiscoveryError::NoInstances(_))));

    // NonBlock: true (default): a channel at once, usable once an instance appears.
    conf.non_block = true;
    let channel = rpc_client_channel(&conf).await.unwrap();
    let server = TestServer::start().await;
    let registration = Registration::register(&etcd_conf, &server.address).await.unwrap();
    call(&channel).await.unwrap();
    assert_eq!(server.calls(), 1);

    // Endpoints bypass etcd entirely.
    let direct =
        rpc_client_channel(&RpcClientConf::from_endpoints(vec![server.address.clone()])).await.unwrap();
    call(&direct).await.unwrap();
    assert_eq!(server.calls(), 2);
    registration.deregister().await.unwrap();
    server.stop().await;
}
