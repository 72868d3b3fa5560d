//! The words of dtm's branch protocol, as types.
//!
//! Every branch call carries four values — `gid`, `trans_type`, `branch_id`,
//! `op` — as gRPC metadata (`dtm-gid`, …) or HTTP query parameters, and every
//! branch answers with one of four results. Strings in dtm, types here, so
//! that an unknown op or a business failure mistaken for a retry is a compile
//! error rather than a production incident.

use std::fmt;
use std::str::FromStr;

/// A global transaction id (dtm's `gid`).
///
/// 1 to 128 bytes (the width of dtm's `gid` columns) of visible ASCII
/// (`!` to `~`) except `;`. This type is the one place that decides; every
/// API and the barrier go through [`Gid::new`].
///
/// * Visible ASCII because the gid travels to gRPC branches as the
///   `dtm-gid` metadata value, and a gRPC (HTTP/2) header value must be
///   printable ASCII: grpc-go refuses anything else, tonic cannot even build
///   the header. A gid that cannot be sent would be stored and retried
///   forever, so it is refused at submit instead. Spaces are refused too:
///   HTTP stacks trim them at the ends of header values, which would change
///   the id on the way.
/// * No `;`: dtm strips `\n`, `\r` and `;` from gids (`dtmimp.Escape`); we
///   refuse them instead of silently changing the id.
///
/// dtm's own gids (`NewGid`, shortuuid) and every gid of its SDK examples
/// (letters, digits, `-`, `_`) are accepted. Gids compare as exact byte
/// strings: the MySQL schema gives gid columns a binary collation, so `AbC`
/// and `abc` are two transactions there too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Gid(pub(crate) String);

impl Gid {
    /// Longest accepted gid, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates and wraps a gid.
    pub fn new(gid: impl Into<String>) -> Result<Gid, ProtocolError> {
        let gid = gid.into();
        if gid.is_empty() {
            return Err(ProtocolError::Missing("gid"));
        }
        if gid.len() > Gid::MAX_LEN {
            return Err(ProtocolError::Invalid { field: "gid", reason: "longer than 128 bytes".into() });
        }
        if let Some(bad) = gid.chars().find(|&c| !c.is_ascii_graphic() || c == ';') {
            return Err(ProtocolError::Invalid {
                field: "gid",
                reason: format!(
                    "contains {bad:?}: only visible ASCII without ';' can travel as gRPC metadata (dtm-gid)"
                ),
            });
        }
        Ok(Gid(gid))
    }

    /// A gid read back from storage, checked by the rules that held before
    /// gids had to be visible ASCII: non-empty, at most 128 bytes, no control
    /// character or `;`.
    ///
    /// Only for rows already stored (a coordinator's `trans_global`): a
    /// transaction accepted by an older version must still be readable, or
    /// one such row would make every read of a batch that holds it fail.
    /// Everything that comes from a request goes through [`Gid::new`].
    pub fn from_storage(gid: impl Into<String>) -> Result<Gid, ProtocolError> {
        let gid = gid.into();
        if gid.is_empty() {
            return Err(ProtocolError::Missing("gid"));
        }
        if gid.len() > Gid::MAX_LEN || gid.chars().any(|c| c.is_control() || c == ';') {
            return Err(ProtocolError::Invalid {
                field: "gid",
                reason: "longer than 128 bytes, or contains a control character or ';'".into(),
            });
        }
        Ok(Gid(gid))
    }

    /// The gid as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Gid {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Gid::new(s)
    }
}

/// A branch id: `"01"`, `"02"`, … for saga steps and TCC branches, `"0101"`
/// for a nested TCC branch, `"00"` for a 2-phase message's check-back,
/// `"01-02"` for a topic subscriber of a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct BranchId(String);

impl BranchId {
    /// Longest accepted branch id (dtm's column is 128 wide).
    pub const MAX_LEN: usize = 128;

    /// The branch id of a 2-phase message's local transaction and check-back.
    pub fn msg() -> BranchId {
        BranchId("00".to_string())
    }

    /// The id of the `index`-th (0-based) branch: `"01"`, `"02"`, … (`%02d`).
    pub fn nth(index: usize) -> BranchId {
        BranchId(format!("{:02}", index + 1))
    }

    /// Validates and wraps a branch id.
    pub fn new(id: impl Into<String>) -> Result<BranchId, ProtocolError> {
        let id = id.into();
        if id.is_empty() {
            return Err(ProtocolError::Missing("branch_id"));
        }
        if id.len() > BranchId::MAX_LEN
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ProtocolError::Invalid {
                field: "branch_id",
                reason: "must be at most 128 characters of [0-9A-Za-z_-]".into(),
            });
        }
        Ok(BranchId(id))
    }

    /// The branch id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BranchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BranchId {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BranchId::new(s)
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $field:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ProtocolError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    "" => Err(ProtocolError::Missing($field)),
                    other => Err(ProtocolError::Invalid {
                        field: $field,
                        reason: format!("unknown value {other:?}"),
                    }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// The kind of global transaction.
    TransType, "trans_type" {
        /// A saga: actions in order, compensations in reverse on failure.
        Saga = "saga",
        /// Try-Confirm-Cancel.
        Tcc = "tcc",
        /// A 2-phase message: a local transaction plus guaranteed follow-up actions.
        Msg = "msg",
        /// XA two-phase commit.
        Xa = "xa",
        /// dtm's workflow mode.
        Workflow = "workflow",
    }
}

