//! The invariant checker: after the faults stop and the system is quiet,
//! reads the coordinator's store, the order and stock tables and the
//! barrier table straight from MariaDB and checks every promise of the
//! saga against them and against the HTTP answers the clients got.
//!
//! A saga's business effects are read from two independent places: the
//! business rows (`order` rows carry the saga's gid; the stock only has a
//! total) and the barrier rows, which the branches write in the same local
//! transaction as their business SQL. For the stock branch of saga `g`:
//!
//! * `(g, b, action)` with reason `action` ⇒ the deduction committed;
//! * that, plus a `(g, b, compensate)` row ⇒ the deduction was undone;
//! * `(g, b, action)` with reason `compensate` ⇒ a null compensation: the
//!   deduction never happened (and now never can).
//!
//! The unique key `(gid, branch_id, op, barrier_id)` makes each of those
//! rows exist at most once; the checks below verify the business rows
//! agree with them, which is what "each business effect happened at most
//! once" means observably.
//!
//! **The branch-level invariant.** Every step of every saga — the two of a
//! quick order, the three of a [fencing](super::fencing) saga — is
//! classified from its barrier rows ([`classify`]) as applied,
//! compensated, skipped (a null compensation) or not reached. A saga that
//! succeeded must have every action applied once and no compensation; a
//! failed one must have no action left applied: whatever took effect was
//! compensated. Statuses alone cannot show a saga that ended `failed`
//! while a step it never compensated still holds stock or an order; the
//! effects can.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use prost::Message;
use sqlx::MySqlPool;
use tokio::time::Instant;

use super::ChaosError;
use super::fencing::{self, DtmAnswer, GOODS_A, GOODS_B, Middle, SagaRecord, TccRecord};
use super::gate::{ACTION_PATH as GATE_ACTION_PATH, GATE_DB, GateReq};
use super::topology::{BARRIER_DB, COORDINATOR_DB, ORDER_DB, STOCK_DB};
use super::traffic::{Answer, Record};

/// A promise, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// Every saga in the store reached succeed or failed.
    Final,
    /// Every gid answered 200/409/202 is in the store.
    NotLost,
    /// 200 ⇒ succeed, 409 ⇒ failed.
    HttpAgrees,
    /// The saga stored under a gid is the order the client asked for.
    RequestMatches,
    /// succeed ⇒ every step's business row is live; failed ⇒ none is.
    OutcomeEffects,
    /// succeed ⇒ every action applied once, no compensation; failed ⇒
    /// every action that took effect compensated (from the barrier rows).
    BranchEffects,
    /// At most one order row per gid, and the business rows agree with the barrier rows.
    AtMostOnce,
    /// initial − now = Σ live orders, per goods (and = Σ net deductions).
    StockConserved,
    /// No stock below zero.
    StockNonNegative,
    /// No order or barrier row of a gid the coordinator never stored.
    NoOrphanEffects,
}

impl Rule {
    /// Every rule, in report order.
    pub const ALL: [Rule; 10] = [
        Rule::Final,
        Rule::NotLost,
        Rule::HttpAgrees,
        Rule::RequestMatches,
        Rule::OutcomeEffects,
        Rule::BranchEffects,
        Rule::AtMostOnce,
        Rule::StockConserved,
        Rule::StockNonNegative,
        Rule::NoOrphanEffects,
    ];

    /// The promise in words.
    pub fn describe(self) -> &'static str {
        match self {
            Rule::Final => "every stored saga is final (succeed/failed), none stuck",
            Rule::NotLost => "every gid answered 200/409/202 is in the coordinator's store",
            Rule::HttpAgrees => {
                "answers agree with final states (HTTP 200 / dtm SUCCESS ⇒ succeed, 409 / FAILURE ⇒ failed)"
            }
            Rule::RequestMatches => "the stored saga is the order the client sent",
            Rule::OutcomeEffects => {
                "business rows: succeed ⇒ its order (and gate row) live; failed ⇒ none live"
            }
            Rule::BranchEffects => {
                "per step: succeed ⇒ every action applied once, no compensation; \
                 failed ⇒ every action that took effect compensated"
            }
            Rule::AtMostOnce => {
                "each (gid, branch, op) effect at most once; business rows agree with barrier rows"
            }
            Rule::StockConserved => {
                "per goods: initial − now = Σ net deductions (= Σ num of live orders, for ordered goods)"
            }
            Rule::StockNonNegative => "stock never negative",
            Rule::NoOrphanEffects => "no order/barrier rows for a gid the coordinator never stored",
        }
    }
}

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which promise.
    pub rule: Rule,
    /// The saga concerned, when there is one.
    pub gid: Option<String>,
    /// What was found.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.gid {
            Some(gid) => write!(f, "[{:?}] gid {gid}: {}", self.rule, self.detail),
            None => write!(f, "[{:?}] {}", self.rule, self.detail),
        }
    }
}

/// What the checker found.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Sagas in the store by status.
    pub sagas_by_status: BTreeMap<String, usize>,
    /// How many items each rule was checked on.
    pub checked: BTreeMap<Rule, usize>,
    /// Every violation.
    pub violations: Vec<Violation>,
    /// Answers that were not an outcome (202, 5xx) but carried a gid, by
    /// how they resolved: `succeed`, `failed`, `never stored`.
    pub unknown_resolved: BTreeMap<String, usize>,
    /// Up to three gids of each `unknown_resolved` entry, to look up.
    pub unknown_examples: BTreeMap<String, Vec<String>>,
    /// Stored sagas no client saw a gid for (the answer was lost).
    pub untraced_sagas: usize,
    /// Stock per goods: (initial, now, Σ live orders).
    pub stock: BTreeMap<i64, (i32, i32, i64)>,
}

impl Checked {
    fn violate(&mut self, rule: Rule, gid: Option<&str>, detail: String) {
        self.violations.push(Violation { rule, gid: gid.map(str::to_string), detail });
    }

    fn count(&mut self, rule: Rule) {
        *self.checked.entry(rule).or_default() += 1;
    }

    fn note_unknown(&mut self, key: String, gid: &str) {
        *self.unknown_resolved.entry(key.clone()).or_default() += 1;
        let examples = self.unknown_examples.entry(key).or_default();
        if examples.len() < 3 {
            examples.push(gid.to_string());
        }
    }
}

/// How the wait for quiescence ended.
#[derive(Debug, Clone, Copy)]
pub struct Quiescence {
    /// How long it took (or the timeout).
    pub took: Duration,
    /// Sagas still not final at the end (0: quiet).
    pub pending: i64,
}

