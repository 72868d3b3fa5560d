//! Generated protobuf and gRPC code for everything that travels on the wire.
//!
//! * [`pb`] — the quick-order services of the Go demo. `order.proto` and
//!   `stock.proto` both declare `package pb;`, which is harmless in Go (two
//!   modules) but would clash if compiled twice into one Rust module. They are
//!   compiled together into one `pb` module (their message names differ), and
//!   [`order`] and [`stock`] re-export each service's half under its own name.
//!   Wire paths stay exactly `/pb.order/create`, `/pb.stock/deduct`, ….
//! * [`dtmgimp`] — dtm's coordinator API (`/dtmgimp.Dtm/Submit`, …), field
//!   numbers identical to dtm's, used by our coordinator (server side) and by
//!   the `dtm-client` crate (client side).
//! * [`FILE_DESCRIPTOR_SET`] — for gRPC reflection.
//!
//! Each service's module also holds its branches' other face, dtm's HTTP
//! branch protocol: the paths order-srv and stock-srv serve on
//! `HttpListenOn`, and the JSON bodies they read ([`order::CreateBody`],
//! [`stock::DeductBody`]), so that the services, order-api and the bench
//! agree on them as they do on the gRPC paths.

/// Both demo protos, as generated (package `pb`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("pb");
}

/// dtm's coordinator API (package `dtmgimp`).
#[allow(clippy::all, missing_docs)]
pub mod dtmgimp {
    tonic::include_proto!("dtmgimp");
}

/// The order service: `/pb.order/create`, `/pb.order/createRollback`.
pub mod order {
    pub use crate::pb::order_client::OrderClient;
    pub use crate::pb::order_server::{Order, OrderServer};
    pub use crate::pb::{CreateReq, CreateResp};

    /// Full gRPC path of the saga action.
    pub const CREATE_PATH: &str = "/pb.order/create";
    /// Full gRPC path of the saga compensation.
    pub const CREATE_ROLLBACK_PATH: &str = "/pb.order/createRollback";

    /// Where order-srv serves its HTTP branches; order-api's `OrderHttpUrl`
    /// is the server plus this prefix (`http://127.0.0.1:9011/api/order`).
    pub const HTTP_PREFIX: &str = "/api/order";
    /// The HTTP saga action, below [`HTTP_PREFIX`].
    pub const CREATE_HTTP: &str = "/create";
    /// The HTTP saga compensation, below [`HTTP_PREFIX`].
    pub const CREATE_ROLLBACK_HTTP: &str = "/createRollback";
    /// Full HTTP path of the saga action ([`HTTP_PREFIX`] + [`CREATE_HTTP`]).
    pub const CREATE_HTTP_PATH: &str = "/api/order/create";
    /// Full HTTP path of the saga compensation.
    pub const CREATE_ROLLBACK_HTTP_PATH: &str = "/api/order/createRollback";

    /// The JSON body of both HTTP branches: the quick order's fields,
    /// camelCase as order-api takes them. The fields are declared in the
    /// order of their JSON keys, so a body is written as it always was
    /// (`{"goodsId":1,"num":1,"userId":1}`, sorted keys).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct CreateBody {
        /// What.
        pub goods_id: i64,
        /// How many.
        pub num: i64,
        /// Who orders.
        pub user_id: i64,
    }

    impl From<CreateBody> for CreateReq {
        fn from(body: CreateBody) -> CreateReq {
            CreateReq { user_id: body.user_id, goods_id: body.goods_id, num: body.num }
        }
    }

    impl From<&CreateReq> for CreateBody {
        fn from(req: &CreateReq) -> CreateBody {
            CreateBody { goods_id: req.goods_id, num: req.num, user_id: req.user_id }
        }
    }
}

/// The stock service: `/pb.stock/deduct`, `/pb.stock/deductRollback`.
pub mod stock {
    pub use crate::pb::stock_client::StockClient;
    pub use crate::pb::stock_server::{Stock, StockServer};
    pub use crate::pb::{DeductReq, DeductResp};

    /// Full gRPC path of the saga action.
    pub const DEDUCT_PATH: &str = "/pb.stock/deduct";
    /// Full gRPC path of the saga compensation.
    pub const DEDUCT_ROLLBACK_PATH: &str = "/pb.stock/deductRollback";

