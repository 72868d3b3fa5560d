//! dtm's message topics (`dtmsvr/topics.go`): `subscribe`, `unsubscribe`,
//! `deleteTopic`, the KV routes that show them, and the `topic://name`
//! steps of 2-phase messages.
//!
//! # Where a topic lives
//!
//! One row of dtm's `kv` table per topic: `cat = 'topics'`, `k` = the name,
//! `v` = the JSON list of [`Subscriber`]s, changed only under its `version`
//! ([`crate::store::KvStore`]). Subscribing is a read-modify-write of that
//! row: read it, add the URL, write it back if the version is still the one
//! read — otherwise another subscriber (on this coordinator or another one
//! on the same database) came first, and we read again and retry
//! ([`MAX_ATTEMPTS`]). dtm answers such a race with an error; here both
//! subscribers end up in the list.
//!
//! # A message to a topic
//!
//! A message step whose action is `topic://name` becomes one `action` row
//! per subscriber, with the step's payload, when the message is created
//! (`submit`, or `prepare` for a message with a check-back), exactly as
//! dtm's `GenBranches` does: branch `01` if the topic has one subscriber,
//! `01-01`, `01-02`, … if it has several. From then on they are ordinary
//! rows, stored in the same transaction as the message: a coordinator that
//! dies after acknowledging the submit leaves them to whichever coordinator
//! leases the message next. Later changes of the topic do not change a
//! message already created. A topic that is unknown or has no subscriber
//! refuses the message (dtm's "topic not found"), and nothing is stored —
//! as in dtm also when that message was prepared earlier, while the topic
//! had subscribers: the submit is refused, and the check-back settles the
//! prepared message with the rows it was prepared with.
//!
//! # Reading topics: no cache
//!
//! dtm keeps every topic in memory and refreshes the map every
//! `ConfigUpdateInterval` (3 s); a message sent in that window after a
//! `subscribe` misses the new subscriber, and one sent after an
//! `unsubscribe` still goes to the old one — at another dtm instance for
//! up to 3 s, whatever the client was told. We read the topic's row when a
//! message names it instead: one indexed `SELECT` by the unique key
//! `(cat, k)`, only for messages that have topic steps, in the database the
//! message is written to anyway. A subscription acknowledged by any
//! coordinator on the database is seen by the next message at every one of
//! them, and the cost is one primary-key-sized read per such message.

use std::collections::BTreeMap;

use dtm_protocol::{BranchId, Op, Subscriber, TOPICS_CAT, Topic};

use crate::engine::{Engine, EngineError};
use crate::model::{BranchTarget, BranchUrl, InvalidInput, Step, TransRequest};
use crate::store::{self, BranchRow, KvPage, KvRow, KvStore, NewBranch, StoreError};

/// How often a change of a topic is tried against concurrent changes of the
/// same topic before the caller is told to try again. Each retry follows a
/// lost race, i.e. another change that succeeded: 16 in a row means 16
/// other writers got in first.
pub const MAX_ATTEMPTS: u32 = 16;

/// Longest `remark`, in bytes.
pub const MAX_REMARK: usize = 1024;

/// Largest stored subscriber list, in bytes of JSON: MySQL's `TEXT` (dtm's
/// `kv.v`) holds 65 535.
pub const MAX_SUBSCRIBERS_JSON: usize = 65_535;

/// Most rows `queryKV` answers with; more is refused (page with `scanKV`).
pub const MAX_QUERY_ROWS: u32 = 1000;

/// dtm's answer to a message whose topic has no subscriber (`GenBranches`).
pub const TOPIC_NOT_FOUND: &str = "topic not found";

/// A topic name from a request: 400 / `InvalidArgument` naming `field`.
pub fn topic_of(field: &str, name: &str) -> Result<Topic, InvalidInput> {
    Topic::new(name).map_err(|e| InvalidInput { field: field.to_string(), message: e.to_string() })
}

/// A validated `subscribe` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic, created by its first subscriber.
    pub topic: Topic,
    /// Where messages to the topic go: a branch URL (HTTP or gRPC).
    pub url: BranchUrl,
    /// Free text, shown by `queryKV`.
    pub remark: String,
}

