//! The fencing workload: three-step sagas straight to the two coordinators,
//! from clients that resubmit a saga while it is still running.
//!
//! Each saga, with `wait_result`:
//!
//! | step | action (compensation) | effect checked by |
//! |---|---|---|
//! | 01 | stock-srv `deduct` goods [`GOODS_A`] (`deductRollback`) | barrier rows, stock total |
//! | 02 | the [`gate`](super::gate) (slow, FAILURE when the payload says so), or stock-srv `deduct` goods [`GOODS_B`], sometimes more than there is | barrier rows, `chaos_gate.gate` rows, stock total |
//! | 03 | order-srv `create` goods [`GOODS_A`] (`createRollback`) | barrier rows, the order row of the gid |
//!
//! The failing step is the middle one, so a failed saga has an action
//! before it to compensate (01) and one after it that must never take
//! effect (03) — or, if it did, must be compensated too. Steps 01 and 03
//! name `etcd://…` URLs, so the calls are balanced over the service
//! instances and cross the fault proxies like order-api's.
//!
//! Hostile clients: for about half of the sagas the client submits the
//! same body (same gid) again, with `wait_result`, 30 ms to half a second
//! after the first submit — while the first pass is still waiting on the
//! gate — usually to the other coordinator, sometimes a third time. The
//! submits use the coordinators' gRPC API: steps 01 and 03 carry protobuf
//! payloads, which dtm's HTTP API cannot (it takes JSON text). Everything
//! is drawn from the seed; the gids are `fence-s<seed>-c<client>-<n>`.
//!
//! A share of each client's transactions are TCCs instead
//! (`tcc-s<seed>-c<client>-<n>`): prepare with a short `timeout_to_fail`,
//! two branches on the gate's TCC routes (register, then a slow try; some
//! tries answer FAILURE), with the client dawdling between them — sometimes
//! past the timeout, so the coordinator's cancel races the next
//! registration — and then submit, or abort: after a failed try, on a
//! whim, or while the last try is still in flight.

use std::time::Duration;

use dtm_client::{ClientError, DtmClient, Saga, Tcc};
use dtm_protocol::Gid;
use futures::future::join_all;
use proto::order::{CREATE_PATH, CREATE_ROLLBACK_PATH, CreateReq};
use proto::stock::{DEDUCT_PATH, DEDUCT_ROLLBACK_PATH, DeductReq};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ChaosError;
use super::gate::{ACTION_PATH, CANCEL_PATH, COMPENSATE_PATH, CONFIRM_PATH, GateReq, TRY_PATH};

/// Deducted by step 01 and ordered by step 03: plenty, never runs out.
pub const GOODS_A: i64 = 11;
/// Deducted by step 02 when it is not the gate: runs out during a run.
pub const GOODS_B: i64 = 12;
/// The fencing workload's goods and their stock at the start.
pub const GOODS: [(i64, i32); 2] = [(GOODS_A, 1_000_000), (GOODS_B, 300)];
/// Share of sagas whose middle step is the gate (the rest: stock B).
const GATE_SHARE: f64 = 0.65;
/// Share of gate steps that answer FAILURE.
const GATE_FAIL_SHARE: f64 = 0.5;
/// Share of stock-B steps asking more than was ever in stock.
const OVER_STOCK_SHARE: f64 = 0.3;
/// Share of sagas submitted a second time while the first submit runs.
const RESUBMIT_SHARE: f64 = 0.5;
/// Share of those submitted a third time.
const THIRD_SUBMIT_SHARE: f64 = 0.3;
/// Share of a client's transactions that are TCCs.
const TCC_SHARE: f64 = 0.3;
/// The TCCs' `timeout_to_fail`: short, so that the coordinator's timeout
/// races the slow clients.
const TCC_TIMEOUT_TO_FAIL: Duration = Duration::from_secs(2);
/// A client's deadline for one submit (a pass waits for every branch
/// once; a paused coordinator never answers).
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(12);

/// Where the sagas go and what their branches are.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Each coordinator's gRPC address (`127.0.0.1:P`).
    pub grpc: Vec<String>,
    /// `etcd://127.0.0.1:P`: the services' discovery, for branch URLs.
    pub etcd: String,
    /// `http://127.0.0.1:P`: the gate (through its fault proxy).
    pub gate: String,
}

/// The middle step of one saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Middle {
    /// The slow gate branch.
    Gate(GateReq),
    /// stock-srv deducts `num` of [`GOODS_B`].
    Stock {
        /// Units.
        num: i64,
    },
}

/// What one saga asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaPlan {
    /// The order's user.
    pub user: i64,
    /// Units of [`GOODS_A`] deducted (01) and ordered (03).
    pub num: i64,
    /// Step 02.
    pub middle: Middle,
}

