//! Request and response bodies (go-zero's `internal/types/types.go`, from
//! `desc/order.api`). JSON keys are camelCase as in the demo.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// `POST /order/quickCreate` body: `{"userId":1,"goodsId":1,"num":1}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuickCreateReq {
    /// Who orders.
    pub user_id: i64,
    /// What.
    pub goods_id: i64,
    /// How many.
    pub num: i64,
}

impl QuickCreateReq {
    /// Reads the three fields from a JSON object. Every problem names its
    /// field: missing (go-zero: `field "userId" is not set`), or not an
    /// integer. Unknown keys are ignored, as go-zero does.
    pub fn from_json(object: &Map<String, Value>) -> Result<QuickCreateReq, ApiError> {
        Ok(QuickCreateReq {
            user_id: integer(object, "userId")?,
            goods_id: integer(object, "goodsId")?,
            num: integer(object, "num")?,
        })
    }

    /// Business validation: positive ids, `1 ≤ num ≤ max_num`.
    pub fn validate(&self, max_num: i64) -> Result<(), ApiError> {
        if self.user_id <= 0 {
            return Err(ApiError::bad_field(
                "userId",
                format!("userId must be positive, got {}", self.user_id),
            ));
        }
        if self.goods_id <= 0 {
            return Err(ApiError::bad_field(
                "goodsId",
                format!("goodsId must be positive, got {}", self.goods_id),
            ));
        }
        if !(1..=max_num).contains(&self.num) {
            return Err(ApiError::bad_field(
                "num",
                format!("num must be between 1 and {max_num}, got {}", self.num),
            ));
        }
        Ok(())
    }
}

fn integer(object: &Map<String, Value>, field: &'static str) -> Result<i64, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(ApiError::bad_field(field, format!("field \"{field}\" is not set"))),
        Some(value) => value.as_i64().ok_or_else(|| {
            ApiError::bad_field(field, format!("field \"{field}\" must be an integer, got {value}"))
        }),
    }
}

/// Saga outcome as `quickCreate` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Order created and stock deducted (HTTP 200).
    Succeed,
    /// Rolled back: insufficient stock or unknown goods (HTTP 409).
    Failed,
    /// Accepted, still running after `SubmitWait` (HTTP 202); poll
    /// `GET /order/status/{gid}`.
    Submitted,
}

/// `quickCreate`'s answer (the demo answered `{}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuickCreateResp {
    /// The saga's global transaction id.
    pub gid: String,
    /// Where it stands.
    pub status: OrderStatus,
    /// Why it failed (only for `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One branch operation in `GET /order/status/{gid}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchView {
    /// `01` (order), `02` (stock).
    pub branch_id: String,
    /// `action` or `compensate`.
    pub op: String,
    /// `prepared`, `succeed`, `failed`.
    pub status: String,
    /// The URL the coordinator calls.
    pub url: String,
}

/// `GET /order/status/{gid}`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaView {
    /// The gid asked for.
    pub gid: String,
    /// `submitted`, `aborting`, `succeed`, `failed`, …
    pub status: String,
    /// Why it was rolled back, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_reason: Option<String>,
    /// Every branch operation, in creation order.
    pub branches: Vec<BranchView>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: &Value) -> Result<QuickCreateReq, ApiError> {
        QuickCreateReq::from_json(value.as_object().unwrap())
    }

    #[test]
    fn fields_are_read_and_named_when_wrong() {
        assert_eq!(
            parse(&json!({"userId": 1, "goodsId": 2, "num": 3, "extra": true})).unwrap(),
            QuickCreateReq { user_id: 1, goods_id: 2, num: 3 }
        );
        for (body, field) in [
            (json!({"goodsId": 2, "num": 3}), "userId"),
            (json!({"userId": "1", "goodsId": 2, "num": 3}), "userId"),
            (json!({"userId": 1, "goodsId": 2.5, "num": 3}), "goodsId"),
            (json!({"userId": 1, "goodsId": 2, "num": null}), "num"),
        ] {
            assert_eq!(parse(&body).unwrap_err().field(), Some(field));
        }
    }

    #[test]
    fn validation_bounds() {
        let ok = QuickCreateReq { user_id: 1, goods_id: 1, num: 1000 };
        assert!(ok.validate(1000).is_ok());
        assert_eq!(QuickCreateReq { num: 1001, ..ok }.validate(1000).unwrap_err().field(), Some("num"));
        assert_eq!(QuickCreateReq { num: 0, ..ok }.validate(1000).unwrap_err().field(), Some("num"));
        assert_eq!(QuickCreateReq { user_id: -1, ..ok }.validate(1000).unwrap_err().field(), Some("userId"));
        assert_eq!(QuickCreateReq { goods_id: 0, ..ok }.validate(1000).unwrap_err().field(), Some("goodsId"));
    }
}
