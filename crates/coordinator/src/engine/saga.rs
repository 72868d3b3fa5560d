//! Saga rules (dtm's `dtmsvr/trans_type_saga.go`), as pure functions over the steps' statuses.
//!
//! A saga of n steps has 2n branch rows: for step k (branch id `%02d` of
//! k+1) a `compensate` row, then an `action` row. Going forward, an action
//! may start once its prerequisites succeeded; going backward, a step is
//! compensated if its action may have run, and only after every step that
//! had to wait for it has been compensated.
//!
//! A sequential saga is a concurrent one whose orders form a chain (step k
//! waits for step k−1), so one set of rules serves both: at most one action
//! of a chain is ever runnable, and compensations come out in reverse order.

use dtm_protocol::{BranchId, Op};

use crate::model::{BranchStatus, SagaOrders, Step, TransRequest};
use crate::store::NewBranch;

/// The statuses of one step's two rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepState {
    /// The `action` row.
    pub action: BranchStatus,
    /// The `compensate` row.
    pub compensate: BranchStatus,
}

impl StepState {
    /// A step nothing has happened to yet.
    pub const NEW: StepState =
        StepState { action: BranchStatus::Prepared, compensate: BranchStatus::Prepared };
}

/// Who waits for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ordering {
    /// `before[k]`: steps that must succeed before step k's action starts.
    before: Vec<Vec<usize>>,
}

impl Ordering {
    /// Sequential saga: a chain. Concurrent: exactly the `orders`.
    pub fn new(orders: &SagaOrders, steps: usize) -> Ordering {
        let before = (0..steps)
            .map(|k| {
                if orders.concurrent {
                    orders.prerequisites(k).to_vec()
                } else if k == 0 {
                    Vec::new()
                } else {
                    vec![k - 1]
                }
            })
            .collect();
        Ordering { before }
    }

    fn ready(&self, steps: &[StepState], k: usize) -> bool {
        self.before[k].iter().all(|&p| steps[p].action == BranchStatus::Succeed)
    }

    /// Actions that may start now: prepared, not `busy`, prerequisites succeeded.
    pub fn runnable_actions(&self, steps: &[StepState], busy: &[bool]) -> Vec<usize> {
        (0..steps.len())
            .filter(|&k| steps[k].action == BranchStatus::Prepared && !busy[k] && self.ready(steps, k))
            .collect()
    }

    /// Steps that must be compensated: every step whose action is not
    /// `prepared` (it succeeded, or failed — a failed action may have left
    /// partial effects and the barrier makes its compensation safe), plus
    /// every still-`prepared` action that was eligible to run: it may have
    /// been started by an earlier pass whose outcome was lost.
    pub fn needs_compensation(&self, steps: &[StepState]) -> Vec<bool> {
        (0..steps.len()).map(|k| steps[k].action != BranchStatus::Prepared || self.ready(steps, k)).collect()
    }

    /// Compensations that may start now: needed, not yet done, not `busy`,
    /// and every needed step that waited for this one is already compensated.
    pub fn runnable_compensations(&self, steps: &[StepState], need: &[bool], busy: &[bool]) -> Vec<usize> {
        (0..steps.len())
            .filter(|&k| need[k] && steps[k].compensate != BranchStatus::Succeed && !busy[k])
            .filter(|&k| {
                (0..steps.len()).all(|j| {
                    !(need[j] && self.before[j].contains(&k)) || steps[j].compensate == BranchStatus::Succeed
                })
            })
            .collect()
    }

    /// All needed compensations are done.
    pub fn rolled_back(steps: &[StepState], need: &[bool]) -> bool {
        steps.iter().zip(need).all(|(s, &n)| !n || s.compensate == BranchStatus::Succeed)
    }
}

/// The branch rows of a new saga: per step, `compensate` then `action`,
/// both carrying the step's payload, as dtm's `trans_type_saga.go` lays them out.
pub fn branch_rows(request: &TransRequest) -> Vec<NewBranch> {
    let mut rows = Vec::with_capacity(request.steps.len() * 2);
    for (k, step) in request.steps.iter().enumerate() {
        if let Step::Saga { action, compensate } = step {
            let payload = request.payloads.get(k).cloned().unwrap_or_default();
            let branch_id = BranchId::nth(k);
            rows.push(NewBranch {
                url: compensate.as_str().to_string(),
                bin_data: payload.clone(),
                branch_id: branch_id.clone(),
                op: Op::Compensate,
            });
            rows.push(NewBranch {
                url: action.as_str().to_string(),
                bin_data: payload,
                branch_id,
                op: Op::Action,
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use BranchStatus::{Failed as F, Prepared as P, Succeed as S};

    fn st(action: BranchStatus, compensate: BranchStatus) -> StepState {
        StepState { action, compensate }
    }

    #[test]
    fn sequential_runs_one_action_at_a_time() {
        let o = Ordering::new(&SagaOrders::default(), 3);
        let mut steps = vec![StepState::NEW; 3];
        assert_eq!(o.runnable_actions(&steps, &[false; 3]), [0]);
        assert!(o.runnable_actions(&steps, &[true, false, false]).is_empty());
        steps[0].action = S;
        assert_eq!(o.runnable_actions(&steps, &[false; 3]), [1]);
        steps[1].action = F;
        assert!(o.runnable_actions(&steps, &[false; 3]).is_empty());
    }

    #[test]
    fn sequential_rollback_is_reverse_and_includes_the_failed_step() {
        let o = Ordering::new(&SagaOrders::default(), 3);
        let mut steps = vec![st(S, P), st(F, P), st(P, P)];
        let need = o.needs_compensation(&steps);
        assert_eq!(need, [true, true, false]);
        assert_eq!(o.runnable_compensations(&steps, &need, &[false; 3]), [1]);
        steps[1].compensate = S;
        assert_eq!(o.runnable_compensations(&steps, &need, &[false; 3]), [0]);
        steps[0].compensate = S;
        assert!(Ordering::rolled_back(&steps, &need));
    }

    #[test]
    fn an_eligible_prepared_action_is_compensated() {
        // Timed out while step 1 may have been running.
        let o = Ordering::new(&SagaOrders::default(), 3);
        let steps = vec![st(S, P), st(P, P), st(P, P)];
        assert_eq!(o.needs_compensation(&steps), [true, true, false]);
    }

    #[test]
    fn concurrent_orders() {
        let orders = SagaOrders::parse(r#"{"concurrent":true,"orders":{"2":[0,1]}}"#, 3).unwrap();
        let o = Ordering::new(&orders, 3);
        let mut steps = vec![StepState::NEW; 3];
        assert_eq!(o.runnable_actions(&steps, &[false; 3]), [0, 1]);
        steps[0].action = S;
        assert_eq!(o.runnable_actions(&steps, &[false, true, false]), [] as [usize; 0]);
        steps[1].action = S;
        assert_eq!(o.runnable_actions(&steps, &[false; 3]), [2]);
        // Step 2 failed: its compensation first, then 0 and 1 together.
        steps[2].action = F;
        let need = o.needs_compensation(&steps);
        assert_eq!(need, [true, true, true]);
        assert_eq!(o.runnable_compensations(&steps, &need, &[false; 3]), [2]);
        steps[2].compensate = S;
        assert_eq!(o.runnable_compensations(&steps, &need, &[false; 3]), [0, 1]);
    }
}
