//! dtm's message topics: a name that 2-phase messages send to (`topic://name`
//! as a step's action) and the subscribers the coordinator delivers to.
//!
//! The coordinator keeps each topic as one row of dtm's `kv` table (`cat` =
//! [`TOPICS_CAT`], `k` = the name, `v` = the JSON list of [`Subscriber`]s)
//! and turns a `topic://name` step into one branch per subscriber when the
//! message is created (dtm's `dtmsvr/topics.go`, `trans_type_msg.go`). The
//! client SDK builds the same action with [`Topic::target`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ProtocolError;

/// The prefix that makes a message step's action a topic (dtm's
/// `dtmimp.MsgTopicPrefix`).
pub const MSG_TOPIC_PREFIX: &str = "topic://";

/// The `kv.cat` of topic rows (dtm's `topicsCat`).
pub const TOPICS_CAT: &str = "topics";

/// A topic name: 1 to [`Topic::MAX_LEN`] characters, none of them a control
/// character, whitespace, `/`, `?` or `#`.
///
/// dtm takes any non-empty string. Ours must also survive the two places a
/// name travels in a URL — the `topic://name` action and the path of
/// `DELETE /api/dtmsvr/topic/{name}` — unchanged, and fit the `kv.k`
/// column (128 wide). Non-ASCII letters are fine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Topic(String);

impl Topic {
    /// Longest accepted name, in characters (`kv.k` is `varchar(128)`).
    pub const MAX_LEN: usize = 128;

    /// Validates and wraps a topic name.
    pub fn new(name: impl Into<String>) -> Result<Topic, ProtocolError> {
        let name = name.into();
        if name.is_empty() {
            return Err(ProtocolError::Missing("topic"));
        }
        if name.chars().count() > Topic::MAX_LEN {
            return Err(ProtocolError::Invalid {
                field: "topic",
                reason: format!("longer than {} characters", Topic::MAX_LEN),
            });
        }
        if let Some(bad) = name.chars().find(|c| c.is_control() || c.is_whitespace() || "/?#".contains(*c)) {
            return Err(ProtocolError::Invalid {
                field: "topic",
                reason: format!(
                    "{bad:?} is not allowed in a topic name (no whitespace, control characters, '/', '?' or '#')"
                ),
            });
        }
        Ok(Topic(name))
    }

    /// The topic a message step's action names, if it names one:
    /// `None` for any action without the `topic://` prefix, `Some(Err)` for
    /// `topic://` followed by an invalid name.
    pub fn from_action(action: &str) -> Option<Result<Topic, ProtocolError>> {
        action.strip_prefix(MSG_TOPIC_PREFIX).map(Topic::new)
    }

    /// `topic://name`: the action of a message step that goes to every subscriber.
    pub fn target(&self) -> String {
        format!("{MSG_TOPIC_PREFIX}{}", self.0)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Topic {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::new(s)
    }
}

/// One subscriber of a topic, as dtm stores it in `kv.v` (a JSON array of
/// these) and shows it in `queryKV`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriber {
    /// The branch URL a message to the topic is delivered to (HTTP or gRPC).
    pub url: String,
    /// Free text given at subscription.
    #[serde(default)]
    pub remark: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_survive_urls_and_the_column() {
        assert_eq!(Topic::new("orders").unwrap().target(), "topic://orders");
        assert_eq!(Topic::new("订单.created-v2_x:y").unwrap().as_str(), "订单.created-v2_x:y");
        for bad in ["", "a b", "a/b", "a?b", "a#b", "a\nb", &"x".repeat(129)] {
            assert!(Topic::new(bad).is_err(), "{bad:?}");
        }
        assert!(Topic::new("x".repeat(128)).is_ok());
        assert!(Topic::from_action("http://h/a").is_none());
        assert_eq!(Topic::from_action("topic://t").unwrap().unwrap().as_str(), "t");
        assert!(Topic::from_action("topic://").unwrap().is_err());
    }

    #[test]
    fn subscribers_are_dtms_json() {
        let list: Vec<Subscriber> =
            serde_json::from_str(r#"[{"url":"http://h/a","remark":"r"},{"url":"h:1/a.B/C"}]"#).unwrap();
        assert_eq!(list[1].remark, "");
        assert_eq!(serde_json::to_string(&list[..1]).unwrap(), r#"[{"url":"http://h/a","remark":"r"}]"#);
    }
}
