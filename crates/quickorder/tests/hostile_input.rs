//! Hostile input against the whole system, one table per boundary.
//!
//! Every row sends something a careless or malicious client might, and
//! checks the answer is a clear 4xx / 409 / `InvalidArgument` with a
//! message, that the process keeps serving, and — at the end — that nothing
//! was stored or changed: stock still 100, no order, no barrier row, no
//! transaction in the coordinator but the ones the table meant to create.
//!
//! The per-crate suites test each rule in depth; this file proves the
//! rules hold where a user meets them: the running system.

use std::time::Duration;

use proto::stock::{DeductReq, StockClient};
use quickorder::embedded::{Options, Ports, System};
use serde_json::{Value, json};
use sqlx::SqlitePool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Harness {
    system: System,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    /// A whole system runs: at most a few at once.
    _slot: harness::SystemSlot,
}

impl Harness {
    async fn start() -> Harness {
        let slot = harness::system_slot();
        let dir = tempfile::tempdir().expect("temp dir");
        let options = Options { ports: Ports::ANY, ..Options::sqlite(dir.path()) };
        let system = System::start(&options).await.expect("embedded system starts");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
        Harness { system, http, _dir: dir, _slot: slot }
    }

    fn api(&self, path: &str) -> String {
        format!("http://{}{path}", self.system.addrs.api)
    }

    fn dtm(&self, path: &str) -> String {
        format!("http://{}/api/dtmsvr{path}", self.system.addrs.coordinator_http)
    }

    /// POSTs raw bytes; returns the status and the JSON body (Null if none).
    async fn post(&self, url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn healthy(&self) -> bool {
        self.http.get(self.api("/healthz")).send().await.is_ok_and(|r| r.status().is_success())
    }
}

fn message(answer: &Value) -> &str {
    answer["error"].as_str().or_else(|| answer["message"].as_str()).unwrap_or("")
}

// One test of ~200 lines, mostly tables of hostile requests: they share one
// running system, and the last section checks that none of them stored or
// changed anything, which only holds if it sees all of them.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_gets_clear_errors_and_changes_nothing() {
    let h = Harness::start().await;
    let quick_create = h.api("/order/quickCreate");
    let metachars = "'; DROP TABLE stock; -- \u{202e}ñ😀\"\\%_";

