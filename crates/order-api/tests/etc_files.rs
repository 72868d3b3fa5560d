//! The `etc/` files a user gets parse into the three services' configs,
//! with the defaults of the Go demo and with environment overrides.

use std::path::{Path, PathBuf};

use service_kit::config::parse_yaml;

fn etc(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

#[test]
fn defaults_are_the_go_demos() {
    let (path, text) = etc("order-srv.yaml");
    let order: order_srv::Config = parse_yaml(&path, &text, |_| None).unwrap();
    assert_eq!((order.name.as_str(), order.listen_on.as_str()), ("order.rpc", "0.0.0.0:9001"));
    let etcd = order.etcd.unwrap();
    assert_eq!((etcd.hosts, etcd.key.as_str()), (vec!["127.0.0.1:2379".to_string()], "order.rpc"));
    assert_eq!(order.db.data_source.database().as_deref(), Some("dtm-gozero-order"));
    assert_eq!(
        order.db.data_source.redacted(),
        "mysql://root:***@127.0.0.1:3306/dtm-gozero-order?charset=utf8mb4"
    );

    let (path, text) = etc("stock-srv.yaml");
    let stock: stock_srv::Config = parse_yaml(&path, &text, |_| None).unwrap();
    assert_eq!((stock.name.as_str(), stock.listen_on.as_str()), ("stock.rpc", "0.0.0.0:9002"));
    assert_eq!(stock.etcd.unwrap().key, "stock.rpc");

    let (path, text) = etc("order-api.yaml");
    let api: order_api::Config = parse_yaml(&path, &text, |_| None).unwrap();
    assert_eq!(api.port, 8889);
    assert_eq!(api.dtm_server, "etcd://127.0.0.1:2379/dtmservice");
    assert!(api.validate().is_ok());
    assert_eq!(
        order_api::config::branch_base(&api.order_rpc_conf).unwrap(),
        "etcd://127.0.0.1:2379/order.rpc"
    );
    assert_eq!(
        order_api::config::branch_base(&api.stock_rpc_conf).unwrap(),
        "etcd://127.0.0.1:2379/stock.rpc"
    );
}

#[test]
fn environment_overrides_hosts_ports_and_dsns() {
    let env = |name: &str| match name {
        "ETCD_HOSTS" => Some("10.0.0.1:2379,10.0.0.2:2379".to_string()),
        "ORDER_DSN" => Some("mysql://app:s3cret@db:3306/orders".to_string()),
        "ORDER_SRV_LISTEN_ON" => Some("127.0.0.1:0".to_string()),
        "ORDER_API_LISTEN_PORT" => Some("0".to_string()),
        "DTM_SERVER" => Some("127.0.0.1:36790".to_string()),
        _ => None,
    };
    let (path, text) = etc("order-srv.yaml");
    let order: order_srv::Config = parse_yaml(&path, &text, env).unwrap();
    assert_eq!(order.listen_on, "127.0.0.1:0");
    assert_eq!(order.etcd.unwrap().hosts, vec!["10.0.0.1:2379", "10.0.0.2:2379"]);
    assert_eq!(order.db.data_source.expose_url(), "mysql://app:s3cret@db:3306/orders");
    assert!(!format!("{:?}", order.db).contains("s3cret"));

    let (path, text) = etc("order-api.yaml");
    let api: order_api::Config = parse_yaml(&path, &text, env).unwrap();
    assert_eq!((api.port, api.dtm_server.as_str()), (0, "127.0.0.1:36790"));
    assert_eq!(
        order_api::config::branch_base(&api.order_rpc_conf).unwrap(),
        "etcd://10.0.0.1:2379,10.0.0.2:2379/order.rpc"
    );
}