impl Subscription {
    /// Validates dtm's `topic`, `url` and `remark` (HTTP query or gRPC
    /// `DtmTopicRequest`): the one validation path of both APIs.
    pub fn from_input(topic: &str, url: &str, remark: &str) -> Result<Subscription, InvalidInput> {
        let invalid = |field: &str, message: String| InvalidInput { field: field.to_string(), message };
        let topic = topic_of("topic", topic)?;
        let url = BranchUrl::parse(url).map_err(|m| invalid("url", m))?;
        if *url.target() == BranchTarget::Empty {
            return Err(invalid("url", "empty url".into()));
        }
        if remark.len() > MAX_REMARK {
            return Err(invalid("remark", format!("longer than {MAX_REMARK} bytes")));
        }
        Ok(Subscription { topic, url, remark: remark.to_string() })
    }
}

/// A topic's row and its subscribers, as read.
struct Stored {
    row: KvRow,
    subscribers: Vec<Subscriber>,
}

/// Reads a topic's row, if any.
async fn read(kv: &dyn KvStore, topic: &Topic) -> Result<Option<Stored>, EngineError> {
    let Some(row) = kv.find_kv(TOPICS_CAT, Some(topic.as_str()), 1).await?.into_iter().next() else {
        return Ok(None);
    };
    let subscribers = if row.v.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&row.v)
            .map_err(|e| StoreError::Corrupt(format!("subscribers of topic {topic}: {e}")))?
    };
    Ok(Some(Stored { row, subscribers }))
}

/// The JSON of a subscriber list, within the column's size.
fn encode(subscribers: &[Subscriber]) -> Result<String, EngineError> {
    let json = serde_json::to_string(subscribers)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode subscribers: {e}")))?;
    if json.len() > MAX_SUBSCRIBERS_JSON {
        return Err(EngineError::invalid(
            "url",
            format!("the topic's subscriber list would exceed {MAX_SUBSCRIBERS_JSON} bytes"),
        ));
    }
    Ok(json)
}

/// What one attempt of a topic change found.
enum Attempt {
    /// Applied.
    Done,
    /// Another change came first: read again.
    Raced,
}

/// Counts the races a topic change lost: at most [`MAX_ATTEMPTS`]
/// attempts, with a short random pause after each lost one to spread the
/// writers out.
struct Races<'a> {
    topic: &'a Topic,
    lost: u32,
}

impl Races<'_> {
    /// Records a lost race; `Err` once the attempts are used up.
    async fn lost(&mut self) -> Result<(), EngineError> {
        self.lost += 1;
        if self.lost >= MAX_ATTEMPTS {
            return Err(EngineError::Conflict(format!(
                "topic {} was changed concurrently {MAX_ATTEMPTS} times in a row; try again",
                self.topic
            )));
        }
        tracing::debug!(topic = %self.topic, attempt = self.lost, "topic changed concurrently; reading it again");
        let pause = rand::random::<u64>() % (5 * u64::from(self.lost));
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        Ok(())
    }
}

/// One attempt of `subscribe`.
async fn subscribe_once(kv: &dyn KvStore, topic: &Topic, new: &Subscriber) -> Result<Attempt, EngineError> {
    let now = store::now();
    let applied = match read(kv, topic).await? {
        None => kv.create_kv(TOPICS_CAT, topic.as_str(), &encode(std::slice::from_ref(new))?, now).await?,
        Some(Stored { row, mut subscribers }) => {
            if subscribers.iter().any(|s| s.url == new.url) {
                return Err(EngineError::Conflict("this url exists".into()));
            }
            subscribers.push(new.clone());
            kv.update_kv(row.id, row.version, &encode(&subscribers)?, now).await?
        }
    };
    Ok(if applied { Attempt::Done } else { Attempt::Raced })
}

/// One attempt of `unsubscribe`.
async fn unsubscribe_once(kv: &dyn KvStore, topic: &Topic, url: &str) -> Result<Attempt, EngineError> {
    let Some(Stored { row, mut subscribers }) = read(kv, topic).await? else {
        return Err(EngineError::Conflict("no such a topic".into()));
    };
    if subscribers.is_empty() {
        return Err(EngineError::Conflict("this topic is empty".into()));
    }
    let before = subscribers.len();
    subscribers.retain(|s| s.url != url);
    if subscribers.len() == before {
        // dtm's text, trailing space included (`dtmsvr/topics.go`).
        return Err(EngineError::Conflict("no such an url ".into()));
    }
    let applied = kv.update_kv(row.id, row.version, &encode(&subscribers)?, store::now()).await?;
    Ok(if applied { Attempt::Done } else { Attempt::Raced })
}