    // order-api: (what, body, expected status, the field the answer must name).
    let api_cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("malformed JSON", r#"{"userId":1,"goodsId":"#.into(), 400, None),
        ("not an object", "[1,2,3]".into(), 400, None),
        ("empty body", String::new(), 400, None),
        ("missing userId", json!({"goodsId":1,"num":1}).to_string(), 400, Some("userId")),
        ("missing num", json!({"userId":1,"goodsId":1}).to_string(), 400, Some("num")),
        ("string id", json!({"userId":"1","goodsId":1,"num":1}).to_string(), 400, Some("userId")),
        ("float id", json!({"userId":1,"goodsId":1.5,"num":1}).to_string(), 400, Some("goodsId")),
        ("boolean num", json!({"userId":1,"goodsId":1,"num":true}).to_string(), 400, Some("num")),
        ("null num", json!({"userId":1,"goodsId":1,"num":null}).to_string(), 400, Some("num")),
        ("zero num", json!({"userId":1,"goodsId":1,"num":0}).to_string(), 400, Some("num")),
        ("negative num", json!({"userId":1,"goodsId":1,"num":-5}).to_string(), 400, Some("num")),
        ("num over MaxNum", json!({"userId":1,"goodsId":1,"num":1001}).to_string(), 400, Some("num")),
        ("num beyond i64", r#"{"userId":1,"goodsId":1,"num":9223372036854775808}"#.into(), 400, Some("num")),
        (
            "userId beyond i64",
            r#"{"userId":99999999999999999999,"goodsId":1,"num":1}"#.into(),
            400,
            Some("userId"),
        ),
        ("negative goodsId", json!({"userId":1,"goodsId":-1,"num":1}).to_string(), 400, Some("goodsId")),
        (
            "metacharacters as id",
            json!({"userId":metachars,"goodsId":1,"num":1}).to_string(),
            400,
            Some("userId"),
        ),
    ];
    for (what, body, expected, field) in api_cases {
        let (status, answer) = h.post(&quick_create, body).await;
        assert_eq!(status, expected, "{what}: {answer}");
        assert!(!message(&answer).is_empty(), "{what}: no message in {answer}");
        if let Some(field) = field {
            assert_eq!(answer["field"], field, "{what}: {answer}");
        }
    }

    // A 10 MB body: 413 with a JSON error. The server may answer before the
    // upload ends and close the connection, so send it over a raw socket
    // and read the answer while writing (an HTTP client would report the
    // early close as a send error).
    let huge = format!(r#"{{"userId":1,"goodsId":1,"num":1,"pad":"{}"}}"#, "x".repeat(10 * 1024 * 1024));
    let answer = raw_post(h.system.addrs.api, "/order/quickCreate", huge.into_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "10 MB body: {}", &answer[..answer.len().min(300)]);
    assert!(answer.contains("\"error\""), "10 MB body: no JSON error: {answer}");

    // Unknown goods is business, not input: the saga runs and fails (409),
    // and leaves no live order and no stock change (checked at the end).
    let (status, answer) =
        h.post(&quick_create, json!({"userId":1,"goodsId":424242,"num":1}).to_string()).await;
    assert_eq!((status, answer["status"].as_str()), (409, Some("failed")), "{answer}");
    let unknown_goods_gid = answer["gid"].as_str().unwrap().to_string();

    // A gid with metacharacters on the status route: 400 naming the gid, or
    // 404 for a well-formed unknown one; never a 500.
    let response = h.http.get(h.api("/order/status/a;b")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response =
        h.http.get(h.api(&format!("/order/status/{}", urlencode(metachars)))).send().await.unwrap();
    assert!(matches!(response.status().as_u16(), 400 | 404), "{}", response.status());

    // The coordinator's HTTP API: (what, body, expected status).
    let step = json!({"action": "http://127.0.0.1:1/a", "compensate": "http://127.0.0.1:1/c"});
    let submit = h.dtm("/submit");
    let dtm_cases: Vec<(&str, Value, u16)> = vec![
        (
            "steps/payloads mismatch",
            json!({"gid":"h1","trans_type":"saga","steps":[step],"payloads":["{}","{}"]}),
            400,
        ),
        (
            "bad URL",
            json!({"gid":"h2","trans_type":"saga","steps":[{"action":"http://","compensate":"x"}],"payloads":["{}"]}),
            400,
        ),
        (
            "unknown trans_type",
            json!({"gid":"h3","trans_type":"sagga","steps":[step],"payloads":["{}"]}),
            400,
        ),
        ("empty gid", json!({"gid":"","trans_type":"saga","steps":[step],"payloads":["{}"]}), 400),
        ("gid with ';'", json!({"gid":"a;b","trans_type":"saga","steps":[step],"payloads":["{}"]}), 400),
        ("wrong JSON type", json!({"gid":"h5","trans_type":"saga","steps":"all","payloads":[]}), 400),
    ];
    for (what, body, expected) in dtm_cases {
        let (status, answer) = h.post(&submit, body.to_string()).await;
        assert_eq!(status, expected, "{what}: {answer}");
        assert!(!message(&answer).is_empty(), "{what}: no message in {answer}");
    }

    // A payload over the coordinator's 4 MiB limit: 413 in JSON. Sent over a
    // raw socket for the same reason as the 10 MB quick order above.
    let oversized =
        json!({"gid":"h4","trans_type":"saga","steps":[step],"payloads":["x".repeat(5 * 1024 * 1024)]});
    let answer =
        raw_post(h.system.addrs.coordinator_http, "/api/dtmsvr/submit", oversized.to_string().into_bytes())
            .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "5 MiB payload: {}", &answer[..answer.len().min(300)]);
    assert!(answer.contains("\"message\""), "5 MiB payload: no JSON message: {answer}");

    // The same gid submitted twice with different steps: the second is
    // refused (409), the first is kept as it was.
    let slow_step = json!({"action": "http://127.0.0.1:1/never", "compensate": "http://127.0.0.1:1/never"});
    let first = json!({"gid":"twice","trans_type":"saga","steps":[slow_step],"payloads":["{}"]});
    assert_eq!(h.post(&submit, first.to_string()).await.0, 200);
    let second =
        json!({"gid":"twice","trans_type":"saga","steps":[slow_step, slow_step],"payloads":["{}","{}"]});
    let (status, answer) = h.post(&submit, second.to_string()).await;
    assert_eq!(status, 409, "{answer}");
    let query: Value = h.http.get(h.dtm("/query?gid=twice")).send().await.unwrap().json().await.unwrap();
    assert_eq!(query["branches"].as_array().map(Vec::len), Some(2), "one step = two branch rows: {query}");
    let _ = h.http.post(h.dtm("/forceStop")).body(json!({"gid":"twice"}).to_string()).send().await;

    // gRPC branch calls with missing or forged dtm metadata.
    let mut stock = StockClient::connect(format!("http://{}", h.system.addrs.stock_srv)).await.unwrap();
    let forged: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no metadata", vec![]),
        ("no gid", vec![("dtm-trans_type", "saga"), ("dtm-branch_id", "02"), ("dtm-op", "action")]),
        (
            "unknown op",
            vec![("dtm-gid", "g"), ("dtm-trans_type", "saga"), ("dtm-branch_id", "02"), ("dtm-op", "drop")],
        ),
        (
            "unknown trans_type",
            vec![("dtm-gid", "g"), ("dtm-trans_type", "xa2"), ("dtm-branch_id", "02"), ("dtm-op", "action")],
        ),
        (
            "gid with ';'",
            vec![
                ("dtm-gid", "x;DELETE"),
                ("dtm-trans_type", "saga"),
                ("dtm-branch_id", "02"),
                ("dtm-op", "action"),
            ],
        ),
        (
            "empty branch id",
            vec![("dtm-gid", "g"), ("dtm-trans_type", "saga"), ("dtm-branch_id", ""), ("dtm-op", "action")],
        ),
    ];
    for (what, metadata) in forged {
        let mut request = tonic::Request::new(DeductReq { goods_id: 1, num: 1 });
        for (key, value) in metadata {
            request.metadata_mut().insert(key, value.parse().unwrap());
        }
        let status = stock.deduct(request).await.expect_err(what);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}");
    }
    // A well-formed call with a hostile payload: InvalidArgument, not a deduction.
    let mut request = tonic::Request::new(DeductReq { goods_id: 1, num: -7 });
    for (key, value) in
        [("dtm-gid", "neg"), ("dtm-trans_type", "saga"), ("dtm-branch_id", "02"), ("dtm-op", "action")]
    {
        request.metadata_mut().insert(key, value.parse().unwrap());
    }
    let status = stock.deduct(request).await.expect_err("negative num");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // A slow client holding a half-sent request does not stop others.
    let mut slow = TcpStream::connect(h.system.addrs.api).await.unwrap();
    slow.write_all(b"POST /order/quickCreate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"us")
        .await
        .unwrap();
    assert!(h.healthy().await, "order-api must keep serving");
    drop(slow);
    let mut half_head = TcpStream::connect(h.system.addrs.api).await.unwrap();
    half_head.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), half_head.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a client that never finishes its request head is disconnected");

