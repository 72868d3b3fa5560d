//! [`BranchCall`]: the dtm values of one branch call, written by the caller
//! and read back by the branch, over gRPC and HTTP.
//!
//! Every branch call carries `gid`, `trans_type`, `branch_id` and `op`, and
//! an AP's own calls (a TCC try, a message's check-back) also `dtm`, the
//! coordinator's address, so that the branch can act as a sub-AP:
//!
//! | value | gRPC metadata | HTTP query parameter |
//! |---|---|---|
//! | global id | `dtm-gid` | `gid` |
//! | transaction type | `dtm-trans_type` | `trans_type` |
//! | branch id | `dtm-branch_id` | `branch_id` |
//! | op | `dtm-op` | `op` |
//! | coordinator | `dtm-dtm` | `dtm` |
//!
//! (dtm's `dtmgrpc/dtmgimp/types.go` writes and reads the metadata,
//! `dtmcli/dtmimp/trans_base.go` and `dtmsvr/trans_process.go` the query.)
//! [`Field`] names each value in both spellings; [`BranchCall`] writes all
//! of them ([`BranchCall::insert_metadata`], [`BranchCall::append_query`]),
//! and [`Received`] reads them back on the branch's side, validating each
//! value only when it is asked for — a barrier needs all four, a nested TCC
//! only `dtm`, `gid` and `branch_id`.

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};

use crate::{BranchId, Gid, Op, ProtocolError, TransType};

/// One value of a branch call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// The global transaction id.
    Gid,
    /// The transaction type.
    TransType,
    /// The branch id.
    BranchId,
    /// The op.
    Op,
    /// The coordinator's address an AP uses.
    Dtm,
}

impl Field {
    /// Every field.
    pub const ALL: [Field; 5] = [Field::Gid, Field::TransType, Field::BranchId, Field::Op, Field::Dtm];

    /// The HTTP query parameter, also the name [`ProtocolError`] uses.
    pub const fn query_name(self) -> &'static str {
        match self {
            Field::Gid => "gid",
            Field::TransType => "trans_type",
            Field::BranchId => "branch_id",
            Field::Op => "op",
            Field::Dtm => "dtm",
        }
    }

    /// The gRPC metadata key.
    pub const fn metadata_key(self) -> &'static str {
        match self {
            Field::Gid => "dtm-gid",
            Field::TransType => "dtm-trans_type",
            Field::BranchId => "dtm-branch_id",
            Field::Op => "dtm-op",
            Field::Dtm => "dtm-dtm",
        }
    }

    /// The field whose query name is `name`.
    pub fn from_query_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|field| field.query_name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The dtm values of one branch call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchCall {
    /// The global transaction.
    pub gid: Gid,
    /// Its type.
    pub trans_type: TransType,
    /// The branch being called.
    pub branch_id: BranchId,
    /// What the branch is asked to do.
    pub op: Op,
    /// The coordinator's address, sent by an AP's own calls (`dtm`); the
    /// coordinator sends none (an empty `dtm-dtm` over gRPC, as dtm does).
    pub dtm: Option<String>,
}

/// A header or metadata pair that gRPC metadata cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// Not a valid lower-case ASCII metadata key.
    #[error("{0:?} is not a metadata key")]
    Key(String),
    /// Not a printable ASCII metadata value.
    #[error("{value:?} is not ASCII metadata")]
    Value {
        /// The pair's key.
        key: String,
        /// The value refused.
        value: String,
    },
}

impl MetadataError {
    /// The key of the pair refused.
    pub fn key(&self) -> &str {
        match self {
            MetadataError::Key(key) | MetadataError::Value { key, .. } => key,
        }
    }
}

impl BranchCall {
    /// A call of the coordinator's kind (no `dtm`).
    pub fn new(gid: Gid, trans_type: TransType, branch_id: BranchId, op: Op) -> BranchCall {
        BranchCall { gid, trans_type, branch_id, op, dtm: None }
    }

    /// The same call, made by an AP that names its coordinator.
    pub fn with_dtm(mut self, dtm: impl Into<String>) -> BranchCall {
        self.dtm = Some(dtm.into());
        self
    }

