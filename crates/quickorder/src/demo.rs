//! `quickorder demo`: the article's walkthroughs, produced live.
//!
//! Starts a fresh [`embedded`](crate::embedded) system on free ports and
//! plays four scenarios against it. After each one it prints the rows of
//! the `order`, `stock` and `barrier` tables, and says in one line why they
//! look that way:
//!
//! 1. a successful quick order (the article's two barrier rows);
//! 2. an order for more than is in stock (the four rows of a compensated
//!    saga, the order marked −1, the stock untouched);
//! 3. a branch delivered twice (the barrier's idempotency);
//! 4. a compensation that arrives before its action, then the late action
//!    (null compensation and anti-hanging).
//!
//! Scenarios 1–2 go through order-api like a user; 3–4 call stock-srv's
//! gRPC branches with dtm's metadata directly, because that is the only way
//! to make a coordinator misbehave on purpose.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use dtm_protocol::{BranchCall, BranchId, Gid, Op, TransType};
use proto::stock::{DeductReq, StockClient};
use serde_json::{Value, json};
use sqlx::SqlitePool;

use crate::embedded::{Options, Ports, System};

/// `quickorder demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the databases in this folder (default: a temporary folder
    /// that is deleted afterwards). The folder must not hold databases of
    /// an earlier run: the demo expects 100 units in stock.
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}

/// Runs the demo, writing the tour to stdout.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new().prefix("quickorder-demo-").tempdir()?;
    let dir = args.data_dir.unwrap_or_else(|| temp.path().to_path_buf());
    let options = Options { ports: Ports::ANY, ..Options::sqlite(&dir) };
    let system = System::start(&options).await?;
    let outcome = Tour::new(&system).await?.play().await;
    system.stop().await?;
    outcome
}

/// The demo's connections: order-api over HTTP, stock-srv over gRPC, and
/// the two business databases for reading rows.
struct Tour {
    /// `http://127.0.0.1:<port>` of order-api.
    api: String,
    /// HTTP client for order-api.
    http: reqwest::Client,
    /// gRPC client of stock-srv, for delivering branches by hand.
    stock: StockClient<tonic::transport::Channel>,
    /// order-srv's database (order + barrier tables).
    order_db: SqlitePool,
    /// stock-srv's database (stock + barrier tables).
    stock_db: SqlitePool,
}

impl Tour {
    async fn new(system: &System) -> anyhow::Result<Tour> {
        let stock = StockClient::connect(format!("http://{}", system.addrs.stock_srv)).await?;
        Ok(Tour {
            api: format!("http://{}", system.addrs.api),
            http: reqwest::Client::new(),
            stock,
            order_db: SqlitePool::connect(&system.order_db).await?,
            stock_db: SqlitePool::connect(&system.stock_db).await?,
        })
    }

    async fn play(mut self) -> anyhow::Result<()> {
        let (units,): (i64,) =
            sqlx::query_as("SELECT num FROM stock WHERE goods_id = 1").fetch_one(&self.stock_db).await?;
        if units != 100 {
            bail!(
                "the data folder holds an earlier run (goods 1 has {units} units, not 100); use a fresh one"
            );
        }
        println!("quickorder demo: the article's scenarios on a fresh system (goods 1 has 100 units)\n");

        heading(1, "A successful quick order");
        let ok = self.quick_create(json!({"userId": 1, "goodsId": 1, "num": 1}), 200).await?;
        self.show(&ok).await?;
        why("each branch's action wrote its barrier row in the same local transaction as its business \
             SQL (order inserted, stock 100 -> 99); nothing failed, so nothing was compensated.");

        heading(2, "More than is in stock: the saga compensates");
        let failed = self.quick_create(json!({"userId": 1, "goodsId": 1, "num": 500}), 409).await?;
        self.show(&failed).await?;
        why("stock's deduct failed, so its action row rolled back with it; the coordinator then ran both \
             compensations in reverse order: stock's found no action row (a null compensation: it wrote \
             02/action with reason 'compensate' and skipped the business), order's marked the order -1.");

        heading(3, "The stock action of saga 1 delivered a second time");
        let resent = self.deliver(&ok, Op::Action).await?;
        println!("gRPC /pb.stock/deduct again with gid={ok}, branch 02, op action -> {resent}");
        self.show(&ok).await?;
        why("the barrier's insert-ignore of (gid, 02, action, 01) changed no row, so the business SQL was \
             skipped: still 99 units, still two barrier rows. At-least-once delivery, exactly-once effect.");

        heading(4, "A compensation that overtakes its action");
        let gid = "late-action-demo".to_string();
        let compensated = self.deliver(&gid, Op::Compensate).await?;
        println!("gRPC /pb.stock/deductRollback with gid={gid}, branch 02, op compensate -> {compensated}");
        let late = self.deliver(&gid, Op::Action).await?;
        println!("gRPC /pb.stock/deduct (the late action) with the same gid                 -> {late}");
        self.show(&gid).await?;
        why(
            "the compensation came first: it inserted the action's row with reason 'compensate' and restored \
             nothing (null compensation). The late action's insert then changed no row, so it never \
             deducted (anti-hanging): stock unchanged.",
        );
        Ok(())
    }

