//! dtm's subtransaction barrier for sqlx, and the branch protocol types.
//!
//! (crate docs to be completed with the barrier module)

pub mod protocol;
pub mod result;

pub use protocol::{BranchId, Gid, Op, ProtocolError, TransType};
pub use result::{BranchError, BranchResult, FAILURE, ONGOING, SUCCESS};