    /// The gRPC metadata pairs, in the order they are written. `dtm-dtm`
    /// is always there, empty when the call names no coordinator.
    pub fn metadata(&self) -> [(&'static str, &str); 5] {
        [
            (Field::Gid.metadata_key(), self.gid.as_str()),
            (Field::TransType.metadata_key(), self.trans_type.as_str()),
            (Field::BranchId.metadata_key(), self.branch_id.as_str()),
            (Field::Op.metadata_key(), self.op.as_str()),
            (Field::Dtm.metadata_key(), self.dtm.as_deref().unwrap_or_default()),
        ]
    }

    /// Writes the call's metadata, then `headers` (the transaction's
    /// `branch_headers`), into `metadata`; a later pair replaces an earlier
    /// one of the same key.
    pub fn insert_metadata<'h>(
        &self,
        metadata: &mut MetadataMap,
        headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    ) -> Result<(), MetadataError> {
        let mut insert = |key: &str, value: &str| -> Result<(), MetadataError> {
            let name = AsciiMetadataKey::from_bytes(key.as_bytes())
                .map_err(|_| MetadataError::Key(key.to_string()))?;
            let text = AsciiMetadataValue::try_from(value)
                .map_err(|_| MetadataError::Value { key: key.to_string(), value: value.to_string() })?;
            metadata.insert(name, text);
            Ok(())
        };
        for (key, value) in self.metadata() {
            insert(key, value)?;
        }
        for (key, value) in headers {
            insert(key, value)?;
        }
        Ok(())
    }

    /// A request carrying `message` with the call's metadata (no headers).
    pub fn grpc_request<T>(&self, message: T) -> Result<tonic::Request<T>, MetadataError> {
        let mut request = tonic::Request::new(message);
        self.insert_metadata(request.metadata_mut(), [])?;
        Ok(request)
    }

    /// The HTTP query parameters, in the order they are sent: an AP's call
    /// as dtmcli lists them (`dtm`, `gid`, `branch_id`, `trans_type`, `op`,
    /// `dtmcli/dtmimp/trans_base.go`), the coordinator's `gid`,
    /// `trans_type`, `branch_id`, `op`.
    pub fn query_pairs(&self) -> Vec<(&'static str, &str)> {
        let mut pairs = Vec::with_capacity(5);
        let value = |field: Field| match field {
            Field::Gid => self.gid.as_str(),
            Field::TransType => self.trans_type.as_str(),
            Field::BranchId => self.branch_id.as_str(),
            Field::Op => self.op.as_str(),
            Field::Dtm => self.dtm.as_deref().unwrap_or_default(),
        };
        let order: &[Field] = match self.dtm {
            Some(_) => &[Field::Dtm, Field::Gid, Field::BranchId, Field::TransType, Field::Op],
            None => &[Field::Gid, Field::TransType, Field::BranchId, Field::Op],
        };
        for &field in order {
            pairs.push((field.query_name(), value(field)));
        }
        pairs
    }

    /// Appends [`BranchCall::query_pairs`] to `url`'s query, percent-encoded.
    pub fn append_query(&self, url: &mut url::Url) {
        url.query_pairs_mut().extend_pairs(self.query_pairs());
    }

    /// Reads and validates a call from gRPC metadata (dtm's `BarrierFromGrpc`).
    pub fn from_grpc(metadata: &MetadataMap) -> Result<BranchCall, ProtocolError> {
        Received::from_grpc(metadata).call()
    }

    /// Reads and validates a call from a raw URL query string such as
    /// `gid=abc&trans_type=saga&branch_id=01&op=action` (dtm's `BarrierFromQuery`).
    pub fn from_query(query: &str) -> Result<BranchCall, ProtocolError> {
        Received::from_query(query).call()
    }
}

/// The dtm values a branch received, each checked when asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// By [`Field::index`]: absent, or the value (`Err` when the metadata
    /// value was not printable ASCII).
    values: [Option<Result<String, ()>>; 5],
}

impl Received {
    /// The values in the `dtm-*` metadata of a gRPC call.
    pub fn from_grpc(metadata: &MetadataMap) -> Received {
        let mut received = Received::default();
        for field in Field::ALL {
            received.values[field.index()] = metadata
                .get(field.metadata_key())
                .map(|value| value.to_str().map(str::to_string).map_err(|_| ()));
        }
        received
    }

    /// The values in a raw URL query string. Percent-encoding is decoded;
    /// the first occurrence of a repeated parameter wins, as with Go's
    /// `Query().Get`.
    pub fn from_query(query: &str) -> Received {
        Received::from_query_pairs(url::form_urlencoded::parse(query.as_bytes()))
    }