    /// POSTs a quick order, prints the exchange, returns the gid.
    async fn quick_create(&self, body: Value, expected: u16) -> anyhow::Result<String> {
        let response = self.http.post(format!("{}/order/quickCreate", self.api)).json(&body).send().await?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.context("order-api answered no JSON")?;
        println!("POST /order/quickCreate {body}\n-> {status} {answer}");
        if status != expected {
            bail!("expected HTTP {expected}, got {status} {answer}");
        }
        answer["gid"].as_str().map(str::to_string).context("no gid in the answer")
    }

    /// Calls stock-srv's branch for `op` as the coordinator would.
    async fn deliver(&mut self, gid: &str, op: Op) -> anyhow::Result<String> {
        let call = BranchCall::new(Gid::new(gid)?, TransType::Saga, BranchId::nth(1), op);
        let request = call.grpc_request(DeductReq { goods_id: 1, num: 1 })?;
        let answer = match op {
            Op::Action => self.stock.deduct(request).await,
            _ => self.stock.deduct_rollback(request).await,
        };
        Ok(match answer {
            Ok(_) => "OK".to_string(),
            Err(status) => format!("{:?} {}", status.code(), status.message()),
        })
    }

    /// Prints the order, stock and barrier rows that concern `gid`.
    async fn show(&self, gid: &str) -> anyhow::Result<()> {
        let orders: Vec<(i64, i64, i64, i64, i64, String)> = sqlx::query_as(
            r#"SELECT id, user_id, goods_id, num, row_state, gid FROM "order" WHERE gid = ? ORDER BY id"#,
        )
        .bind(gid)
        .fetch_all(&self.order_db)
        .await?;
        let rows = orders.into_iter().map(|(id, user, goods, num, state, gid)| {
            vec![id.to_string(), user.to_string(), goods.to_string(), num.to_string(), state.to_string(), gid]
        });
        print_table(
            "order (order-srv's database)",
            &["id", "user_id", "goods_id", "num", "row_state", "gid"],
            rows,
        );

        let stock: Vec<(i64, i64)> = sqlx::query_as("SELECT goods_id, num FROM stock ORDER BY goods_id")
            .fetch_all(&self.stock_db)
            .await?;
        let rows = stock.into_iter().map(|(goods, num)| vec![goods.to_string(), num.to_string()]);
        print_table("stock (stock-srv's database)", &["goods_id", "num"], rows);

        let mut barrier = Vec::new();
        for (service, pool) in [("order-srv", &self.order_db), ("stock-srv", &self.stock_db)] {
            let rows: Vec<(String, String, String, String, String)> = sqlx::query_as(
                "SELECT trans_type, branch_id, op, barrier_id, reason FROM barrier WHERE gid = ? ORDER BY id",
            )
            .bind(gid)
            .fetch_all(pool)
            .await?;
            barrier.extend(rows.into_iter().map(|(trans_type, branch, op, barrier_id, reason)| {
                vec![service.to_string(), trans_type, branch, op, barrier_id, reason]
            }));
        }
        print_table(
            &format!("barrier rows of gid {gid}"),
            &["database", "trans_type", "branch_id", "op", "barrier_id", "reason"],
            barrier,
        );
        Ok(())
    }
}

fn heading(number: u32, title: &str) {
    println!("== {number}. {title} ==");
}

fn why(text: &str) {
    println!("why: {text}\n");
}

/// Prints rows under a title as an aligned text table.
fn print_table(title: &str, headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.into_iter().collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::from(" ");
        for (cell, width) in cells.zip(&widths) {
            let _ = write!(out, " {cell:<width$} |");
        }
        out.pop();
        out.trim_end().to_string()
    };
    println!("{title}:");
    println!("{}", line(&mut headers.iter().copied()));
    if rows.is_empty() {
        println!("  (no rows)");
    }
    for row in &rows {
        println!("{}", line(&mut row.iter().map(String::as_str)));
    }
}
