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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use prost::Message;
use sqlx::MySqlPool;
use tokio::time::Instant;

use super::ChaosError;
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
    /// succeed ⇒ one live order and one net deduction; failed ⇒ none.
    OutcomeEffects,
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
    pub const ALL: [Rule; 9] = [
        Rule::Final,
        Rule::NotLost,
        Rule::HttpAgrees,
        Rule::RequestMatches,
        Rule::OutcomeEffects,
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
            Rule::HttpAgrees => "HTTP answers agree with final states (200 ⇒ succeed, 409 ⇒ failed)",
            Rule::RequestMatches => "the stored saga is the order the client sent",
            Rule::OutcomeEffects => {
                "succeed ⇒ one live order + one deduction; failed ⇒ no live order, no net deduction"
            }
            Rule::AtMostOnce => {
                "each (gid, branch, op) effect at most once; business rows agree with barrier rows"
            }
            Rule::StockConserved => "per goods: initial − now = Σ num of live orders = Σ net deductions",
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
    /// Reads every table.
    pub async fn read(server_url: &str) -> Result<Snapshot, ChaosError> {
        let pool = connect(server_url, Instant::now() + Duration::from_secs(30)).await?;
        // `CAST(gid AS CHAR)`: gid columns have a binary collation (exact
        // gids), which sqlx reports as VARBINARY and will not decode as a String.
        let sagas: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT CAST(gid AS CHAR) AS gid, status FROM `{COORDINATOR_DB}`.trans_global"
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
        pool.close().await;
        Ok(Snapshot {
            sagas: sagas.into_iter().collect(),
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
        })
    }
}

/// A `trans_branch_op` row as read.
type Branch = (String, String, String, String, Option<Vec<u8>>);
/// An `order` row as read.
type Order = (i64, String, i64, i64, i32, i8);
/// A barrier row as read: every column is nullable.
type Barrier = (Option<String>, Option<String>, Option<String>, Option<String>, Option<String>);

/// The two steps of a quick-order saga, decoded from the store.
#[derive(Debug, Default)]
struct Steps {
    /// Branch id and request of the order step.
    order: Option<(String, proto::order::CreateReq)>,
    /// Branch id and request of the stock step.
    stock: Option<(String, proto::stock::DeductReq)>,
}

/// What the barrier table says one branch of one saga did.
#[derive(Debug, Default, Clone, Copy)]
struct BranchEffect {
    /// The forward op committed its business SQL.
    done: bool,
    /// …and its compensation committed too.
    undone: bool,
}