impl Engine {
    /// dtm `subscribe`: adds `url` to the topic, creating the topic with
    /// its first subscriber. A URL already subscribed is refused with dtm's
    /// "this url exists".
    pub async fn subscribe(&self, subscription: Subscription) -> Result<(), EngineError> {
        let Subscription { topic, url, remark } = subscription;
        self.can_call(&url).map_err(|m| EngineError::invalid("url", m))?;
        let new = Subscriber { url: url.as_str().to_string(), remark };
        let mut races = Races { topic: &topic, lost: 0 };
        while let Attempt::Raced = subscribe_once(self.store().kv(), &topic, &new).await? {
            races.lost().await?;
        }
        Ok(())
    }

    /// dtm `unsubscribe`: removes `url` from the topic (the topic stays,
    /// possibly empty). dtm's errors: "no such a topic", "this topic is
    /// empty", "no such an url ".
    pub async fn unsubscribe(&self, topic: &Topic, url: &str) -> Result<(), EngineError> {
        if url.is_empty() {
            return Err(EngineError::invalid("url", "empty url"));
        }
        let mut races = Races { topic, lost: 0 };
        while let Attempt::Raced = unsubscribe_once(self.store().kv(), topic, url).await? {
            races.lost().await?;
        }
        Ok(())
    }

    /// dtm `deleteTopic`: removes the topic and its subscribers. Messages
    /// already created keep their rows. dtm's error for an unknown topic:
    /// "storage: NotFound".
    pub async fn delete_topic(&self, topic: &Topic) -> Result<(), EngineError> {
        if self.store().kv().delete_kv(TOPICS_CAT, topic.as_str()).await? {
            Ok(())
        } else {
            Err(EngineError::Conflict("storage: NotFound".into()))
        }
    }

    /// dtm `queryKV`: the rows of `cat`, or the one with `key`. More than
    /// [`MAX_QUERY_ROWS`] rows are refused rather than cut short.
    pub async fn query_kv(&self, cat: &str, key: Option<&str>) -> Result<Vec<KvRow>, EngineError> {
        let rows = self.store().kv().find_kv(cat, key, MAX_QUERY_ROWS + 1).await?;
        if rows.len() > MAX_QUERY_ROWS as usize {
            return Err(EngineError::invalid(
                "key",
                format!("more than {MAX_QUERY_ROWS} rows in {cat:?}: name a key, or page with scanKV"),
            ));
        }
        Ok(rows)
    }

    /// dtm `scanKV`: one page of `cat`, newest first.
    pub async fn scan_kv(&self, cat: &str, position: Option<i64>, limit: u32) -> Result<KvPage, EngineError> {
        Ok(self.store().kv().scan_kv(cat, position, limit).await?)
    }
}

/// Whether a message names a topic in any step.
pub fn has_topic_steps(request: &TransRequest) -> bool {
    request.steps.iter().any(|step| matches!(step, Step::Topic { .. }))
}

/// The `action` rows a message creates: one per plain step (`01`, `02`,
/// …), one per subscriber of a topic step (`0k` alone, `0k-01`, `0k-02`, …
/// among several; dtm's `trans_type_msg.go`). Reads each named topic once
/// (see the module docs: no cache); a topic without subscribers is dtm's
/// "topic not found" and nothing is created.
pub(crate) async fn msg_rows(
    kv: &dyn KvStore,
    request: &TransRequest,
) -> Result<Vec<NewBranch>, EngineError> {
    let mut topics: BTreeMap<&Topic, Vec<Subscriber>> = BTreeMap::new();
    for step in &request.steps {
        if let Step::Topic { topic } = step
            && !topics.contains_key(topic)
        {
            let subscribers = read(kv, topic).await?.map(|t| t.subscribers).unwrap_or_default();
            if subscribers.is_empty() {
                return Err(EngineError::Conflict(TOPIC_NOT_FOUND.into()));
            }
            // Ours were checked at subscribe; a row written by other tools
            // (dtm on the same database) may hold a URL no pass could call.
            for subscriber in &subscribers {
                BranchUrl::parse(&subscriber.url).map_err(|e| {
                    EngineError::Conflict(format!(
                        "topic {topic}: subscriber {:?} cannot be called: {e}",
                        subscriber.url
                    ))
                })?;
            }
            topics.insert(topic, subscribers);
        }
    }
    let mut rows = Vec::with_capacity(request.steps.len());
    for (k, step) in request.steps.iter().enumerate() {
        let payload = request.payloads.get(k).cloned().unwrap_or_default();
        let row = |url: &str, branch_id: BranchId| NewBranch {
            url: url.to_string(),
            bin_data: payload.clone(),
            branch_id,
            op: Op::Action,
        };
        match step {
            Step::Msg { action } => rows.push(row(action.as_str(), BranchId::nth(k))),
            Step::Topic { topic } => {
                let subscribers = topics.get(topic).map(Vec::as_slice).unwrap_or_default();
                if let [only] = subscribers {
                    rows.push(row(&only.url, BranchId::nth(k)));
                } else {
                    for (j, subscriber) in subscribers.iter().enumerate() {
                        rows.push(row(&subscriber.url, subscriber_id(k, j)?));
                    }
                }
            }
            Step::Saga { .. } => {}
        }
    }
    Ok(rows)
}