/// Waits until no saga in the store is unfinished, twice in a row one
/// second apart (so a submit still in flight cannot slip in between).
/// `since` is when the clients were told to stop: the time to quiescence
/// covers the requests still in flight, the healing and the last retries.
pub async fn wait_quiescent(
    server_url: &str,
    since: Instant,
    timeout: Duration,
) -> Result<Quiescence, ChaosError> {
    let started = since;
    let deadline = started + timeout;
    let pool = connect(server_url, deadline).await?;
    let sql = format!(
        "SELECT COUNT(*) FROM `{COORDINATOR_DB}`.trans_global WHERE status NOT IN ('succeed', 'failed')"
    );
    let mut quiet_since: Option<Instant> = None;
    loop {
        let pending: i64 = match sqlx::query_scalar(&sql).fetch_one(&pool).await {
            Ok(n) => n,
            Err(err) if Instant::now() < deadline => {
                tracing::warn!(%err, "quiescence query failed; retrying");
                -1
            }
            Err(err) => return Err(err.into()),
        };
        let now = Instant::now();
        if pending == 0 {
            match quiet_since {
                Some(since) if now - since >= Duration::from_secs(1) => {
                    pool.close().await;
                    return Ok(Quiescence { took: since - started, pending: 0 });
                }
                Some(_) => {}
                None => quiet_since = Some(now),
            }
        } else {
            quiet_since = None;
        }
        if now >= deadline {
            pool.close().await;
            return Ok(Quiescence { took: now - started, pending: pending.max(0) });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Connects, retrying until `deadline` (MariaDB may just have restarted).
async fn connect(server_url: &str, deadline: Instant) -> Result<MySqlPool, ChaosError> {
    loop {
        match MySqlPool::connect(server_url).await {
            Ok(pool) => return Ok(pool),
            Err(err) if Instant::now() < deadline => {
                tracing::warn!(%err, "cannot connect to MariaDB yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Everything the checker reads.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// `trans_global`: gid → status.
    pub sagas: BTreeMap<String, String>,
    /// `trans_branch_op` rows.
    pub branches: Vec<BranchRow>,
    /// `dtm_barrier.barrier` rows.
    pub barriers: Vec<BarrierRow>,
    /// `order` rows.
    pub orders: Vec<OrderRow>,
    /// `stock`: goods → units.
    pub stock: BTreeMap<i64, i32>,
    /// `chaos_gate.gate`: gid → state (0 held, −1 compensated); empty
    /// unless the fencing workload ran.
    pub gates: BTreeMap<String, i8>,
    /// Gids of `trans_global` whose type is TCC.
    pub tcc: BTreeSet<String>,
    /// `chaos_gate.hold`: (gid, branch) → state (0 reserved, 1 confirmed, −1 cancelled).
    pub holds: BTreeMap<(String, String), i8>,
}

/// A `trans_branch_op` row.
#[derive(Debug, Clone)]
pub struct BranchRow {
    /// The saga.
    pub gid: String,
    /// `01`, `02`.
    pub branch_id: String,
    /// `action`, `compensate`.
    pub op: String,
    /// `etcd://…/order.rpc/pb.order/create`.
    pub url: String,
    /// The gRPC request, protobuf-encoded.
    pub bin_data: Option<Vec<u8>>,
}

/// A barrier row.
#[derive(Debug, Clone)]
pub struct BarrierRow {
    /// The saga.
    pub gid: Option<String>,
    /// The branch.
    pub branch_id: Option<String>,
    /// The op the row stands for.
    pub op: Option<String>,
    /// n-th guarded transaction of one request (always `01` here).
    pub barrier_id: Option<String>,
    /// The op of the call that inserted it.
    pub reason: Option<String>,
}

/// An order row.
#[derive(Debug, Clone)]
pub struct OrderRow {
    /// Primary key.
    pub id: i64,
    /// The saga that created it.
    pub gid: String,
    /// Who.
    pub user_id: i64,
    /// What.
    pub goods_id: i64,
    /// How many.
    pub num: i32,
    /// 0 live, −1 compensated.
    pub row_state: i8,
}

impl Snapshot {
    /// Reads every table; `gates` also the fencing workload's gate table.
    pub async fn read(server_url: &str, gates: bool) -> Result<Snapshot, ChaosError> {
        let pool = connect(server_url, Instant::now() + Duration::from_secs(30)).await?;
        // `CAST(gid AS CHAR)`: gid columns have a binary collation (exact
        // gids), which sqlx reports as VARBINARY and will not decode as a String.
        let sagas: Vec<(String, String, String)> = sqlx::query_as(&format!(
            "SELECT CAST(gid AS CHAR) AS gid, status, trans_type FROM `{COORDINATOR_DB}`.trans_global"
        ))
        .fetch_all(&pool)
        .await?;
        let branches: Vec<Branch> = sqlx::query_as(&format!(
            "SELECT CAST(gid AS CHAR) AS gid, branch_id, op, url, bin_data FROM `{COORDINATOR_DB}`.trans_branch_op"
        ))
        .fetch_all(&pool)
        .await?;
        let barriers: Vec<Barrier> = sqlx::query_as(&format!(
            "SELECT CAST(gid AS CHAR) AS gid, branch_id, op, barrier_id, reason FROM `{BARRIER_DB}`.barrier"
        ))
        .fetch_all(&pool)
        .await?;
        let orders: Vec<Order> = sqlx::query_as(&format!(
            "SELECT id, CAST(gid AS CHAR) AS gid, user_id, goods_id, num, row_state FROM `{ORDER_DB}`.`order` ORDER BY id"
        ))
        .fetch_all(&pool)
        .await?;
        let stock: Vec<(i64, i32)> =
            sqlx::query_as(&format!("SELECT goods_id, num FROM `{STOCK_DB}`.stock")).fetch_all(&pool).await?;
        let (gate_rows, hold_rows): (Vec<(String, i8)>, Vec<Hold>) = if gates {
            (
                sqlx::query_as(&format!("SELECT gid, state FROM `{GATE_DB}`.gate")).fetch_all(&pool).await?,
                sqlx::query_as(&format!("SELECT gid, branch_id, state FROM `{GATE_DB}`.hold"))
                    .fetch_all(&pool)
                    .await?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        pool.close().await;
        Ok(Snapshot {
            tcc: sagas.iter().filter(|(_, _, t)| t == "tcc").map(|(gid, _, _)| gid.clone()).collect(),
            sagas: sagas.into_iter().map(|(gid, status, _)| (gid, status)).collect(),
            holds: hold_rows.into_iter().map(|(gid, branch, state)| ((gid, branch), state)).collect(),
            branches: branches
                .into_iter()
                .map(|(gid, branch_id, op, url, bin_data)| BranchRow { gid, branch_id, op, url, bin_data })
                .collect(),
            barriers: barriers
                .into_iter()
                .map(|(gid, branch_id, op, barrier_id, reason)| BarrierRow {
                    gid,
                    branch_id,
                    op,
                    barrier_id,
                    reason,
                })
                .collect(),
            orders: orders
                .into_iter()
                .map(|(id, gid, user_id, goods_id, num, row_state)| OrderRow {
                    id,
                    gid,
                    user_id,
                    goods_id,
                    num,
                    row_state,
                })
                .collect(),
            stock: stock.into_iter().collect(),
            gates: gate_rows.into_iter().collect(),
        })
    }
}

/// A `chaos_gate.hold` row as read: gid, branch, state.
type Hold = (String, String, i8);
/// A `trans_branch_op` row as read.
type Branch = (String, String, String, String, Option<Vec<u8>>);
/// An `order` row as read.
type Order = (i64, String, i64, i64, i32, i8);
/// A barrier row as read: every column is nullable.
type Barrier = (Option<String>, Option<String>, Option<String>, Option<String>, Option<String>);

/// What one step of a saga asks, decoded from its stored action row.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// order-srv `create`.
    Order(proto::order::CreateReq),
    /// stock-srv `deduct`.
    Stock(proto::stock::DeductReq),
    /// The fencing workload's gate.
    Gate(GateReq),
    /// Anything else: its URL.
    Unknown(String),
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepKind::Order(c) => write!(f, "order create goods {} × {}", c.goods_id, c.num),
            StepKind::Stock(d) => write!(f, "stock deduct goods {} × {}", d.goods_id, d.num),
            StepKind::Gate(g) => write!(f, "gate{}", if g.fail { " (answers FAILURE)" } else { "" }),
            StepKind::Unknown(url) => write!(f, "unknown step {url}"),
        }
    }
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// `01`, `02`, `03`.
    pub branch_id: String,
    /// What it does.
    pub kind: StepKind,
}

/// What the barrier rows say one step of one saga did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepEffect {
    /// No row: the action never committed and no compensation ran.
    NotReached,
    /// The action committed its business SQL, and nothing undid it.
    Applied,
    /// The action committed, then its compensation did.
    Compensated,
    /// The compensation came first (or the action had failed): it claimed
    /// the action's row, so nothing happened and nothing can happen.
    Skipped,
    /// Rows the barrier never writes (a compensation row without the
    /// action's row, an unknown reason): described.
    Anomalous(String),
}

impl StepEffect {
    /// Whether the step's action effect is in force now.
    pub fn in_force(&self) -> bool {
        matches!(self, StepEffect::Applied)
    }

    fn label(&self) -> String {
        match self {
            StepEffect::NotReached => "not reached".into(),
            StepEffect::Applied => "applied".into(),
            StepEffect::Compensated => "compensated".into(),
            StepEffect::Skipped => "skipped (null compensation)".into(),
            StepEffect::Anomalous(what) => format!("ANOMALOUS ({what})"),
        }
    }
}

/// Classifies branch `branch` of a saga from the saga's barrier rows.
///
/// The forward op's row is `(branch, action)`: with reason `action` it was
/// inserted by the action, in the transaction of its business SQL; with
/// reason `compensate` it was claimed by a compensation that found no
/// committed action (null compensation, which also blocks a late action).
/// `(branch, compensate)` is the compensation's own row, in the
/// transaction of its business SQL.
pub fn classify(rows: &[&BarrierRow], branch: &str) -> StepEffect {
    let find = |op: &str| {
        rows.iter().find(|r| r.branch_id.as_deref() == Some(branch) && r.op.as_deref() == Some(op))
    };
    let action = find("action").map(|r| r.reason.as_deref().unwrap_or_default());
    let compensated = find("compensate").is_some();
    match (action, compensated) {
        (None, false) => StepEffect::NotReached,
        (None, true) => StepEffect::Anomalous("a compensation row without the action's row".into()),
        (Some("action"), false) => StepEffect::Applied,
        (Some("action"), true) => StepEffect::Compensated,
        (Some("compensate"), true) => StepEffect::Skipped,
        (Some("compensate"), false) => {
            StepEffect::Anomalous("the action's row claimed by a compensation that left no row".into())
        }
        (Some(other), _) => StepEffect::Anomalous(format!("action row with reason {other:?}")),
    }
}

/// The saga's steps from its `trans_branch_op` action rows, in branch order.
fn decode_steps<'a>(branches: impl Iterator<Item = &'a BranchRow>) -> Vec<Step> {
    let mut steps: Vec<Step> = branches
        .filter(|b| b.op == "action")
        .map(|b| {
            let data = b.bin_data.as_deref().unwrap_or_default();
            let unknown = || StepKind::Unknown(b.url.clone());
            let kind = if b.url.contains("/pb.order/") {
                proto::order::CreateReq::decode(data).map_or_else(|_| unknown(), StepKind::Order)
            } else if b.url.contains("/pb.stock/") {
                proto::stock::DeductReq::decode(data).map_or_else(|_| unknown(), StepKind::Stock)
            } else if b.url.ends_with(GATE_ACTION_PATH) {
                serde_json::from_slice(data).map_or_else(|_| unknown(), StepKind::Gate)
            } else {
                unknown()
            };
            Step { branch_id: b.branch_id.clone(), kind }
        })
        .collect();
    steps.sort_by(|a, b| a.branch_id.cmp(&b.branch_id));
    steps
}

/// Which workload a saga belongs to, judged by its steps; `Err` says why
/// it is neither.
fn shape_of(steps: &[Step]) -> Result<(), String> {
    match steps.iter().map(|s| &s.kind).collect::<Vec<_>>()[..] {
        // The quick order: create, then deduct the same goods and units.
        [StepKind::Order(create), StepKind::Stock(deduct)] => {
            if create.goods_id == deduct.goods_id && create.num == deduct.num {
                Ok(())
            } else {
                Err(format!("steps disagree: {create:?} vs {deduct:?}"))
            }
        }
        // The fencing saga: deduct A, the gate or deduct B, order A.
        [StepKind::Stock(first), middle, StepKind::Order(create)] => {
            let middle_ok = match middle {
                StepKind::Gate(_) => true,
                StepKind::Stock(b) => b.goods_id == GOODS_B,
                _ => false,
            };
            if first.goods_id == GOODS_A && create.goods_id == GOODS_A && first.num == create.num && middle_ok
            {
                Ok(())
            } else {
                Err(format!("not the fencing workload's steps: {steps:?}"))
            }
        }
        _ => Err(format!("not a saga of the chaos workloads: {steps:?}")),
    }
}

/// Checks every rule; `initial` is the stock at the start, `records` the
/// quick orders' answers and `sagas` the fencing clients' submits.
///
/// The groups run in the order the report lists their violations: per
/// saga, effects without a saga, stock, the clients' view.
pub fn check(
    snapshot: &Snapshot,
    records: &[Record],
    sagas: &[SagaRecord],
    initial: &[(i64, i32)],
    tccs: &[TccRecord],
) -> Checked {
    let mut out = Checked::default();
    let index = Index::build(snapshot, sagas);
    let mut tally = StockSteps::default();
    for (gid, status) in &snapshot.sagas {
        check_saga(&mut out, &index, gid, status, &mut tally);
    }
    check_orphans(&mut out, &index);
    check_stock(&mut out, snapshot, initial, &tally);

    // The clients' view: every answer against the store, and which stored
    // sagas no client ever saw a gid for.
    let mut traced = BTreeSet::new();
    check_http_answers(&mut out, &index, records, &mut traced);
    check_fencing_answers(&mut out, &index, sagas, &mut traced);
    check_tcc_answers(&mut out, snapshot, tccs, &mut traced);
    out.untraced_sagas = snapshot.sagas.keys().filter(|gid| !traced.contains(gid.as_str())).count();
    out
}

/// The snapshot's rows grouped by gid, built once: the tables are flat,
/// and every check below asks about one saga at a time.
struct Index<'a> {
    /// The rows themselves.
    snapshot: &'a Snapshot,
    /// Each saga's steps, decoded from its `trans_branch_op` action rows
    /// (a gid is present when it has any branch row, even with no action).
    steps: HashMap<&'a str, Vec<Step>>,
    /// Each gid's barrier rows.
    barriers: HashMap<&'a str, Vec<&'a BarrierRow>>,
    /// Each gid's order rows.
    orders: HashMap<&'a str, Vec<&'a OrderRow>>,
    /// What the fencing clients planned, by gid.
    planned: HashMap<&'a str, &'a SagaRecord>,
}

impl<'a> Index<'a> {
    fn build(snapshot: &'a Snapshot, sagas: &'a [SagaRecord]) -> Index<'a> {
        let mut branch_rows: HashMap<&str, Vec<&BranchRow>> = HashMap::new();
        for b in &snapshot.branches {
            branch_rows.entry(b.gid.as_str()).or_default().push(b);
        }
        let steps =
            branch_rows.iter().map(|(gid, rows)| (*gid, decode_steps(rows.iter().copied()))).collect();
        let mut barriers: HashMap<&str, Vec<&BarrierRow>> = HashMap::new();
        for row in &snapshot.barriers {
            barriers.entry(row.gid.as_deref().unwrap_or_default()).or_default().push(row);
        }
        let mut orders: HashMap<&str, Vec<&OrderRow>> = HashMap::new();
        for row in &snapshot.orders {
            orders.entry(row.gid.as_str()).or_default().push(row);
        }
        let planned = sagas.iter().map(|r| (r.gid.as_str(), r)).collect();
        Index { snapshot, steps, barriers, orders, planned }
    }

    /// The saga's steps; none when it has no action row.
    fn steps(&self, gid: &str) -> &[Step] {
        self.steps.get(gid).map_or(&[], Vec::as_slice)
    }

    /// The gid's barrier rows; none when it has none.
    fn barriers(&self, gid: &str) -> &[&'a BarrierRow] {
        self.barriers.get(gid).map_or(&[], Vec::as_slice)
    }

    /// The gid's order rows; none when it has none.
    fn orders(&self, gid: &str) -> &[&'a OrderRow] {
        self.orders.get(gid).map_or(&[], Vec::as_slice)
    }
}

/// What the sagas' stock steps add up to. The stock table holds only a
/// total per goods, so conservation can only be checked against the sum
/// of what the barrier says each saga kept.
#[derive(Debug, Default)]
struct StockSteps {
    /// Per goods, the units of the deductions in force (applied, not compensated).
    net_deducted: BTreeMap<i64, i64>,
    /// The goods some order step names.
    ordered_goods: BTreeSet<i64>,
}

/// One saga's promises: it is final; a TCC is then judged by
/// [`check_tcc`]; any other saga must have the steps of a chaos workload,
/// and each step's effect in the barrier must agree with the business
/// rows and with the saga's outcome.
fn check_saga(out: &mut Checked, index: &Index<'_>, gid: &str, status: &str, tally: &mut StockSteps) {
    *out.sagas_by_status.entry(status.to_string()).or_default() += 1;
    out.count(Rule::Final);
    if status != "succeed" && status != "failed" {
        out.violate(Rule::Final, Some(gid), format!("still {status:?} after quiescence"));
    }
    if index.snapshot.tcc.contains(gid) {
        check_tcc(out, index.snapshot, gid, status, index.barriers(gid));
        return;
    }
    let steps = index.steps(gid);
    out.count(Rule::RequestMatches);
    if let Err(why) = shape_of(steps) {
        // Steps of unknown shape: nothing below would know what to expect.
        out.violate(Rule::RequestMatches, Some(gid), why);
        return;
    }
    let saga = SagaEffects::read(index, gid, status, steps);
    check_barrier_rows(out, &saga);
    check_business_rows(out, &saga, tally);
    check_branch_effects(out, &saga, index.planned.get(gid).copied());
    check_outcome(out, &saga);
}

/// One saga as the per-step checks see it: its steps, what the barrier
/// rows say each did, and the business rows it left.
struct SagaEffects<'s> {
    gid: &'s str,
    status: &'s str,
    steps: &'s [Step],
    /// What the barrier rows say each step did, in step order.
    effects: Vec<StepEffect>,
    /// Its barrier rows.
    rows: &'s [&'s BarrierRow],
    /// Its order rows.
    orders: &'s [&'s OrderRow],
    /// Its gate row's state, when it has one.
    gate: Option<i8>,
    /// How many of its order rows are live.
    live: usize,
    /// How many of its order rows are cancelled.
    cancelled: usize,
}