    /// Where stock-srv serves its HTTP branches; order-api's `StockHttpUrl`
    /// is the server plus this prefix (`http://127.0.0.1:9012/api/stock`).
    pub const HTTP_PREFIX: &str = "/api/stock";
    /// The HTTP saga action, below [`HTTP_PREFIX`].
    pub const DEDUCT_HTTP: &str = "/deduct";
    /// The HTTP saga compensation, below [`HTTP_PREFIX`].
    pub const DEDUCT_ROLLBACK_HTTP: &str = "/deductRollback";
    /// Full HTTP path of the saga action ([`HTTP_PREFIX`] + [`DEDUCT_HTTP`]).
    pub const DEDUCT_HTTP_PATH: &str = "/api/stock/deduct";
    /// Full HTTP path of the saga compensation.
    pub const DEDUCT_ROLLBACK_HTTP_PATH: &str = "/api/stock/deductRollback";

    /// The JSON body of both HTTP branches, camelCase as order-api takes
    /// the quick order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct DeductBody {
        /// What.
        pub goods_id: i64,
        /// How many.
        pub num: i64,
    }

    impl From<DeductBody> for DeductReq {
        fn from(body: DeductBody) -> DeductReq {
            DeductReq { goods_id: body.goods_id, num: body.num }
        }
    }

    impl From<&DeductReq> for DeductBody {
        fn from(req: &DeductReq) -> DeductBody {
            DeductBody { goods_id: req.goods_id, num: req.num }
        }
    }
}

/// Encoded `FileDescriptorSet` of every proto above, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn wire_paths_match_the_go_demo() {
        assert_eq!(pb::order_server::SERVICE_NAME, "pb.order");
        assert_eq!(pb::stock_server::SERVICE_NAME, "pb.stock");
        assert_eq!(dtmgimp::dtm_server::SERVICE_NAME, "dtmgimp.Dtm");
    }

    #[test]
    fn field_numbers_match_the_go_demo() {
        // goodsId=1, userId=2, num=3: tag bytes 0x08, 0x10, 0x18.
        let bytes = order::CreateReq { goods_id: 1, user_id: 2, num: 3 }.encode_to_vec();
        assert_eq!(bytes, vec![0x08, 1, 0x10, 2, 0x18, 3]);
        let bytes = stock::DeductReq { goods_id: 7, num: 9 }.encode_to_vec();
        assert_eq!(bytes, vec![0x08, 7, 0x10, 9]);
    }

    #[test]
    fn http_paths_are_prefix_plus_method_and_bodies_keep_their_json() {
        assert_eq!(order::CREATE_HTTP_PATH, format!("{}{}", order::HTTP_PREFIX, order::CREATE_HTTP));
        assert_eq!(
            order::CREATE_ROLLBACK_HTTP_PATH,
            format!("{}{}", order::HTTP_PREFIX, order::CREATE_ROLLBACK_HTTP)
        );
        assert_eq!(stock::DEDUCT_HTTP_PATH, format!("{}{}", stock::HTTP_PREFIX, stock::DEDUCT_HTTP));
        assert_eq!(
            stock::DEDUCT_ROLLBACK_HTTP_PATH,
            format!("{}{}", stock::HTTP_PREFIX, stock::DEDUCT_ROLLBACK_HTTP)
        );
        let create = order::CreateBody::from(&order::CreateReq { user_id: 7, goods_id: 1, num: 2 });
        assert_eq!(serde_json::to_string(&create).unwrap(), r#"{"goodsId":1,"num":2,"userId":7}"#);
        let deduct = stock::DeductBody::from(&stock::DeductReq { goods_id: 1, num: 2 });
        assert_eq!(serde_json::to_string(&deduct).unwrap(), r#"{"goodsId":1,"num":2}"#);
        assert!(serde_json::from_str::<stock::DeductBody>(r#"{"goodsId":1,"num":2,"x":1}"#).is_err());
    }

    #[test]
    fn dtm_request_steps_is_field_seven() {
        let req = dtmgimp::DtmRequest { steps: "[]".into(), ..Default::default() };
        assert_eq!(req.encode_to_vec(), vec![0x3a, 2, b'[', b']']);
    }
}
