//! The answer of `GET /api/dtmsvr/query?gid=…`: a transaction and its branches.
//!
//! Fields follow dtm's `TransGlobalStore` / `TransBranchStore` JSON. Every
//! field but the status is optional on the wire (Go's `omitempty`), and
//! fields we do not model are ignored, so newer servers stay readable.

use serde::Deserialize;

/// Status of a global transaction (dtm's `prepared` … `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransStatus {
    /// Registered (2-phase message, TCC, XA) but not submitted yet.
    Prepared,
    /// Submitted, being processed.
    Submitted,
    /// Rolling back: compensations are running.
    Aborting,
    /// Finished: every action succeeded.
    Succeed,
    /// Finished: rolled back (or force-stopped).
    Failed,
}

impl TransStatus {
    /// `true` for `succeed` and `failed`: nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(self, TransStatus::Succeed | TransStatus::Failed)
    }
}

/// Status of one branch operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BranchStatus {
    /// Not done yet.
    Prepared,
    /// Done.
    Succeed,
    /// Answered FAILURE (a saga action).
    Failed,
}

/// The global transaction row.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Transaction {
    /// Global id.
    pub gid: String,
    /// `saga`, `msg`, …
    #[serde(default)]
    pub trans_type: String,
    /// Where it stands.
    pub status: TransStatus,
    /// `http` or `grpc`.
    #[serde(default)]
    pub protocol: String,
    /// Creation time as dtm prints it.
    #[serde(default)]
    pub create_time: Option<String>,
    /// Last update time.
    #[serde(default)]
    pub update_time: Option<String>,
    /// Set when it succeeded.
    #[serde(default)]
    pub finish_time: Option<String>,
    /// Set when it failed.
    #[serde(default)]
    pub rollback_time: Option<String>,
    /// Why it was rolled back (the failing branch's message).
    #[serde(default)]
    pub rollback_reason: Option<String>,
    /// The saga concurrency JSON, if any.
    #[serde(default)]
    pub custom_data: Option<String>,
    /// Seconds until the next retry round.
    #[serde(default)]
    pub next_cron_interval: Option<i64>,
    /// When the next retry round may start.
    #[serde(default)]
    pub next_cron_time: Option<String>,
}

/// One branch operation row (`action`, `compensate`, …).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Branch {
    /// Global id.
    #[serde(default)]
    pub gid: String,
    /// The URL dtm calls.
    pub url: String,
    /// `01`, `02`, …
    pub branch_id: String,
    /// `action`, `compensate`, `try`, `confirm`, …
    pub op: String,
    /// Where it stands.
    pub status: BranchStatus,
    /// Payload, base64 (Go's encoding of `[]byte`).
    #[serde(default)]
    pub bin_data: Option<String>,
    /// When it succeeded.
    #[serde(default)]
    pub finish_time: Option<String>,
    /// When it failed.
    #[serde(default)]
    pub rollback_time: Option<String>,
}

/// The whole answer; `transaction` is `None` for an unknown gid.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QueryResult {
    /// The global transaction, if it exists.
    pub transaction: Option<Transaction>,
    /// Its branch operations, in creation order.
    #[serde(default)]
    pub branches: Vec<Branch>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_dtm_query_answer() {
        let body = r#"{"branches":[{"id":1,"create_time":"2026-01-01T10:00:00+08:00","gid":"g1",
            "url":"etcd://127.0.0.1:2379/order.rpc/pb.order/createRollback","bin_data":"CAEQAhgD",
            "branch_id":"01","op":"compensate","status":"prepared"},
            {"gid":"g1","url":"etcd://127.0.0.1:2379/order.rpc/pb.order/create","branch_id":"01",
            "op":"action","status":"succeed","finish_time":"2026-01-01T10:00:01+08:00"}],
            "transaction":{"id":7,"gid":"g1","trans_type":"saga","status":"succeed","protocol":"grpc",
            "options":"{}","next_cron_interval":10,"concurrent":false}}"#;
        let result: QueryResult = serde_json::from_str(body).unwrap();
        let transaction = result.transaction.unwrap();
        assert_eq!(transaction.status, TransStatus::Succeed);
        assert!(transaction.status.is_final());
        assert_eq!(transaction.next_cron_interval, Some(10));
        assert_eq!(result.branches.len(), 2);
        assert_eq!(result.branches[1].status, BranchStatus::Succeed);
        assert_eq!(result.branches[0].bin_data.as_deref(), Some("CAEQAhgD"));
    }

    #[test]
    fn unknown_gid_has_no_transaction() {
        let result: QueryResult = serde_json::from_str(r#"{"branches":[],"transaction":null}"#).unwrap();
        assert!(result.transaction.is_none());
    }
}