/// `0k-0j`: the branch of the `j`-th subscriber of step `k` (both 0-based).
fn subscriber_id(k: usize, j: usize) -> Result<BranchId, EngineError> {
    BranchId::new(format!("{}-{:02}", BranchId::nth(k), j + 1))
        .map_err(|e| EngineError::invalid("steps", e.to_string()))
}

/// Whether the stored rows of a message are what `request` asks for, up to
/// the subscribers of its topic steps (which may have changed since it was
/// created): a resubmit of the same message is a retry, not new work.
pub(crate) fn same_steps(request: &TransRequest, stored: &[BranchRow]) -> bool {
    let mut matched = 0;
    for (k, step) in request.steps.iter().enumerate() {
        let id = BranchId::nth(k);
        let payload = request.payloads.get(k).map_or(&[][..], Vec::as_slice);
        let of_step: Vec<&BranchRow> =
            stored.iter().filter(|r| r.branch_id.as_str().split('-').next() == Some(id.as_str())).collect();
        matched += of_step.len();
        let same = match step {
            Step::Msg { action } => {
                matches!(of_step[..], [row] if row.branch_id == id && row.url == action.as_str()
                    && row.bin_data == payload && row.op == Op::Action)
            }
            Step::Topic { .. } => {
                !of_step.is_empty() && of_step.iter().all(|r| r.bin_data == payload && r.op == Op::Action)
            }
            Step::Saga { .. } => false,
        };
        if !same {
            return false;
        }
    }
    matched == stored.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_validated_field_by_field() {
        let ok = Subscription::from_input("orders", "http://h:1/notify", "shop").unwrap();
        assert_eq!(
            (ok.topic.as_str(), ok.url.as_str(), ok.remark.as_str()),
            ("orders", "http://h:1/notify", "shop")
        );
        assert!(Subscription::from_input("orders", "h:1/pkg.Svc/Notify", "").is_ok());
        let field = |t: &str, u: &str, r: &str| Subscription::from_input(t, u, r).unwrap_err().field;
        assert_eq!(field("", "http://h/a", ""), "topic");
        assert_eq!(field("a/b", "http://h/a", ""), "topic");
        assert_eq!(field("t", "", ""), "url");
        assert_eq!(field("t", "topic://other", ""), "url");
        assert_eq!(field("t", "ftp://h/a", ""), "url");
        assert_eq!(field("t", "http://h/a", &"r".repeat(MAX_REMARK + 1)), "remark");
    }

    #[test]
    fn only_message_steps_name_topics() {
        use crate::model::TransRequestInput;
        let input = |trans_type: &str, action: &str| TransRequestInput {
            gid: "g".into(),
            trans_type: trans_type.into(),
            steps: vec![BTreeMap::from([
                ("action".to_string(), action.to_string()),
                ("compensate".to_string(), String::new()),
            ])],
            ..Default::default()
        };
        let msg = TransRequest::from_input(input("msg", "topic://paid")).unwrap();
        assert!(has_topic_steps(&msg));
        assert!(matches!(&msg.steps[0], Step::Topic { topic } if topic.as_str() == "paid"));
        for (trans_type, action) in [("saga", "topic://paid"), ("msg", "topic://"), ("msg", "topic://a b")] {
            let err = TransRequest::from_input(input(trans_type, action)).unwrap_err();
            assert_eq!(err.field, "steps[0].action", "{trans_type} {action}");
        }
    }

    #[test]
    fn several_subscribers_get_numbered_branch_ids() {
        assert_eq!(subscriber_id(0, 0).unwrap().as_str(), "01-01");
        assert_eq!(subscriber_id(11, 1).unwrap().as_str(), "12-02");
        assert_eq!(subscriber_id(0, 99).unwrap().as_str(), "01-100");
    }
}