impl<'s> SagaEffects<'s> {
    fn read(index: &'s Index<'_>, gid: &'s str, status: &'s str, steps: &'s [Step]) -> SagaEffects<'s> {
        let rows = index.barriers(gid);
        let orders = index.orders(gid);
        SagaEffects {
            gid,
            status,
            steps,
            effects: steps.iter().map(|s| classify(rows, &s.branch_id)).collect(),
            rows,
            orders,
            gate: index.snapshot.gates.get(gid).copied(),
            live: orders.iter().filter(|o| o.row_state == 0).count(),
            cancelled: orders.iter().filter(|o| o.row_state == -1).count(),
        }
    }

    /// Each step with its effect, and the raw barrier rows: every
    /// violation about a step carries them, so a report line can be judged
    /// without going back to the database.
    fn story(&self) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .zip(&self.effects)
            .map(|(s, e)| format!("{} {}: {}", s.branch_id, s.kind, e.label()))
            .collect();
        format!("steps [{}]; barrier rows [{}]", steps.join(" | "), barrier_rows_text(self.rows))
    }
}

/// Barrier rows as `(branch op reason …)`, NULLs spelled out: how a
/// violation shows what the barrier recorded.
fn barrier_rows_text(rows: &[&BarrierRow]) -> String {
    let col = |c: &Option<String>| c.clone().unwrap_or_else(|| "NULL".into());
    let rows: Vec<String> = rows
        .iter()
        .map(|r| format!("({} {} reason {})", col(&r.branch_id), col(&r.op), col(&r.reason)))
        .collect();
    rows.join(", ")
}

