//! The traffic driver: concurrent clients posting quick orders to
//! order-api for the whole run, recording every answer.
//!
//! Each client is a loop with its own seeded generator: a random user,
//! goods 1, 2 or 3 (seeded with [`GOODS`] units), 1 to 4 units — or, for
//! [`OVER_STOCK_SHARE`] of the orders, 900 to 1000 units of goods 2 or 3,
//! more than they ever had, so a steady share of sagas must fail and be
//! compensated. Goods 1 has enough for any run, so sagas keep succeeding
//! until the end; goods 3 (and later goods 2) runs out, so ordinary orders
//! fail too. After an answer that is not a
//! saga outcome (5xx, no answer) a client backs off briefly, as a real one
//! would, instead of spinning on a dead gateway.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ChaosError;
use super::topology::STOCK_DB;

/// Goods and their stock at the start of the run.
pub const GOODS: [(i64, i32); 3] = [(1, 1_000_000), (2, 500), (3, 40)];
/// Share of orders for more units of goods 2 or 3 than they ever had
/// (900–1000; order-api's `MaxNum` is 1000).
pub const OVER_STOCK_SHARE: f64 = 0.15;
/// A client gives up on one request after this long (order-api's own
/// deadline is 10 s, so an answer within it is always seen).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Sets the stock of `goods` (stock-srv created the table at start).
pub async fn seed_stock(server_url: &str, goods: &[(i64, i32)]) -> Result<(), ChaosError> {
    let pool = sqlx::MySqlPool::connect(server_url).await?;
    for &(goods, num) in goods {
        sqlx::query(&format!(
            "INSERT INTO `{STOCK_DB}`.stock (goods_id, num) VALUES (?, ?) ON DUPLICATE KEY UPDATE num = VALUES(num)"
        ))
        .bind(goods)
        .bind(num)
        .execute(&pool)
        .await?;
    }
    pool.close().await;
    Ok(())
}

/// One `POST /order/quickCreate` and what came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sent at (from the start of traffic).
    pub started: Duration,
    /// Answered (or given up) at.
    pub finished: Duration,
    /// `userId`.
    pub user: i64,
    /// `goodsId`.
    pub goods: i64,
    /// `num`.
    pub num: i64,
    /// The answer.
    pub answer: Answer,
}

/// What a request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP answer; `gid` when the body named one (every quickCreate
    /// answer does once a gid was issued, errors included).
    Http {
        /// The status code.
        status: u16,
        /// The saga's gid.
        gid: Option<String>,
    },
    /// No HTTP answer.
    Transport(Transport),
}

/// Why there was no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
    /// Connection refused or not established (order-api down).
    Connect,
    /// No answer within the client timeout (order-api paused).
    Timeout,
    /// The connection broke mid-request (order-api killed).
    Broken,
}

impl Answer {
    /// Whether this is a saga outcome the client can act on (200, 409, 202).
    pub fn is_outcome(&self) -> bool {
        matches!(self, Answer::Http { status: 200 | 409 | 202, .. })
    }

    /// `200`, `409`, `503`, `no answer: connect`, … for the report.
    pub fn label(&self) -> String {
        match self {
            Answer::Http { status, .. } => status.to_string(),
            Answer::Transport(Transport::Connect) => "no answer: connection refused".into(),
            Answer::Transport(Transport::Timeout) => "no answer: timed out".into(),
            Answer::Transport(Transport::Broken) => "no answer: connection broken".into(),
        }
    }
}

/// The running clients.
pub struct Driver {
    /// Tells the clients to stop after their current request.
    stop: CancellationToken,
    /// One task per client, each returning its records.
    clients: Vec<JoinHandle<Vec<Record>>>,
}

impl Driver {
    /// Starts `clients` clients against `api` (`http://127.0.0.1:port`).
    pub fn start(api: &str, clients: usize, seed: u64, t0: Instant) -> Result<Driver, ChaosError> {
        let stop = CancellationToken::new();
        let http = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| ChaosError::Setup(format!("HTTP client: {e}")))?;
        let url = format!("{api}/order/quickCreate");
        let clients = (0..clients)
            .map(|i| {
                // Distinct, reproducible streams per client.
                let rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
                tokio::spawn(client(http.clone(), url.clone(), rng, t0, stop.clone()))
            })
            .collect();
        Ok(Driver { stop, clients })
    }

    /// Stops the clients; each finishes the request it is in (bounded by
    /// the client timeout). Every record, by start time.
    pub async fn stop(self) -> Vec<Record> {
        self.stop.cancel();
        let mut records = Vec::new();
        for client in self.clients {
            if let Ok(mine) = client.await {
                records.extend(mine);
            }
        }
        records.sort_by_key(|r| r.started);
        records
    }
}

async fn client(
    http: reqwest::Client,
    url: String,
    mut rng: StdRng,
    t0: Instant,
    stop: CancellationToken,
) -> Vec<Record> {
    let mut records = Vec::new();
    while !stop.is_cancelled() {
        let user = rng.random_range(1..=10_000);
        let (goods, num) = if rng.random_bool(OVER_STOCK_SHARE) {
            (rng.random_range(2..=3), rng.random_range(900..=1000))
        } else {
            (GOODS[rng.random_range(0..GOODS.len())].0, rng.random_range(1..=4))
        };
        let started = t0.elapsed();
        let answer = post(&http, &url, json!({"userId": user, "goodsId": goods, "num": num})).await;
        let outcome = answer.is_outcome();
        records.push(Record { started, finished: t0.elapsed(), user, goods, num, answer });
        if !outcome {
            let pause = Duration::from_millis(rng.random_range(100..200));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => {}
            }
        }
    }
    records
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> Answer {
    match http.post(url).json(&body).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let gid = response
                .json::<Value>()
                .await
                .ok()
                .and_then(|body| body.get("gid").and_then(Value::as_str).map(str::to_string));
            Answer::Http { status, gid }
        }
        Err(err) if err.is_timeout() => Answer::Transport(Transport::Timeout),
        Err(err) if err.is_connect() => Answer::Transport(Transport::Connect),
        Err(_) => Answer::Transport(Transport::Broken),
    }
}
