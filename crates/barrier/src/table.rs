//! The name of the barrier table, validated before it goes into SQL.
//!
//! dtm lets every service choose where its barrier table lives
//! (`dtmcli.SetBarrierTableName`), default `dtm_barrier.barrier`. The name is
//! interpolated into SQL text — a table name cannot be a bind parameter — so
//! it is checked once, here, and the rest of the crate can format it into
//! statements without a second thought.

use std::fmt;
use std::sync::Arc;

use dtm_protocol::ProtocolError;

/// A validated, optionally schema-qualified table name: `barrier` or
/// `dtm_barrier.barrier`.
///
/// Each part is 1 to 64 characters of `[A-Za-z0-9_]` and does not start with
/// a digit, which is a valid unquoted identifier on MySQL, PostgreSQL and
/// SQLite alike. Cloning is cheap (the name is shared).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BarrierTable(Arc<str>);

impl BarrierTable {
    /// dtm's default, used on MySQL and PostgreSQL: table `barrier` in the
    /// database (MySQL) or schema (PostgreSQL) `dtm_barrier`.
    pub const DTM_DEFAULT: &'static str = "dtm_barrier.barrier";

    /// The unqualified name, used on SQLite (which has no schemas to speak of)
    /// and in tests that keep the barrier inside their own fresh database.
    pub const UNQUALIFIED: &'static str = "barrier";

    /// Longest accepted part (MySQL's identifier limit).
    pub const MAX_PART_LEN: usize = 64;

    /// Validates a table name.
    pub fn new(name: &str) -> Result<BarrierTable, ProtocolError> {
        let invalid = |reason: &str| ProtocolError::Invalid { field: "barrier table", reason: reason.into() };
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 {
            return Err(invalid("at most one `.` (schema.table)"));
        }
        for part in parts {
            if part.is_empty() || part.len() > BarrierTable::MAX_PART_LEN {
                return Err(invalid("each part must be 1 to 64 characters"));
            }
            if part.starts_with(|c: char| c.is_ascii_digit())
                || !part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(invalid("each part must be [A-Za-z_][A-Za-z0-9_]*"));
            }
        }
        Ok(BarrierTable(name.into()))
    }

    /// Wraps one of this crate's own constants, checked by a unit test, so
    /// that a default never needs a fallible constructor on a request path.
    pub(crate) fn trusted(name: &'static str) -> BarrierTable {
        debug_assert!(BarrierTable::new(name).is_ok(), "{name}");
        BarrierTable(name.into())
    }

    /// The name as it goes into SQL.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The schema (PostgreSQL) or database (MySQL) part, if qualified.
    /// Creating it is the job of whoever owns the server, not of the barrier.
    pub fn schema(&self) -> Option<&str> {
        self.0.split_once('.').map(|(schema, _)| schema)
    }
}

impl fmt::Display for BarrierTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for BarrierTable {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BarrierTable::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_qualified_identifiers() {
        assert_eq!(BarrierTable::new("barrier").unwrap().schema(), None);
        let table = BarrierTable::new(BarrierTable::DTM_DEFAULT).unwrap();
        assert_eq!(table.schema(), Some("dtm_barrier"));
        assert_eq!(table.to_string(), "dtm_barrier.barrier");
        assert!(BarrierTable::new("_b1").is_ok());
        assert!(BarrierTable::new(BarrierTable::UNQUALIFIED).is_ok());
    }

    #[test]
    fn refuses_anything_that_could_change_the_sql() {
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a.b.c",
            "1barrier",
            "barrier; drop table x",
            "barrier--",
            "`barrier`",
            "\"barrier\"",
            "bar rier",
            "barrière",
        ] {
            assert!(
                matches!(BarrierTable::new(bad), Err(ProtocolError::Invalid { field: "barrier table", .. })),
                "{bad:?}"
            );
        }
        assert!(BarrierTable::new(&"x".repeat(65)).is_err());
        assert!(BarrierTable::new(&"x".repeat(64)).is_ok());
    }
}