string_enum! {
    /// What a branch call asks the branch to do.
    Op, "op" {
        /// Saga / message forward step.
        Action = "action",
        /// Saga compensation of an action.
        Compensate = "compensate",
        /// TCC first phase.
        Try = "try",
        /// TCC second phase, success.
        Confirm = "confirm",
        /// TCC second phase, failure.
        Cancel = "cancel",
        /// XA second phase, success.
        Commit = "commit",
        /// XA / workflow second phase, failure.
        Rollback = "rollback",
        /// A 2-phase message's local transaction and its check-back (branch `00`).
        Msg = "msg",
        /// A workflow XA step's local transaction, recorded before its
        /// `XA PREPARE` (dtm's `client/workflow/imp.go`, `doXa`).
        Business = "business",
    }
}

string_enum! {
    /// Status of a global transaction (dtm's `trans_global.status`, `dtmcli/consts.go`).
    GlobalStatus, "status" {
        /// Registered but not yet submitted (2-phase msg, TCC, XA, workflow).
        Prepared = "prepared",
        /// Going forward: actions / confirms / commits are being executed.
        Submitted = "submitted",
        /// Going backward: compensations / cancels / rollbacks are being executed.
        Aborting = "aborting",
        /// Final: every forward branch succeeded.
        Succeed = "succeed",
        /// Final: rolled back (or force-stopped).
        Failed = "failed",
    }
}

impl GlobalStatus {
    /// Final statuses never change again and are never leased.
    pub fn is_final(self) -> bool {
        matches!(self, GlobalStatus::Succeed | GlobalStatus::Failed)
    }
}

string_enum! {
    /// Status of one branch operation row (`trans_branch_op.status`).
    BranchStatus, "branch status" {
        /// Not yet done.
        Prepared = "prepared",
        /// Done; never called again.
        Succeed = "succeed",
        /// A saga action answered FAILURE.
        Failed = "failed",
    }
}

string_enum! {
    /// How branches of a transaction are reached (dtm's `protocol` column).
    Protocol, "protocol" {
        /// HTTP (dtm's default when the field is empty).
        Http = "http",
        /// gRPC (forced by dtm's gRPC API).
        Grpc = "grpc",
        /// JSON-RPC 2.0 over HTTP.
        JsonRpc = "json-rpc",
    }
}

impl Protocol {
    /// dtm treats an empty protocol as `http`.
    pub fn parse_or_default(s: &str) -> Result<Protocol, ProtocolError> {
        if s.is_empty() { Ok(Protocol::Http) } else { s.parse() }
    }
}

impl Op {
    /// The forward op that a compensating op undoes: `compensate → action`,
    /// `cancel → try`, `rollback → action`. The barrier inserts a row for it
    /// so that a compensation arriving first blocks the late forward op.
    pub fn origin(self) -> Option<Op> {
        match self {
            Op::Compensate => Some(Op::Action),
            Op::Cancel => Some(Op::Try),
            Op::Rollback => Some(Op::Action),
            _ => None,
        }
    }

    /// Whether this op undoes another one (and so may be a null compensation).
    pub fn is_compensation(self) -> bool {
        self.origin().is_some()
    }
}

/// A missing or malformed protocol value. Services answer it with gRPC
/// `InvalidArgument` or HTTP 400: it is the caller's mistake, never a retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The value is absent or empty.
    #[error("missing dtm parameter `{0}`")]
    Missing(&'static str),
    /// The value is present but not acceptable.
    #[error("invalid dtm parameter `{field}`: {reason}")]
    Invalid {
        /// Which parameter.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_ids_are_two_digit_counters() {
        assert_eq!(BranchId::nth(0).as_str(), "01");
        assert_eq!(BranchId::nth(9).as_str(), "10");
        assert_eq!(BranchId::msg().as_str(), "00");
    }

    #[test]
    fn ops_round_trip_and_know_their_origin() {
        for op in Op::ALL {
            assert_eq!(op.as_str().parse::<Op>().unwrap(), *op);
        }
        assert_eq!(Op::Compensate.origin(), Some(Op::Action));
        assert_eq!(Op::Cancel.origin(), Some(Op::Try));
        assert_eq!(Op::Action.origin(), None);
        assert_eq!("".parse::<Op>(), Err(ProtocolError::Missing("op")));
        assert!(matches!("drop table".parse::<Op>(), Err(ProtocolError::Invalid { field: "op", .. })));
    }

    #[test]
    fn gids_are_validated() {
        assert!(Gid::new("abc-123").is_ok());
        assert_eq!(Gid::new(""), Err(ProtocolError::Missing("gid")));
        assert!(Gid::new("a;b").is_err());
        assert!(Gid::new("a\nb").is_err());
        assert!(Gid::new("x".repeat(129)).is_err());
        // What dtm's NewGid, its SDK examples and ours produce.
        for ok in ["Yo6hjXnuPHdEdpy7cytNBK", "gid-1_A", "a.b:c/d@e+f=g~h!", "AbC", &"x".repeat(128)] {
            let gid = Gid::new(ok).unwrap();
            assert!(tonic::metadata::AsciiMetadataValue::try_from(gid.as_str()).is_ok(), "{ok}");
        }
        // Everything a gRPC metadata value cannot carry.
        for bad in ["a b", " a", "a\tb", "caf\u{e9}", "\u{4e2d}\u{6587}", "a\u{7f}", "emoji\u{1f600}", "a\rb"]
        {
            let e = Gid::new(bad).unwrap_err();
            assert!(matches!(e, ProtocolError::Invalid { field: "gid", .. }), "{bad:?}: {e:?}");
        }
        // Rows stored under the old rules still read back; garbage does not.
        for legacy in ["a b", "caf\u{e9}", "\u{4e2d}\u{6587}"] {
            assert_eq!(Gid::from_storage(legacy).unwrap().as_str(), legacy);
        }
        for bad in ["", "a;b", "a\nb", &"x".repeat(129)] {
            assert!(Gid::from_storage(bad).is_err(), "{bad:?}");
        }
    }
}