/// The saga's barrier rows are ones the barrier can write: one guarded
/// transaction per call (`barrier_id` 01), and no combination that
/// [`classify`] calls anomalous. Anything else means an effect was
/// recorded twice or by something that is not the barrier.
fn check_barrier_rows(out: &mut Checked, saga: &SagaEffects<'_>) {
    let gid = Some(saga.gid);
    out.count(Rule::AtMostOnce);
    for row in saga.rows {
        if row.barrier_id.as_deref() != Some("01") {
            out.violate(Rule::AtMostOnce, gid, format!("unexpected barrier row {row:?}"));
        }
    }
    for (step, effect) in saga.steps.iter().zip(&saga.effects) {
        if let StepEffect::Anomalous(what) = effect {
            out.violate(Rule::AtMostOnce, gid, format!("step {}: {what}; {}", step.branch_id, saga.story()));
        }
    }
}

/// The business rows agree with the barrier rows, step by step: the
/// barrier commits in the same local transaction as the business SQL, so
/// a disagreement is an effect that happened without its barrier row (or
/// twice). The order row must also be the one the saga asked for. Stock
/// has no row per saga: its deductions in force go into `tally` for
/// [`check_stock`].
fn check_business_rows(out: &mut Checked, saga: &SagaEffects<'_>, tally: &mut StockSteps) {
    let (gid, own, live, cancelled, gate) =
        (Some(saga.gid), saga.orders, saga.live, saga.cancelled, saga.gate);
    if own.len() > 1 {
        let ids: Vec<i64> = own.iter().map(|o| o.id).collect();
        out.violate(
            Rule::AtMostOnce,
            gid,
            format!("{} order rows (ids {ids:?}): created more than once", own.len()),
        );
    }
    for (step, effect) in saga.steps.iter().zip(&saga.effects) {
        match &step.kind {
            StepKind::Order(create) => {
                tally.ordered_goods.insert(create.goods_id);
                let agrees = match effect {
                    StepEffect::Applied => live == 1 && cancelled == 0,
                    StepEffect::Compensated => live == 0 && cancelled == 1,
                    StepEffect::NotReached | StepEffect::Skipped => own.is_empty(),
                    StepEffect::Anomalous(_) => true,
                };
                if !agrees {
                    out.violate(
                        Rule::AtMostOnce,
                        gid,
                        format!(
                            "order rows (live {live}, cancelled {cancelled}) disagree with the barrier: {}",
                            saga.story()
                        ),
                    );
                }
                for o in own {
                    if (o.user_id, o.goods_id, i64::from(o.num))
                        != (create.user_id, create.goods_id, create.num)
                    {
                        out.violate(
                            Rule::RequestMatches,
                            gid,
                            format!("order row {o:?} is not the saga's {create:?}"),
                        );
                    }
                }
            }
            StepKind::Gate(_) => {
                let agrees = match effect {
                    StepEffect::Applied => gate == Some(0),
                    StepEffect::Compensated => gate == Some(-1),
                    StepEffect::NotReached | StepEffect::Skipped => gate.is_none(),
                    StepEffect::Anomalous(_) => true,
                };
                if !agrees {
                    out.violate(
                        Rule::AtMostOnce,
                        gid,
                        format!("gate row {gate:?} disagrees with the barrier: {}", saga.story()),
                    );
                }
            }
            StepKind::Stock(deduct) => {
                if effect.in_force() {
                    *tally.net_deducted.entry(deduct.goods_id).or_default() += deduct.num;
                }
            }
            StepKind::Unknown(_) => {}
        }
    }
}

/// The branch-level invariant: a succeeded saga has every action applied
/// and none compensated; a failed one has no action left in force. A
/// fencing saga whose middle step can only answer FAILURE must not have
/// succeeded at all. Statuses alone cannot show a failed saga that kept
/// an effect; the barrier rows can.
fn check_branch_effects(out: &mut Checked, saga: &SagaEffects<'_>, planned: Option<&SagaRecord>) {
    let gid = Some(saga.gid);
    out.count(Rule::BranchEffects);
    match saga.status {
        "succeed" => {
            for (step, effect) in saga.steps.iter().zip(&saga.effects) {
                if *effect != StepEffect::Applied {
                    out.violate(
                        Rule::BranchEffects,
                        gid,
                        format!(
                            "succeed saga, yet step {} ({}) is {}; {}",
                            step.branch_id,
                            step.kind,
                            effect.label(),
                            saga.story()
                        ),
                    );
                }
            }
        }
        "failed" => {
            for (step, effect) in saga.steps.iter().zip(&saga.effects) {
                if effect.in_force() {
                    out.violate(
                        Rule::BranchEffects,
                        gid,
                        format!(
                            "failed saga, yet step {} ({}) applied and never compensated; {}",
                            step.branch_id,
                            step.kind,
                            saga.story()
                        ),
                    );
                }
            }
        }
        _ => {}
    }
    if let Some(record) = planned
        && record.plan.must_fail()
        && saga.status == "succeed"
    {
        out.violate(
            Rule::BranchEffects,
            gid,
            format!(
                "its middle step can only answer FAILURE ({:?}), yet it succeeded; {}",
                record.plan.middle,
                saga.story()
            ),
        );
    }
}

/// The outcome in business rows alone, the way a user would see it: a
/// succeeded saga left its order (and gate row) live, a failed one none.
fn check_outcome(out: &mut Checked, saga: &SagaEffects<'_>) {
    out.count(Rule::OutcomeEffects);
    let (status, live, gate) = (saga.status, saga.live, saga.gate);
    let has_gate = saga.steps.iter().any(|s| matches!(s.kind, StepKind::Gate(_)));
    let wrong = match status {
        "succeed" => live != 1 || (has_gate && gate != Some(0)),
        "failed" => live != 0 || gate == Some(0),
        _ => false,
    };
    if wrong {
        out.violate(
            Rule::OutcomeEffects,
            Some(saga.gid),
            format!("{status} saga left {live} live order(s) and gate row {gate:?}; {}", saga.story()),
        );
    }
}

