//! XA, as dtm runs it (`dtmsvr/trans_type_xa.go`): two-phase commit across
//! the branches' own databases, with the coordinator as transaction manager.
//!
//! 1. The application (AP) `prepare`s the global transaction, then calls
//!    each branch itself (op `action`, with `phase2_url`).
//! 2. A branch runs its SQL inside a local XA transaction (`XA START` …
//!    `XA END` on MySQL/MariaDB, `BEGIN` on PostgreSQL), registers itself
//!    with `registerBranch` (`trans_type` `xa`, `url` = its phase-2 URL) and
//!    then prepares the local transaction (`XA PREPARE`, `PREPARE
//!    TRANSACTION`): its effect is durable but invisible, its locks held.
//! 3. The AP `submit`s when every branch answered success, else `abort`s;
//!    a prepared XA left alone times out (`timeout_to_fail`) and is aborted.
//! 4. The coordinator then calls every branch's phase-2 URL with op
//!    `commit` (submitted) or `rollback` (aborting), in registration order,
//!    always as an HTTP POST even without a body, until each succeeds; the
//!    branch runs `XA COMMIT` / `XA ROLLBACK` (`COMMIT PREPARED` /
//!    `ROLLBACK PREPARED`). A FAILURE of a phase-2 call is retried like an
//!    error: a prepared transaction can always be finished.
//!
//! Everything after step 1 is what TCC does, with other op names and in
//! registration order (TCC goes newest first), so the passes are
//! [`super::sequence`]'s, under the same lease and fencing; this
//! module holds what is XA's own: the two rows `registerBranch` stores and
//! which op each global status calls for.

use dtm_protocol::Op;

use crate::model::{BranchUrl, GlobalStatus, RegisterBranchRequest};
use crate::store::NewBranch;

/// The phase-2 op a pass calls in `status`, and the final status once every
/// branch answered it. `None`: nothing to call in that status.
pub(crate) fn phase_two(status: GlobalStatus) -> Option<(Op, GlobalStatus)> {
    match status {
        GlobalStatus::Submitted => Some((Op::Commit, GlobalStatus::Succeed)),
        GlobalStatus::Aborting => Some((Op::Rollback, GlobalStatus::Failed)),
        _ => None,
    }
}

/// The rows of an XA `registerBranch`, as dtm stores them: `rollback` then
/// `commit`, both with the branch's phase-2 URL and its payload.
pub(crate) fn registered_rows(request: &RegisterBranchRequest, url: &BranchUrl) -> [NewBranch; 2] {
    let row = |op| NewBranch {
        url: url.as_str().to_string(),
        bin_data: request.data.clone(),
        branch_id: request.branch_id.clone(),
        op,
    };
    [row(Op::Rollback), row(Op::Commit)]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn submitted_commits_and_aborting_rolls_back() {
        assert_eq!(phase_two(GlobalStatus::Submitted), Some((Op::Commit, GlobalStatus::Succeed)));
        assert_eq!(phase_two(GlobalStatus::Aborting), Some((Op::Rollback, GlobalStatus::Failed)));
        for other in [GlobalStatus::Prepared, GlobalStatus::Succeed, GlobalStatus::Failed] {
            assert_eq!(phase_two(other), None);
        }
    }

    #[test]
    fn a_registration_stores_rollback_then_commit_with_one_url() {
        let map = BTreeMap::from([
            ("gid".to_string(), "x1".to_string()),
            ("trans_type".to_string(), "xa".to_string()),
            ("branch_id".to_string(), "01".to_string()),
            ("url".to_string(), "http://h:1/xa".to_string()),
        ]);
        let request = RegisterBranchRequest::from_map(&map, None).unwrap();
        let url = BranchUrl::parse("http://h:1/xa").unwrap();
        let rows = registered_rows(&request, &url);
        assert_eq!(rows.iter().map(|r| r.op).collect::<Vec<_>>(), [Op::Rollback, Op::Commit]);
        assert!(rows.iter().all(|r| r.url == "http://h:1/xa" && r.branch_id.as_str() == "01"));
    }
}
