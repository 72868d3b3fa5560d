//! The answers of dtm's KV routes (`GET /api/dtmsvr/queryKV`, `scanKV`):
//! rows of the coordinator's `kv` table, where message topics live
//! (`cat` = `topics`, `k` = the topic, `v` = its subscribers as JSON).
//!
//! dtm has these routes over HTTP only; subscribing, unsubscribing and
//! deleting a topic work over both APIs ([`crate::DtmClient::subscribe`], …).

use dtm_protocol::Subscriber;
use serde::Deserialize;

use crate::ClientError;

/// One `kv` row (dtm's `KVStore` JSON).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KvRow {
    /// Auto-increment id (the `scanKV` position).
    #[serde(default)]
    pub id: i64,
    /// The category (`topics`).
    pub cat: String,
    /// The key (a topic name).
    pub k: String,
    /// The value (a topic's JSON list of subscribers).
    #[serde(default)]
    pub v: String,
    /// Bumped by every change of the row.
    #[serde(default)]
    pub version: i64,
    /// Creation time as the coordinator prints it.
    #[serde(default)]
    pub create_time: Option<String>,
    /// Last change.
    #[serde(default)]
    pub update_time: Option<String>,
}

impl KvRow {
    /// The subscribers of a topic row.
    pub fn subscribers(&self) -> Result<Vec<Subscriber>, ClientError> {
        if self.v.trim().is_empty() {
            return Ok(Vec::new());
        }
        serde_json::from_str(&self.v)
            .map_err(|err| ClientError::Other(format!("unreadable subscribers of topic {}: {err}", self.k)))
    }
}

/// `queryKV`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KvRows {
    /// The rows (dtm answers `null` for none).
    #[serde(default, deserialize_with = "null_is_empty")]
    pub kv: Vec<KvRow>,
}

/// One page of `scanKV`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KvPage {
    /// The rows (dtm answers `null` for none).
    #[serde(default, deserialize_with = "null_is_empty")]
    pub kv: Vec<KvRow>,
    /// Where the next page starts; empty after the last one.
    #[serde(default)]
    pub next_position: String,
}

fn null_is_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<KvRow>, D::Error> {
    Ok(Option::<Vec<KvRow>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dtms_kv_json() {
        let body = r#"{"kv":[{"id":3,"create_time":"2026-01-01T10:00:00+08:00","cat":"topics","k":"paid",
            "v":"[{\"url\":\"http://h/a\",\"remark\":\"r\"}]","version":2}],"next_position":""}"#;
        let page: KvPage = serde_json::from_str(body).unwrap();
        assert_eq!((page.kv[0].k.as_str(), page.kv[0].version), ("paid", 2));
        assert_eq!(
            page.kv[0].subscribers().unwrap(),
            [Subscriber { url: "http://h/a".into(), remark: "r".into() }]
        );
        let none: KvRows = serde_json::from_str(r#"{"kv":null}"#).unwrap();
        assert!(none.kv.is_empty());
    }
}