/// Effects without a saga: an order, gate, hold or barrier row whose gid
/// the coordinator never stored was written by a branch call no saga
/// will ever compensate.
fn check_orphans(out: &mut Checked, index: &Index<'_>) {
    let snapshot = index.snapshot;
    out.count(Rule::NoOrphanEffects);
    let orphans: BTreeSet<&str> = index
        .orders
        .keys()
        .chain(index.barriers.keys())
        .copied()
        .chain(snapshot.gates.keys().map(String::as_str))
        .chain(snapshot.holds.keys().map(|(gid, _)| gid.as_str()))
        .filter(|gid| !snapshot.sagas.contains_key(*gid))
        .collect();
    for gid in orphans {
        out.violate(
            Rule::NoOrphanEffects,
            Some(gid),
            "order, gate or barrier rows, but no saga in the store".into(),
        );
    }
}

/// Stock is conserved and never negative, per goods: what left the stock
/// is what the barrier says was deducted and kept, and — for goods that
/// are ordered — what the live orders hold.
fn check_stock(out: &mut Checked, snapshot: &Snapshot, initial: &[(i64, i32)], tally: &StockSteps) {
    let mut live_by_goods: BTreeMap<i64, i64> = BTreeMap::new();
    for o in snapshot.orders.iter().filter(|o| o.row_state == 0) {
        *live_by_goods.entry(o.goods_id).or_default() += i64::from(o.num);
    }
    for &(goods, start) in initial {
        out.count(Rule::StockConserved);
        out.count(Rule::StockNonNegative);
        let now = snapshot.stock.get(&goods).copied().unwrap_or_default();
        let sold = i64::from(start) - i64::from(now);
        let live = live_by_goods.get(&goods).copied().unwrap_or_default();
        let deducted = tally.net_deducted.get(&goods).copied().unwrap_or_default();
        out.stock.insert(goods, (start, now, live));
        // Goods no order step names (the fencing workload's goods B) are
        // deducted without an order: only the barrier's count applies.
        let ordered = tally.ordered_goods.contains(&goods) || live != 0;
        if sold != deducted || (ordered && sold != live) {
            out.violate(
                Rule::StockConserved,
                None,
                format!("goods {goods}: {start} − {now} = {sold} sold, but live orders hold {live} and the barrier shows {deducted} deducted"),
            );
        }
        if now < 0 {
            out.violate(Rule::StockNonNegative, None, format!("goods {goods}: stock {now}"));
        }
    }
}

/// The quick-order clients' view: every gid answered 200/409/202 was
/// stored, 200 and 409 agree with the final state, and the stored saga is
/// the order the client sent. Answers without an outcome (202, 5xx) are
/// not wrong; how their sagas ended is counted for the report. The gids
/// seen go into `traced`.
fn check_http_answers<'r>(
    out: &mut Checked,
    index: &Index<'_>,
    records: &'r [Record],
    traced: &mut BTreeSet<&'r str>,
) {
    for record in records {
        let Answer::Http { status, gid: Some(gid) } = &record.answer else { continue };
        let gid_ref = Some(gid.as_str());
        if !traced.insert(gid.as_str()) {
            out.violate(Rule::NotLost, gid_ref, "the same gid was answered to two requests".into());
        }
        let stored = index.snapshot.sagas.get(gid);
        if matches!(status, 200 | 409 | 202) {
            out.count(Rule::NotLost);
            if stored.is_none() {
                out.violate(
                    Rule::NotLost,
                    gid_ref,
                    format!("answered {status}, but not in the coordinator's store"),
                );
            }
        }
        match (status, stored.map(String::as_str)) {
            (200, Some(s)) | (409, Some(s)) => {
                out.count(Rule::HttpAgrees);
                let want = if *status == 200 { "succeed" } else { "failed" };
                if s != want {
                    out.violate(Rule::HttpAgrees, gid_ref, format!("answered {status}, final state {s}"));
                }
            }
            (_, resolved) if *status != 200 && *status != 409 => {
                out.note_unknown(format!("{status} → {}", resolved.unwrap_or("never stored")), gid);
            }
            _ => {}
        }
        if let [Step { kind: StepKind::Order(create), .. }, ..] = index.steps(gid) {
            out.count(Rule::RequestMatches);
            if (create.user_id, create.goods_id, create.num) != (record.user, record.goods, record.num) {
                out.violate(
                    Rule::RequestMatches,
                    gid_ref,
                    format!(
                        "client sent user {} goods {} num {}, saga has {create:?}",
                        record.user, record.goods, record.num
                    ),
                );
            }
        }
    }
}

/// The fencing clients' view: every submit and resubmit answered with an
/// outcome was stored and agrees with the final state (a refusal as
/// "already succeed/failed" must name the final one), and the stored
/// steps are the ones the client planned. Each submit may have gone to
/// either coordinator; the messages say which.
fn check_fencing_answers<'r>(
    out: &mut Checked,
    index: &Index<'_>,
    sagas: &'r [SagaRecord],
    traced: &mut BTreeSet<&'r str>,
) {
    for saga in sagas {
        let gid = saga.gid.as_str();
        traced.insert(gid);
        let stored = index.snapshot.sagas.get(gid).map(String::as_str);
        for submit in &saga.submits {
            let label = if submit.resubmit { "resubmit" } else { "submit" };
            let answer = submit.answer.label();
            if matches!(submit.answer, DtmAnswer::Succeed | DtmAnswer::Failed | DtmAnswer::Ongoing) {
                out.count(Rule::NotLost);
                if stored.is_none() {
                    out.violate(
                        Rule::NotLost,
                        Some(gid),
                        format!("{label} answered {answer}, but not in the store"),
                    );
                }
            }
            match (&submit.answer, stored) {
                (DtmAnswer::Succeed | DtmAnswer::Failed, Some(s)) => {
                    out.count(Rule::HttpAgrees);
                    let want = if submit.answer == DtmAnswer::Succeed { "succeed" } else { "failed" };
                    if s != want {
                        out.violate(
                            Rule::HttpAgrees,
                            Some(gid),
                            format!(
                                "{label} to coordinator-{} answered {answer}, final state {s}",
                                submit.coordinator + 1
                            ),
                        );
                    }
                }
                (DtmAnswer::Succeed | DtmAnswer::Failed, None) => {}
                // "current status 'succeed', cannot submit": the status it
                // names must be the final one when it is a final one.
                (DtmAnswer::AlreadyIn(named), Some(s)) if named == "succeed" || named == "failed" => {
                    out.count(Rule::HttpAgrees);
                    if named != s {
                        out.violate(
                            Rule::HttpAgrees,
                            Some(gid),
                            format!(
                                "{label} to coordinator-{} was refused as already {named}, final state {s}",
                                submit.coordinator + 1
                            ),
                        );
                    }
                }
                (_, resolved) => {
                    out.note_unknown(format!("dtm {answer} → {}", resolved.unwrap_or("never stored")), gid);
                }
            }
        }
        // A gid with branch rows but no action row counts too: its steps
        // (none) are not the plan.
        if let Some(own_steps) = index.steps.get(gid) {
            out.count(Rule::RequestMatches);
            let want = fencing_steps(&saga.plan);
            let got: Vec<&StepKind> = own_steps.iter().map(|s| &s.kind).collect();
            if got != want.iter().collect::<Vec<_>>() {
                out.violate(
                    Rule::RequestMatches,
                    Some(gid),
                    format!("client sent {want:?}, saga has {got:?}"),
                );
            }
        }
    }
}