impl SagaPlan {
    /// Whether the saga must end failed whatever happens (the gate says
    /// FAILURE, or stock B never had that many).
    pub fn must_fail(&self) -> bool {
        match self.middle {
            Middle::Gate(gate) => gate.fail,
            Middle::Stock { num } => num > i64::from(GOODS[1].1),
        }
    }

    /// The saga of this plan.
    pub fn saga(&self, gid: Gid, targets: &Targets) -> Saga {
        let etcd = &targets.etcd;
        let stock = |path: &str| format!("{etcd}/stock.rpc{path}");
        let order = |path: &str| format!("{etcd}/order.rpc{path}");
        let saga = Saga::new(gid).add(
            stock(DEDUCT_PATH),
            stock(DEDUCT_ROLLBACK_PATH),
            &DeductReq { goods_id: GOODS_A, num: self.num },
        );
        let saga = match self.middle {
            Middle::Gate(req) => saga.add_raw(
                format!("{}{ACTION_PATH}", targets.gate),
                format!("{}{COMPENSATE_PATH}", targets.gate),
                serde_json::to_vec(&req).unwrap_or_default(),
            ),
            Middle::Stock { num } => saga.add(
                stock(DEDUCT_PATH),
                stock(DEDUCT_ROLLBACK_PATH),
                &DeductReq { goods_id: GOODS_B, num },
            ),
        };
        saga.add(
            order(CREATE_PATH),
            order(CREATE_ROLLBACK_PATH),
            &CreateReq { user_id: self.user, goods_id: GOODS_A, num: self.num },
        )
        .wait_result(true)
    }

    fn draw(rng: &mut StdRng) -> SagaPlan {
        let user = rng.random_range(1..=10_000);
        let num = rng.random_range(1..=3);
        let middle = if rng.random_bool(GATE_SHARE) {
            Middle::Gate(GateReq {
                fail: rng.random_bool(GATE_FAIL_SHARE),
                delay_ms: rng.random_range(150..450),
            })
        } else if rng.random_bool(OVER_STOCK_SHARE) {
            Middle::Stock { num: rng.random_range(400..=500) }
        } else {
            Middle::Stock { num: rng.random_range(1..=3) }
        };
        SagaPlan { user, num, middle }
    }
}

/// What a submit got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtmAnswer {
    /// SUCCESS: the saga succeeded.
    Succeed,
    /// FAILURE: the saga failed (or is rolling back).
    Failed,
    /// ONGOING: still going forward.
    Ongoing,
    /// A resubmit refused because the saga is no longer `submitted`: dtm
    /// answers FAILURE with "current status 'succeed', cannot submit",
    /// which is not the saga's outcome. The status it names.
    AlreadyIn(String),
    /// No answer, or the coordinator unreachable: outcome unknown.
    Unavailable,
    /// Any other answer (a conflict, a storage error), with its text.
    Other(String),
}

impl DtmAnswer {
    fn of(result: Result<(), ClientError>) -> DtmAnswer {
        match result {
            Ok(()) => DtmAnswer::Succeed,
            Err(ClientError::Failure(message)) => match already_in(&message) {
                Some(status) => DtmAnswer::AlreadyIn(status),
                None => DtmAnswer::Failed,
            },
            Err(ClientError::Ongoing) => DtmAnswer::Ongoing,
            Err(ClientError::Unavailable(_)) => DtmAnswer::Unavailable,
            Err(err) => DtmAnswer::Other(err.to_string()),
        }
    }

    /// `SUCCESS`, `FAILURE`, … for the report.
    pub fn label(&self) -> &'static str {
        match self {
            DtmAnswer::Succeed => "SUCCESS",
            DtmAnswer::Failed => "FAILURE",
            DtmAnswer::Ongoing => "ONGOING",
            DtmAnswer::AlreadyIn(_) => "refused: already final",
            DtmAnswer::Unavailable => "unavailable",
            DtmAnswer::Other(_) => "other error",
        }
    }
}

/// The status in dtm's refusal "current status 'succeed', cannot submit".
fn already_in(message: &str) -> Option<String> {
    let rest = message.split("current status '").nth(1)?;
    let (status, tail) = rest.split_once('\'')?;
    tail.contains("cannot submit").then(|| status.to_string())
}

/// What one TCC client does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TccPlan {
    /// Per branch: how long the client dawdles before registering it, and
    /// what its try does.
    pub tries: Vec<(Duration, GateReq)>,
    /// Abort even if every try succeeded.
    pub abort: bool,
    /// Abort while the last try is in flight.
    pub abort_during_last_try: bool,
}