/// Checks every rule; `initial` is the stock at the start.
pub fn check(snapshot: &Snapshot, records: &[Record], initial: &[(i64, i32)]) -> Checked {
    let mut out = Checked::default();

    // Index the rows by gid.
    let mut steps: HashMap<&str, Steps> = HashMap::new();
    for b in snapshot.branches.iter().filter(|b| b.op == "action") {
        let entry = steps.entry(b.gid.as_str()).or_default();
        let data = b.bin_data.as_deref().unwrap_or_default();
        if b.url.contains("/pb.order/") {
            entry.order = proto::order::CreateReq::decode(data).ok().map(|r| (b.branch_id.clone(), r));
        } else if b.url.contains("/pb.stock/") {
            entry.stock = proto::stock::DeductReq::decode(data).ok().map(|r| (b.branch_id.clone(), r));
        }
    }
    let mut barrier_rows: HashMap<&str, Vec<&BarrierRow>> = HashMap::new();
    for row in &snapshot.barriers {
        barrier_rows.entry(row.gid.as_deref().unwrap_or_default()).or_default().push(row);
    }
    let mut orders: HashMap<&str, Vec<&OrderRow>> = HashMap::new();
    for row in &snapshot.orders {
        orders.entry(row.gid.as_str()).or_default().push(row);
    }
    let no_orders = Vec::new();
    let no_barriers = Vec::new();

    // Per saga.
    let mut net_deducted: BTreeMap<i64, i64> = BTreeMap::new();
    for (gid, status) in &snapshot.sagas {
        let gid_ref = Some(gid.as_str());
        *out.sagas_by_status.entry(status.clone()).or_default() += 1;
        out.count(Rule::Final);
        if status != "succeed" && status != "failed" {
            out.violate(Rule::Final, gid_ref, format!("still {status:?} after quiescence"));
        }
        let Some(Steps { order: Some((order_branch, create)), stock: Some((stock_branch, deduct)) }) =
            steps.get(gid.as_str())
        else {
            out.violate(
                Rule::RequestMatches,
                gid_ref,
                "not a quick-order saga (order/stock steps missing)".into(),
            );
            continue;
        };
        let rows = barrier_rows.get(gid.as_str()).unwrap_or(&no_barriers);
        let own = orders.get(gid.as_str()).unwrap_or(&no_orders);

        // The barrier's view of each branch.
        out.count(Rule::AtMostOnce);
        for row in rows {
            if row.barrier_id.as_deref() != Some("01") {
                out.violate(Rule::AtMostOnce, gid_ref, format!("unexpected barrier row {row:?}"));
            }
        }
        let effect = |branch: &str| {
            let find = |op: &str| {
                rows.iter().find(|r| r.branch_id.as_deref() == Some(branch) && r.op.as_deref() == Some(op))
            };
            let done = find("action").is_some_and(|r| r.reason.as_deref() == Some("action"));
            BranchEffect { done, undone: done && find("compensate").is_some() }
        };
        let order_effect = effect(order_branch);
        let stock_effect = effect(stock_branch);

        // The business rows of the order branch must agree with its barrier rows.
        if own.len() > 1 {
            let ids: Vec<i64> = own.iter().map(|o| o.id).collect();
            out.violate(
                Rule::AtMostOnce,
                gid_ref,
                format!("{} order rows (ids {ids:?}): created more than once", own.len()),
            );
        }
        let live = own.iter().filter(|o| o.row_state == 0).count();
        let cancelled = own.iter().filter(|o| o.row_state == -1).count();
        if order_effect.done == own.is_empty() || order_effect.undone != (cancelled > 0 && live == 0) {
            out.violate(
                Rule::AtMostOnce,
                gid_ref,
                format!(
                    "order rows (live {live}, cancelled {cancelled}) disagree with the barrier \
                     (created {}, compensated {}): {rows:?}",
                    order_effect.done, order_effect.undone
                ),
            );
        }
        out.count(Rule::RequestMatches);
        if create.goods_id != deduct.goods_id || create.num != deduct.num {
            out.violate(Rule::RequestMatches, gid_ref, format!("steps disagree: {create:?} vs {deduct:?}"));
        }
        for o in own.iter() {
            if (o.user_id, o.goods_id, i64::from(o.num)) != (create.user_id, create.goods_id, create.num) {
                out.violate(
                    Rule::RequestMatches,
                    gid_ref,
                    format!("order row {o:?} is not the saga's {create:?}"),
                );
            }
        }

        // The outcome and its effects.
        out.count(Rule::OutcomeEffects);
        let deducted = stock_effect.done && !stock_effect.undone;
        if deducted {
            *net_deducted.entry(deduct.goods_id).or_default() += deduct.num;
        }
        let wrong = match status.as_str() {
            "succeed" => !(live == 1 && deducted),
            "failed" => live != 0 || deducted,
            _ => false,
        };
        if wrong {
            out.violate(
                Rule::OutcomeEffects,
                gid_ref,
                format!("{status} saga left {live} live order(s) and net deduction {deducted}; barrier rows {rows:?}"),
            );
        }
    }

    // Effects without a saga.
    out.count(Rule::NoOrphanEffects);
    let orphans: BTreeSet<&str> = orders
        .keys()
        .chain(barrier_rows.keys())
        .copied()
        .filter(|gid| !snapshot.sagas.contains_key(*gid))
        .collect();
    for gid in orphans {
        out.violate(
            Rule::NoOrphanEffects,
            Some(gid),
            "order or barrier rows, but no saga in the store".into(),
        );
    }

    // Stock.
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
        let deducted = net_deducted.get(&goods).copied().unwrap_or_default();
        out.stock.insert(goods, (start, now, live));
        if sold != live || sold != deducted {
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

    // The clients' view.
    let mut traced = BTreeSet::new();
    for record in records {
        let Answer::Http { status, gid: Some(gid) } = &record.answer else { continue };
        let gid_ref = Some(gid.as_str());
        if !traced.insert(gid.as_str()) {
            out.violate(Rule::NotLost, gid_ref, "the same gid was answered to two requests".into());
        }
        let stored = snapshot.sagas.get(gid);
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
                let key = format!("{status} → {}", resolved.unwrap_or("never stored"));
                *out.unknown_resolved.entry(key.clone()).or_default() += 1;
                let examples = out.unknown_examples.entry(key).or_default();
                if examples.len() < 3 {
                    examples.push(gid.clone());
                }
            }
            _ => {}
        }
        if let Some(Steps { order: Some((_, create)), .. }) = steps.get(gid.as_str()) {
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
    out.untraced_sagas = snapshot.sagas.keys().filter(|gid| !traced.contains(gid.as_str())).count();
    out
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
        let checked = check(&healthy(), &[record("g1", 200, 2), record("g2", 409, 900)], &[(1, 10)]);
        assert!(checked.violations.is_empty(), "{:?}", checked.violations);
        assert_eq!(checked.sagas_by_status["succeed"], 1);
        assert_eq!(checked.sagas_by_status["failed"], 1);
    }

    #[test]
    fn a_double_deduction_breaks_conservation() {
        let mut s = healthy();
        s.stock.insert(1, 6);
        assert!(rules(&check(&s, &[], &[(1, 10)])).contains(&Rule::StockConserved));
    }

    #[test]
    fn a_second_order_row_is_a_double_effect() {
        let mut s = healthy();
        order(&mut s, "g1", 1, 2, 0);
        let found = rules(&check(&s, &[], &[(1, 10)]));
        assert!(found.contains(&Rule::AtMostOnce), "{found:?}");
        assert!(found.contains(&Rule::OutcomeEffects), "{found:?}");
    }

    #[test]
    fn stuck_lost_and_disagreeing_sagas_are_named() {
        let mut s = healthy();
        saga(&mut s, "g3", "submitted", 2, 1);
        let checked = check(&s, &[record("g1", 409, 2), record("g9", 200, 1)], &[(1, 10)]);
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
        let found = rules(&check(&s, &[], &[(1, 10)]));
        assert!(found.contains(&Rule::OutcomeEffects), "{found:?}");
        assert!(found.contains(&Rule::StockNonNegative), "{found:?}");
    }

    #[test]
    fn effects_without_a_saga_are_orphans() {
        let mut s = healthy();
        order(&mut s, "ghost", 1, 1, 0);
        assert!(rules(&check(&s, &[], &[])).contains(&Rule::NoOrphanEffects));
    }
}