    // Nothing stored, nothing changed.
    assert!(h.healthy().await);
    let order_db = SqlitePool::connect(&h.system.order_db).await.unwrap();
    let stock_db = SqlitePool::connect(&h.system.stock_db).await.unwrap();
    let (units,): (i64,) =
        sqlx::query_as("SELECT num FROM stock WHERE goods_id = 1").fetch_one(&stock_db).await.unwrap();
    assert_eq!(units, 100, "stock must be untouched");
    let live: Vec<(String,)> =
        sqlx::query_as(r#"SELECT gid FROM "order" WHERE row_state = 0"#).fetch_all(&order_db).await.unwrap();
    assert!(live.is_empty(), "no live order may exist: {live:?}");
    let stock_barriers: Vec<(String, String)> =
        sqlx::query_as("SELECT gid, op FROM barrier").fetch_all(&stock_db).await.unwrap();
    assert!(
        stock_barriers.iter().all(|(gid, _)| *gid == unknown_goods_gid),
        "only the unknown-goods saga may have touched stock's barrier: {stock_barriers:?}"
    );
    let all: Value = h.http.get(h.dtm("/all")).send().await.unwrap().json().await.unwrap();
    let gids: Vec<&str> =
        all["transactions"].as_array().unwrap().iter().filter_map(|t| t["gid"].as_str()).collect();
    let mut expected = vec![unknown_goods_gid.as_str(), "twice"];
    let mut found = gids.clone();
    expected.sort_unstable();
    found.sort_unstable();
    assert_eq!(found, expected, "only the two meant transactions may be stored");

    h.system.stop().await.expect("clean stop");
}

/// POSTs `body` over a raw connection, reading the answer while the body
/// is still being written; returns what the server sent.
async fn raw_post(addr: std::net::SocketAddr, path: &str, body: Vec<u8>) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let upload = tokio::spawn(async move {
        // Fails with a broken pipe once the server has answered and closed.
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&body).await;
        writer
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&chunk[..n]);
                    // Head and a small JSON body: enough to judge.
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("an answer to the oversized body");
    upload.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

fn urlencode(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}