impl TccPlan {
    fn draw(rng: &mut StdRng) -> TccPlan {
        let tries = (0..2)
            .map(|_| {
                let dawdle = Duration::from_millis(if rng.random_bool(0.2) {
                    rng.random_range(1500..2600)
                } else {
                    rng.random_range(0..300)
                });
                (dawdle, GateReq { fail: rng.random_bool(0.15), delay_ms: rng.random_range(50..400) })
            })
            .collect();
        TccPlan { tries, abort: rng.random_bool(0.2), abort_during_last_try: rng.random_bool(0.2) }
    }
}

/// One TCC and every call its client made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TccRecord {
    /// The gid.
    pub gid: String,
    /// What the client meant to do.
    pub plan: TccPlan,
    /// The coordinator it used (0 or 1).
    pub coordinator: usize,
    /// `prepare`, `try 01`, `try 02`, `submit` or `abort`, and the answer,
    /// in order.
    pub calls: Vec<(String, DtmAnswer)>,
}

/// One submit of a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submit {
    /// Sent at (from the start of traffic).
    pub at: Duration,
    /// Answered (or given up) at.
    pub finished: Duration,
    /// Which coordinator (0 or 1).
    pub coordinator: usize,
    /// A resubmit of a saga already submitted.
    pub resubmit: bool,
    /// The answer.
    pub answer: DtmAnswer,
}

/// One saga and every submit of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRecord {
    /// The gid.
    pub gid: String,
    /// The steps asked.
    pub plan: SagaPlan,
    /// Every submit, the first one first.
    pub submits: Vec<Submit>,
}

/// The running fencing clients.
pub struct FencingDriver {
    stop: CancellationToken,
    clients: Vec<JoinHandle<(Vec<SagaRecord>, Vec<TccRecord>)>>,
}

impl FencingDriver {
    /// Starts `clients` clients.
    pub fn start(
        targets: &Targets,
        clients: usize,
        seed: u64,
        t0: Instant,
    ) -> Result<FencingDriver, ChaosError> {
        let stop = CancellationToken::new();
        let channels = discovery::ChannelCache::new();
        let mut dtm = Vec::new();
        for address in &targets.grpc {
            dtm.push(
                DtmClient::with_timeout(address, channels.clone(), SUBMIT_TIMEOUT)
                    .map_err(|e| ChaosError::Setup(format!("dtm client for {address}: {e}")))?,
            );
        }
        if dtm.is_empty() {
            return Err(ChaosError::Setup("the fencing workload needs a coordinator".into()));
        }
        let clients = (0..clients)
            .map(|i| {
                // Streams distinct from the quick-order clients' of the same seed.
                let rng = StdRng::seed_from_u64(seed.wrapping_mul(2_000_003).wrapping_add(7919 + i as u64));
                let client = Client { id: i, seed, dtm: dtm.clone(), targets: targets.clone(), t0 };
                tokio::spawn(client.run(rng, stop.clone()))
            })
            .collect();
        Ok(FencingDriver { stop, clients })
    }

    /// Stops the clients after their current transaction; every record.
    pub async fn stop(self) -> (Vec<SagaRecord>, Vec<TccRecord>) {
        self.stop.cancel();
        let (mut records, mut tccs) = (Vec::new(), Vec::new());
        for client in self.clients {
            if let Ok((sagas, mine)) = client.await {
                records.extend(sagas);
                tccs.extend(mine);
            }
        }
        records.sort_by_key(|r| r.submits.first().map(|s| s.at));
        (records, tccs)
    }
}

struct Client {
    id: usize,
    seed: u64,
    /// One per coordinator.
    dtm: Vec<DtmClient>,
    targets: Targets,
    t0: Instant,
}

