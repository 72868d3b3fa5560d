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
    fn dtm_request_steps_is_field_seven() {
        let req = dtmgimp::DtmRequest { steps: "[]".into(), ..Default::default() };
        assert_eq!(req.encode_to_vec(), vec![0x3a, 2, b'[', b']']);
    }
}