    /// Like [`Received::from_query`], from already-decoded pairs (for
    /// example axum's `Query<Vec<(String, String)>>`).
    pub fn from_query_pairs<I, K, V>(pairs: I) -> Received
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut received = Received::default();
        for (key, value) in pairs {
            if let Some(field) = Field::from_query_name(key.as_ref()) {
                received.values[field.index()].get_or_insert_with(|| Ok(value.as_ref().to_string()));
            }
        }
        received
    }

    /// The raw value of `field`: empty when absent, an error when the
    /// metadata value was not printable ASCII.
    pub fn raw(&self, field: Field) -> Result<&str, ProtocolError> {
        match &self.values[field.index()] {
            None => Ok(""),
            Some(Ok(value)) => Ok(value),
            Some(Err(())) => Err(ProtocolError::Invalid {
                field: field.query_name(),
                reason: "not printable ASCII".into(),
            }),
        }
    }

    /// The global id.
    pub fn gid(&self) -> Result<Gid, ProtocolError> {
        Gid::new(self.raw(Field::Gid)?)
    }

    /// The transaction type.
    pub fn trans_type(&self) -> Result<TransType, ProtocolError> {
        self.raw(Field::TransType)?.parse()
    }

    /// The branch id.
    pub fn branch_id(&self) -> Result<BranchId, ProtocolError> {
        BranchId::new(self.raw(Field::BranchId)?)
    }

    /// The op.
    pub fn op(&self) -> Result<Op, ProtocolError> {
        self.raw(Field::Op)?.parse()
    }

    /// The coordinator's address; absent and empty are both missing.
    pub fn dtm(&self) -> Result<&str, ProtocolError> {
        match self.raw(Field::Dtm)? {
            "" => Err(ProtocolError::Missing(Field::Dtm.query_name())),
            dtm => Ok(dtm),
        }
    }

    /// The whole call: all four values must be there and valid (checked
    /// in the order gid, trans_type, branch_id, op); `dtm` is optional.
    pub fn call(&self) -> Result<BranchCall, ProtocolError> {
        let (gid, trans_type, branch_id, op) =
            (self.gid()?, self.trans_type()?, self.branch_id()?, self.op()?);
        let dtm = Some(self.raw(Field::Dtm)?).filter(|d| !d.is_empty()).map(str::to_string);
        Ok(BranchCall { gid, trans_type, branch_id, op, dtm })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> BranchCall {
        BranchCall::new(Gid::new("g-1").unwrap(), TransType::Saga, BranchId::nth(1), Op::Action)
    }

    #[test]
    fn the_coordinator_and_an_ap_write_the_query_in_their_own_order() {
        let mut url = url::Url::parse("http://h/api/order/create").unwrap();
        call().append_query(&mut url);
        assert_eq!(url.query(), Some("gid=g-1&trans_type=saga&branch_id=02&op=action"));
        let mut url = url::Url::parse("http://h/x?a=1").unwrap();
        call().with_dtm("http://127.0.0.1:36789/api/dtmsvr").append_query(&mut url);
        assert_eq!(
            url.query(),
            Some(
                "a=1&dtm=http%3A%2F%2F127.0.0.1%3A36789%2Fapi%2Fdtmsvr&gid=g-1&branch_id=02&trans_type=saga&op=action"
            )
        );
    }

    #[test]
    fn metadata_always_carries_dtm_dtm_and_then_the_headers() {
        let mut metadata = MetadataMap::new();
        call().insert_metadata(&mut metadata, [("x-tenant", "t1")]).unwrap();
        let get = |key: &str| metadata.get(key).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get("dtm-gid").as_deref(), Some("g-1"));
        assert_eq!(get("dtm-trans_type").as_deref(), Some("saga"));
        assert_eq!(get("dtm-branch_id").as_deref(), Some("02"));
        assert_eq!(get("dtm-op").as_deref(), Some("action"));
        assert_eq!(get("dtm-dtm").as_deref(), Some(""));
        assert_eq!(get("x-tenant").as_deref(), Some("t1"));
        let bad = call().insert_metadata(&mut metadata, [("Bad Key", "v")]).unwrap_err();
        assert_eq!(bad, MetadataError::Key("Bad Key".into()));
        let bad = call().insert_metadata(&mut metadata, [("k", "a\nb")]).unwrap_err();
        assert_eq!(bad.key(), "k");
    }

    #[test]
    fn what_is_written_reads_back() {
        let sent = call().with_dtm("127.0.0.1:36790");
        let request = sent.grpc_request(()).unwrap();
        assert_eq!(BranchCall::from_grpc(request.metadata()).unwrap(), sent);
        let mut url = url::Url::parse("http://h/").unwrap();
        sent.append_query(&mut url);
        assert_eq!(BranchCall::from_query(url.query().unwrap()).unwrap(), sent);
        // The coordinator's empty dtm-dtm reads back as no coordinator.
        let plain = call();
        assert_eq!(BranchCall::from_grpc(plain.grpc_request(()).unwrap().metadata()).unwrap(), plain);
    }

    #[test]
    fn values_are_checked_when_asked_for() {
        let received = Received::from_query("gid=g1&branch_id=01&gid=ignored");
        assert_eq!(received.gid().unwrap().as_str(), "g1");
        assert_eq!(received.dtm(), Err(ProtocolError::Missing("dtm")));
        assert_eq!(received.call(), Err(ProtocolError::Missing("trans_type")));
        let mut metadata = MetadataMap::new();
        metadata.insert("dtm-gid", AsciiMetadataValue::try_from(&b"caf\xe9"[..]).unwrap());
        let received = Received::from_grpc(&metadata);
        assert!(matches!(received.gid(), Err(ProtocolError::Invalid { field: "gid", .. })));
        assert_eq!(received.op(), Err(ProtocolError::Missing("op")));
    }
}