impl Client {
    async fn run(self, mut rng: StdRng, stop: CancellationToken) -> (Vec<SagaRecord>, Vec<TccRecord>) {
        let mut records = Vec::new();
        let mut tccs = Vec::new();
        let mut n = 0u64;
        while !stop.is_cancelled() {
            n += 1;
            if rng.random_bool(TCC_SHARE) {
                let plan = TccPlan::draw(&mut rng);
                let coordinator = rng.random_range(0..self.dtm.len());
                let abort_after = Duration::from_millis(rng.random_range(20..200));
                let gid = format!("tcc-s{}-c{}-{n}", self.seed, self.id);
                // Boxed: the TCC's calls make a large state machine.
                tccs.push(Box::pin(self.tcc(gid, plan, coordinator, abort_after)).await);
                continue;
            }
            let gid = format!("fence-s{}-c{}-{n}", self.seed, self.id);
            let Ok(valid) = Gid::new(gid.clone()) else { break };
            let plan = SagaPlan::draw(&mut rng);
            let saga = plan.saga(valid, &self.targets);
            // Who gets which submit, and when: drawn before sending, so the
            // plan of a seed does not depend on the answers.
            let first = rng.random_range(0..self.dtm.len());
            let mut sends = vec![(Duration::ZERO, first, false)];
            if rng.random_bool(RESUBMIT_SHARE) {
                let other = (first + 1) % self.dtm.len();
                sends.push((Duration::from_millis(rng.random_range(30..500)), other, true));
                if rng.random_bool(THIRD_SUBMIT_SHARE) {
                    let any = rng.random_range(0..self.dtm.len());
                    sends.push((Duration::from_millis(rng.random_range(30..700)), any, true));
                }
            }
            let t0 = self.t0;
            let submits = join_all(sends.into_iter().map(|(delay, coordinator, resubmit)| {
                let client = &self.dtm[coordinator];
                let saga = &saga;
                async move {
                    tokio::time::sleep(delay).await;
                    let at = t0.elapsed();
                    let answer = DtmAnswer::of(client.submit(saga).await);
                    Submit { at, finished: t0.elapsed(), coordinator, resubmit, answer }
                }
            }))
            .await;
            let settled = matches!(submits[0].answer, DtmAnswer::Succeed | DtmAnswer::Failed);
            records.push(SagaRecord { gid, plan, submits });
            if !settled {
                // A real client backs off instead of spinning on a dead coordinator.
                let pause = Duration::from_millis(rng.random_range(100..200));
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stop.cancelled() => {}
                }
            }
        }
        (records, tccs)
    }

    /// One TCC as `plan` says, on coordinator `coordinator`.
    async fn tcc(&self, gid: String, plan: TccPlan, coordinator: usize, abort_after: Duration) -> TccRecord {
        let mut calls = Vec::new();
        let record = |calls: Vec<(String, DtmAnswer)>| TccRecord {
            gid: gid.clone(),
            plan: plan.clone(),
            coordinator,
            calls,
        };
        let Ok(valid) = Gid::new(gid.clone()) else { return record(calls) };
        let tcc = Tcc::new(self.dtm[coordinator].clone(), valid)
            .timeout_to_fail(TCC_TIMEOUT_TO_FAIL)
            .wait_result(true);
        let prepared = DtmAnswer::of(tcc.prepare().await);
        let go_on = prepared == DtmAnswer::Succeed;
        calls.push(("prepare".to_string(), prepared));
        if !go_on {
            return record(calls);
        }
        let gate = &self.targets.gate;
        let (try_url, confirm_url, cancel_url) =
            (format!("{gate}{TRY_PATH}"), format!("{gate}{CONFIRM_PATH}"), format!("{gate}{CANCEL_PATH}"));
        let mut all_tried = true;
        let last = plan.tries.len().saturating_sub(1);
        for (i, (dawdle, req)) in plan.tries.iter().enumerate() {
            tokio::time::sleep(*dawdle).await;
            let label = format!("try {:02}", i + 1);
            let call = tcc.call_branch_json(req, &try_url, &confirm_url, &cancel_url);
            if i == last && plan.abort_during_last_try {
                let abort = async {
                    tokio::time::sleep(abort_after).await;
                    tcc.abort("the client gave up").await
                };
                let (tried, aborted) = tokio::join!(call, abort);
                calls.push((label, DtmAnswer::of(tried.map(|_| ()))));
                calls.push(("abort".to_string(), DtmAnswer::of(aborted)));
                return record(calls);
            }
            let tried = DtmAnswer::of(call.await.map(|_| ()));
            all_tried = tried == DtmAnswer::Succeed;
            calls.push((label, tried));
            if !all_tried {
                break;
            }
        }
        if all_tried && !plan.abort {
            calls.push(("submit".to_string(), DtmAnswer::of(tcc.submit().await)));
        } else {
            calls.push((
                "abort".to_string(),
                DtmAnswer::of(tcc.abort("a try failed, or the client changed its mind").await),
            ));
        }
        record(calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_seeded_and_cover_every_middle_step() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..200).map(|_| SagaPlan::draw(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        let plans = draw(7);
        assert!(plans.iter().any(|p| matches!(p.middle, Middle::Gate(g) if g.fail)));
        assert!(plans.iter().any(|p| matches!(p.middle, Middle::Gate(g) if !g.fail)));
        assert!(plans.iter().any(|p| matches!(p.middle, Middle::Stock { .. }) && p.must_fail()));
        assert!(plans.iter().any(|p| matches!(p.middle, Middle::Stock { .. }) && !p.must_fail()));
    }

    #[test]
    fn a_refused_resubmit_is_not_an_outcome() {
        let answer = |m: &str| DtmAnswer::of(Err(ClientError::Failure(m.into())));
        assert_eq!(answer("current status 'succeed', cannot submit"), DtmAnswer::AlreadyIn("succeed".into()));
        assert_eq!(answer("the gate refuses this saga"), DtmAnswer::Failed);
        assert_eq!(DtmAnswer::of(Ok(())), DtmAnswer::Succeed);
    }
}