/// The TCC clients' view: a prepare answered SUCCESS was stored, and a
/// submit or abort that answered with an outcome agrees with the final
/// state.
fn check_tcc_answers<'r>(
    out: &mut Checked,
    snapshot: &Snapshot,
    tccs: &'r [TccRecord],
    traced: &mut BTreeSet<&'r str>,
) {
    for tcc in tccs {
        let gid = tcc.gid.as_str();
        traced.insert(gid);
        let stored = snapshot.sagas.get(gid).map(String::as_str);
        for (call, answer) in &tcc.calls {
            if call == "prepare" && *answer == DtmAnswer::Succeed {
                out.count(Rule::NotLost);
                if stored.is_none() {
                    out.violate(
                        Rule::NotLost,
                        Some(gid),
                        "prepare answered SUCCESS, but not in the store".into(),
                    );
                }
            }
            // submit SUCCESS ⇒ succeed, submit FAILURE ⇒ failed; an abort
            // answered SUCCESS (with wait_result: rolled back) ⇒ failed.
            let want = match (call.as_str(), answer) {
                ("submit", DtmAnswer::Succeed) => Some("succeed"),
                ("submit", DtmAnswer::Failed) | ("abort", DtmAnswer::Succeed) => Some("failed"),
                _ => None,
            };
            if let (Some(want), Some(s)) = (want, stored) {
                out.count(Rule::HttpAgrees);
                if s != want {
                    out.violate(
                        Rule::HttpAgrees,
                        Some(gid),
                        format!(
                            "TCC {call} to coordinator-{} answered {}, final state {s}",
                            tcc.coordinator + 1,
                            answer.label()
                        ),
                    );
                }
            }
        }
    }
}

/// What the barrier rows say one TCC branch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TccEffect {
    /// No row.
    NotReached,
    /// The try reserved, and nothing settled it.
    Reserved,
    /// The try reserved, then the confirm ran.
    Confirmed,
    /// The try reserved, then the cancel ran.
    Cancelled,
    /// The cancel came first (null cancel): nothing reserved, and a late try is refused.
    Skipped,
    /// Rows the protocol forbids (confirmed and cancelled, confirmed without a try).
    Anomalous(String),
}

impl TccEffect {
    fn label(&self) -> String {
        match self {
            TccEffect::NotReached => "not reached".into(),
            TccEffect::Reserved => "reserved, never confirmed or cancelled".into(),
            TccEffect::Confirmed => "confirmed".into(),
            TccEffect::Cancelled => "cancelled".into(),
            TccEffect::Skipped => "skipped (null cancel)".into(),
            TccEffect::Anomalous(what) => format!("ANOMALOUS ({what})"),
        }
    }
}

/// Classifies TCC branch `branch` from its barrier rows: `(b, try)` with
/// reason `try` is the try's reservation, with reason `cancel` a cancel
/// that found no try; `(b, confirm)` and `(b, cancel)` are the second
/// phase's own rows.
pub fn classify_tcc(rows: &[&BarrierRow], branch: &str) -> TccEffect {
    let find = |op: &str| {
        rows.iter().find(|r| r.branch_id.as_deref() == Some(branch) && r.op.as_deref() == Some(op))
    };
    let tried = find("try").map(|r| r.reason.as_deref().unwrap_or_default());
    let (confirmed, cancelled) = (find("confirm").is_some(), find("cancel").is_some());
    match (tried, confirmed, cancelled) {
        (None, false, false) => TccEffect::NotReached,
        (Some("try"), false, false) => TccEffect::Reserved,
        (Some("try"), true, false) => TccEffect::Confirmed,
        (Some("try"), false, true) => TccEffect::Cancelled,
        (Some("cancel"), false, true) => TccEffect::Skipped,
        (Some("try"), true, true) => TccEffect::Anomalous("confirmed and cancelled".into()),
        (None | Some("cancel"), true, _) => {
            TccEffect::Anomalous("confirmed, but its try never reserved".into())
        }
        (tried, confirmed, cancelled) => TccEffect::Anomalous(format!(
            "try row {tried:?}, confirm row {confirmed}, cancel row {cancelled}"
        )),
    }
}

/// The branch-level invariant of one TCC: succeed ⇒ every branch
/// confirmed; failed ⇒ every reservation cancelled, nothing confirmed; and
/// the `hold` rows agree with the barrier rows.
fn check_tcc(out: &mut Checked, snapshot: &Snapshot, gid: &str, status: &str, rows: &[&BarrierRow]) {
    let gid_ref = Some(gid);
    // Every branch anything knows of: registered, reached a branch, or reserved.
    let branches: BTreeSet<&str> = snapshot
        .branches
        .iter()
        .filter(|b| b.gid == gid)
        .map(|b| b.branch_id.as_str())
        .chain(rows.iter().filter_map(|r| r.branch_id.as_deref()))
        .chain(snapshot.holds.keys().filter(|(g, _)| g == gid).map(|(_, b)| b.as_str()))
        .collect();
    let effects: Vec<(&str, TccEffect)> = branches.iter().map(|b| (*b, classify_tcc(rows, b))).collect();
    let story = || {
        let branches: Vec<String> = effects.iter().map(|(b, e)| format!("{b}: {}", e.label())).collect();
        format!("TCC branches [{}]; barrier rows [{}]", branches.join(" | "), barrier_rows_text(rows))
    };
    out.count(Rule::BranchEffects);
    out.count(Rule::AtMostOnce);
    for (branch, effect) in &effects {
        let wrong = match (status, effect) {
            (_, TccEffect::Anomalous(_)) => true,
            ("succeed", e) => *e != TccEffect::Confirmed,
            ("failed", TccEffect::Reserved | TccEffect::Confirmed) => true,
            _ => false,
        };
        if wrong {
            out.violate(
                Rule::BranchEffects,
                gid_ref,
                format!("{status} TCC, yet branch {branch} is {}; {}", effect.label(), story()),
            );
        }
        let hold = snapshot.holds.get(&(gid.to_string(), (*branch).to_string())).copied();
        let agrees = match effect {
            TccEffect::Reserved => hold == Some(0),
            TccEffect::Confirmed => hold == Some(1),
            TccEffect::Cancelled => hold == Some(-1),
            TccEffect::NotReached | TccEffect::Skipped => hold.is_none(),
            TccEffect::Anomalous(_) => true,
        };
        if !agrees {
            out.violate(
                Rule::AtMostOnce,
                gid_ref,
                format!("hold row {hold:?} of branch {branch} disagrees with the barrier: {}", story()),
            );
        }
    }
}

/// The steps a fencing plan submits, as the checker decodes them.
fn fencing_steps(plan: &fencing::SagaPlan) -> Vec<StepKind> {
    let middle = match plan.middle {
        Middle::Gate(gate) => StepKind::Gate(gate),
        Middle::Stock { num } => StepKind::Stock(proto::stock::DeductReq { goods_id: GOODS_B, num }),
    };
    vec![
        StepKind::Stock(proto::stock::DeductReq { goods_id: GOODS_A, num: plan.num }),
        middle,
        StepKind::Order(proto::order::CreateReq { user_id: plan.user, goods_id: GOODS_A, num: plan.num }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER_URL: &str = "etcd://h/order.rpc/pb.order/create";
    const STOCK_URL: &str = "etcd://h/stock.rpc/pb.stock/deduct";

    fn saga(snapshot: &mut Snapshot, gid: &str, status: &str, goods: i64, num: i64) {
        snapshot.sagas.insert(gid.into(), status.into());
        let create = proto::order::CreateReq { user_id: 1, goods_id: goods, num };
        let deduct = proto::stock::DeductReq { goods_id: goods, num };
        for (branch, url, data) in
            [("01", ORDER_URL, create.encode_to_vec()), ("02", STOCK_URL, deduct.encode_to_vec())]
        {
            snapshot.branches.push(BranchRow {
                gid: gid.into(),
                branch_id: branch.into(),
                op: "action".into(),
                url: url.into(),
                bin_data: Some(data),
            });
        }
    }

    fn barrier(snapshot: &mut Snapshot, gid: &str, branch: &str, op: &str, reason: &str) {
        snapshot.barriers.push(BarrierRow {
            gid: Some(gid.into()),
            branch_id: Some(branch.into()),
            op: Some(op.into()),
            barrier_id: Some("01".into()),
            reason: Some(reason.into()),
        });
    }

    fn order(snapshot: &mut Snapshot, gid: &str, goods: i64, num: i32, row_state: i8) {
        let id = snapshot.orders.len() as i64 + 1;
        snapshot.orders.push(OrderRow { id, gid: gid.into(), user_id: 1, goods_id: goods, num, row_state });
    }

    /// g1 succeeded (2 units), g2 failed at the stock step (null compensation).
    fn healthy() -> Snapshot {
        let mut s = Snapshot::default();
        saga(&mut s, "g1", "succeed", 1, 2);
        barrier(&mut s, "g1", "01", "action", "action");
        barrier(&mut s, "g1", "02", "action", "action");
        order(&mut s, "g1", 1, 2, 0);
        saga(&mut s, "g2", "failed", 1, 900);
        barrier(&mut s, "g2", "01", "action", "action");
        barrier(&mut s, "g2", "01", "compensate", "compensate");
        barrier(&mut s, "g2", "02", "action", "compensate");
        barrier(&mut s, "g2", "02", "compensate", "compensate");
        order(&mut s, "g2", 1, 900, -1);
        s.stock.insert(1, 8);
        s
    }

    fn record(gid: &str, status: u16, num: i64) -> Record {
        Record {
            started: Duration::ZERO,
            finished: Duration::ZERO,
            user: 1,
            goods: 1,
            num,
            answer: Answer::Http { status, gid: Some(gid.into()) },
        }
    }

    fn rules(checked: &Checked) -> Vec<Rule> {
        checked.violations.iter().map(|v| v.rule).collect()
    }

    #[test]
    fn a_consistent_run_passes() {
        let checked =
            check(&healthy(), &[record("g1", 200, 2), record("g2", 409, 900)], &[], &[(1, 10)], &[]);
        assert!(checked.violations.is_empty(), "{:?}", checked.violations);
        assert_eq!(checked.sagas_by_status["succeed"], 1);
        assert_eq!(checked.sagas_by_status["failed"], 1);
    }

    #[test]
    fn a_double_deduction_breaks_conservation() {
        let mut s = healthy();
        s.stock.insert(1, 6);
        assert!(rules(&check(&s, &[], &[], &[(1, 10)], &[])).contains(&Rule::StockConserved));
    }

    #[test]
    fn a_second_order_row_is_a_double_effect() {
        let mut s = healthy();
        order(&mut s, "g1", 1, 2, 0);
        let found = rules(&check(&s, &[], &[], &[(1, 10)], &[]));
        assert!(found.contains(&Rule::AtMostOnce), "{found:?}");
        assert!(found.contains(&Rule::OutcomeEffects), "{found:?}");
    }

    #[test]
    fn stuck_lost_and_disagreeing_sagas_are_named() {
        let mut s = healthy();
        saga(&mut s, "g3", "submitted", 2, 1);
        let checked = check(&s, &[record("g1", 409, 2), record("g9", 200, 1)], &[], &[(1, 10)], &[]);
        let found: Vec<(Rule, Option<&str>)> =
            checked.violations.iter().map(|v| (v.rule, v.gid.as_deref())).collect();
        assert!(found.contains(&(Rule::Final, Some("g3"))), "{found:?}");
        assert!(found.contains(&(Rule::HttpAgrees, Some("g1"))), "{found:?}");
        assert!(found.contains(&(Rule::NotLost, Some("g9"))), "{found:?}");
    }

    #[test]
    fn a_failed_saga_that_kept_its_deduction_is_caught() {
        let mut s = healthy();
        // g2's deduction committed but was never compensated.
        s.barriers.retain(|b| !(b.gid.as_deref() == Some("g2") && b.branch_id.as_deref() == Some("02")));
        barrier(&mut s, "g2", "02", "action", "action");
        s.stock.insert(1, 8 - 900);
        let checked = check(&s, &[], &[], &[(1, 10)], &[]);
        let found = rules(&checked);
        // The order was cancelled, so the business rows of the order look
        // right; only the step-by-step view sees the deduction kept.
        assert!(found.contains(&Rule::BranchEffects), "{found:?}");
        assert!(
            checked
                .violations
                .iter()
                .any(|v| v.detail.contains("step 02 (stock deduct goods 1 × 900) applied")),
            "{:#?}",
            checked.violations
        );
        assert!(found.contains(&Rule::StockNonNegative), "{found:?}");
    }

    fn step_rows(rows: &[(&str, &str, &str)]) -> Vec<BarrierRow> {
        rows.iter()
            .map(|(branch, op, reason)| BarrierRow {
                gid: Some("g".into()),
                branch_id: Some((*branch).into()),
                op: Some((*op).into()),
                barrier_id: Some("01".into()),
                reason: Some((*reason).into()),
            })
            .collect()
    }

    #[test]
    fn steps_are_classified_from_their_barrier_rows() {
        let rows = step_rows(&[
            ("01", "action", "action"),
            ("01", "compensate", "compensate"),
            ("02", "action", "compensate"),
            ("02", "compensate", "compensate"),
            ("03", "action", "action"),
            ("04", "compensate", "compensate"),
            ("05", "action", "compensate"),
            ("06", "action", "try"),
        ]);
        let rows: Vec<&BarrierRow> = rows.iter().collect();
        assert_eq!(classify(&rows, "01"), StepEffect::Compensated);
        assert_eq!(classify(&rows, "02"), StepEffect::Skipped);
        assert_eq!(classify(&rows, "03"), StepEffect::Applied);
        assert_eq!(classify(&rows, "09"), StepEffect::NotReached);
        for anomalous in ["04", "05", "06"] {
            assert!(matches!(classify(&rows, anomalous), StepEffect::Anomalous(_)), "{anomalous}");
        }
        assert!(classify(&rows, "03").in_force());
        assert!(!classify(&rows, "01").in_force() && !classify(&rows, "02").in_force());
    }

    const FENCE_STOCK: &str = "etcd://h/stock.rpc/pb.stock/deduct";
    const FENCE_ORDER: &str = "etcd://h/order.rpc/pb.order/create";

    /// A fencing saga: deduct goods A, the gate (or deduct goods B), order goods A.
    fn fencing_saga(s: &mut Snapshot, gid: &str, status: &str, num: i64, middle: Middle) -> SagaRecord {
        s.sagas.insert(gid.into(), status.into());
        let plan = fencing::SagaPlan { user: 1, num, middle };
        let (middle_url, middle_data) = match middle {
            Middle::Gate(g) => {
                ("http://127.0.0.1:1/gate/action".to_string(), serde_json::to_vec(&g).unwrap())
            }
            Middle::Stock { num } => {
                (FENCE_STOCK.to_string(), proto::stock::DeductReq { goods_id: GOODS_B, num }.encode_to_vec())
            }
        };
        let first = proto::stock::DeductReq { goods_id: GOODS_A, num }.encode_to_vec();
        let create = proto::order::CreateReq { user_id: 1, goods_id: GOODS_A, num }.encode_to_vec();
        for (branch, url, data) in [
            ("01", FENCE_STOCK.to_string(), first),
            ("02", middle_url, middle_data),
            ("03", FENCE_ORDER.to_string(), create),
        ] {
            s.branches.push(BranchRow {
                gid: gid.into(),
                branch_id: branch.into(),
                op: "action".into(),
                url,
                bin_data: Some(data),
            });
        }
        let answer = if status == "succeed" { DtmAnswer::Succeed } else { DtmAnswer::Failed };
        let submit = |resubmit| fencing::Submit {
            at: Duration::ZERO,
            finished: Duration::ZERO,
            coordinator: usize::from(resubmit),
            resubmit,
            answer: answer.clone(),
        };
        SagaRecord { gid: gid.into(), plan, submits: vec![submit(false), submit(true)] }
    }

    const GATE_OK: Middle = Middle::Gate(GateReq { fail: false, delay_ms: 300 });
    const GATE_FAILS: Middle = Middle::Gate(GateReq { fail: true, delay_ms: 300 });
    const FENCE_INITIAL: [(i64, i32); 2] = [(GOODS_A, 100), (GOODS_B, 10)];

    /// f1 succeeded through the gate, f2 failed at the gate (01
    /// compensated, 02 null-compensated, 03 never reached), f3 succeeded
    /// through stock B.
    fn fencing_healthy() -> (Snapshot, Vec<SagaRecord>) {
        let mut s = Snapshot::default();
        let mut records = vec![fencing_saga(&mut s, "f1", "succeed", 2, GATE_OK)];
        for branch in ["01", "02", "03"] {
            barrier(&mut s, "f1", branch, "action", "action");
        }
        s.gates.insert("f1".into(), 0);
        order(&mut s, "f1", GOODS_A, 2, 0);
        records.push(fencing_saga(&mut s, "f2", "failed", 3, GATE_FAILS));
        barrier(&mut s, "f2", "01", "action", "action");
        barrier(&mut s, "f2", "01", "compensate", "compensate");
        barrier(&mut s, "f2", "02", "action", "compensate");
        barrier(&mut s, "f2", "02", "compensate", "compensate");
        records.push(fencing_saga(&mut s, "f3", "succeed", 1, Middle::Stock { num: 4 }));
        for branch in ["01", "02", "03"] {
            barrier(&mut s, "f3", branch, "action", "action");
        }
        order(&mut s, "f3", GOODS_A, 1, 0);
        s.stock.insert(GOODS_A, 97);
        s.stock.insert(GOODS_B, 6);
        (s, records)
    }

    #[test]
    fn consistent_fencing_sagas_pass() {
        let (s, records) = fencing_healthy();
        let checked = check(&s, &[], &records, &FENCE_INITIAL, &[]);
        assert!(checked.violations.is_empty(), "{:#?}", checked.violations);
        assert_eq!(checked.untraced_sagas, 0);
    }

    #[test]
    fn a_failed_saga_whose_last_step_was_applied_after_the_rollback_is_caught() {
        // The resubmit race: the first pass got FAILURE from the gate and
        // compensated 02 (null) and 01; the second pass then found 02's row
        // taken, took that for success and created the order of step 03.
        let (mut s, records) = fencing_healthy();
        barrier(&mut s, "f2", "03", "action", "action");
        order(&mut s, "f2", GOODS_A, 3, 0);
        let checked = check(&s, &[], &records, &FENCE_INITIAL, &[]);
        let branch: Vec<&Violation> =
            checked.violations.iter().filter(|v| v.rule == Rule::BranchEffects).collect();
        assert_eq!(branch.len(), 1, "{:#?}", checked.violations);
        assert_eq!(branch[0].gid.as_deref(), Some("f2"));
        let text = branch[0].to_string();
        assert!(text.contains("step 03 (order create goods 11 × 3) applied and never compensated"), "{text}");
        assert!(text.contains("02 gate (answers FAILURE): skipped (null compensation)"), "{text}");
        assert!(text.contains("(03 action reason action)"), "{text}");
        let found = rules(&checked);
        assert!(found.contains(&Rule::OutcomeEffects), "{found:?}");
        assert!(found.contains(&Rule::StockConserved), "{found:?}");
    }

    #[test]
    fn a_failed_saga_that_kept_its_first_deduction_is_caught_by_the_barrier_alone() {
        // Stock has no per-saga row: only the barrier shows which saga kept it.
        let (mut s, records) = fencing_healthy();
        s.barriers.retain(|b| !(b.gid.as_deref() == Some("f2") && b.branch_id.as_deref() == Some("01")));
        barrier(&mut s, "f2", "01", "action", "action");
        s.stock.insert(GOODS_A, 94);
        let found = rules(&check(&s, &[], &records, &FENCE_INITIAL, &[]));
        assert!(found.contains(&Rule::BranchEffects), "{found:?}");
        assert!(found.contains(&Rule::StockConserved), "{found:?}");
    }

    #[test]
    fn a_succeeded_saga_with_a_compensated_step_or_a_failing_gate_is_caught() {
        let (mut s, records) = fencing_healthy();
        barrier(&mut s, "f1", "02", "compensate", "compensate");
        s.gates.insert("f1".into(), -1);
        let checked = check(&s, &[], &records, &FENCE_INITIAL, &[]);
        assert!(
            checked
                .violations
                .iter()
                .any(|v| v.rule == Rule::BranchEffects && v.detail.contains("step 02 (gate) is compensated")),
            "{:#?}",
            checked.violations
        );
        // A gate that can only answer FAILURE, yet the saga succeeded.
        let (mut s, mut records) = fencing_healthy();
        records[0].plan.middle = GATE_FAILS;
        let found = rules(&check(&s, &[], &records, &FENCE_INITIAL, &[]));
        assert!(found.contains(&Rule::BranchEffects), "{found:?}");
        // And the request no longer matches what the client sent.
        assert!(found.contains(&Rule::RequestMatches), "{found:?}");
        s.gates.clear();
        assert!(rules(&check(&s, &[], &[], &FENCE_INITIAL, &[])).contains(&Rule::AtMostOnce));
    }

    #[test]
    fn a_dtm_answer_that_disagrees_with_the_final_state_is_caught() {
        let (s, mut records) = fencing_healthy();
        records[1].submits[1].answer = DtmAnswer::Succeed;
        let checked = check(&s, &[], &records, &FENCE_INITIAL, &[]);
        let found: Vec<(Rule, Option<&str>)> =
            checked.violations.iter().map(|v| (v.rule, v.gid.as_deref())).collect();
        assert_eq!(found, vec![(Rule::HttpAgrees, Some("f2"))]);
    }

    #[test]
    fn tcc_branches_are_classified_from_their_barrier_rows() {
        let rows = step_rows(&[
            ("01", "try", "try"),
            ("01", "confirm", "confirm"),
            ("02", "try", "try"),
            ("02", "cancel", "cancel"),
            ("03", "try", "cancel"),
            ("03", "cancel", "cancel"),
            ("04", "try", "try"),
            ("05", "confirm", "confirm"),
            ("06", "try", "try"),
            ("06", "confirm", "confirm"),
            ("06", "cancel", "cancel"),
        ]);
        let rows: Vec<&BarrierRow> = rows.iter().collect();
        assert_eq!(classify_tcc(&rows, "01"), TccEffect::Confirmed);
        assert_eq!(classify_tcc(&rows, "02"), TccEffect::Cancelled);
        assert_eq!(classify_tcc(&rows, "03"), TccEffect::Skipped);
        assert_eq!(classify_tcc(&rows, "04"), TccEffect::Reserved);
        assert_eq!(classify_tcc(&rows, "09"), TccEffect::NotReached);
        for anomalous in ["05", "06"] {
            assert!(matches!(classify_tcc(&rows, anomalous), TccEffect::Anomalous(_)), "{anomalous}");
        }
    }

    /// A TCC branch for [`tcc`]: its id, its barrier rows (op, reason), its hold row.
    type TestBranch<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<i8>);

    fn tcc(s: &mut Snapshot, gid: &str, status: &str, branches: &[TestBranch<'_>]) {
        s.sagas.insert(gid.into(), status.into());
        s.tcc.insert(gid.into());
        for (branch, rows, hold) in branches {
            for op in ["confirm", "cancel"] {
                s.branches.push(BranchRow {
                    gid: gid.into(),
                    branch_id: (*branch).into(),
                    op: op.into(),
                    url: format!("http://127.0.0.1:1/tcc/{op}"),
                    bin_data: None,
                });
            }
            for (op, reason) in *rows {
                barrier(s, gid, branch, op, reason);
            }
            if let Some(state) = hold {
                s.holds.insert((gid.into(), (*branch).into()), *state);
            }
        }
    }

    #[test]
    fn a_failed_tcc_that_kept_a_reservation_is_caught() {
        let mut s = Snapshot::default();
        tcc(&mut s, "t1", "succeed", &[("01", &[("try", "try"), ("confirm", "confirm")], Some(1))]);
        tcc(
            &mut s,
            "t2",
            "failed",
            &[
                ("01", &[("try", "try"), ("cancel", "cancel")], Some(-1)),
                ("02", &[("try", "cancel"), ("cancel", "cancel")], None),
            ],
        );
        assert!(check(&s, &[], &[], &[], &[]).violations.is_empty());
        // A try registered after the cancels were decided: reserved for ever.
        tcc(&mut s, "t3", "failed", &[("01", &[("try", "try")], Some(0))]);
        let checked = check(&s, &[], &[], &[], &[]);
        let found: Vec<(Rule, Option<&str>)> =
            checked.violations.iter().map(|v| (v.rule, v.gid.as_deref())).collect();
        assert_eq!(found, vec![(Rule::BranchEffects, Some("t3"))], "{:#?}", checked.violations);
        assert!(checked.violations[0].detail.contains("branch 01 is reserved, never confirmed or cancelled"));
    }

    #[test]
    fn effects_without_a_saga_are_orphans() {
        let mut s = healthy();
        order(&mut s, "ghost", 1, 1, 0);
        assert!(rules(&check(&s, &[], &[], &[], &[])).contains(&Rule::NoOrphanEffects));
    }
}
