//! The HTTP serve loop against hostile clients: slowloris, connection
//! floods, and requests that never finish during shutdown.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use service_kit::http::{HttpServeLimits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

fn app() -> Router {
    Router::new().route("/", get(|| async { "ok" })).route(
        "/hang",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "never"
        }),
    )
}

/// A server on a free port; dropping the sender shuts it down.
async fn start(limits: HttpServeLimits) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(
            listener,
            app(),
            async {
                let _ = stopped.await;
            },
            limits,
        )
        .await
        .unwrap();
    });
    (addr, stop, task)
}

async fn get_ok(addr: &str) -> bool {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    client.get(format!("http://{addr}/")).send().await.is_ok_and(|r| r.status().is_success())
}

#[tokio::test]
async fn slowloris_connections_are_closed_and_do_not_starve_real_clients() {
    let limits = HttpServeLimits {
        max_connections: 4,
        header_read_timeout: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(1),
    };
    let (addr, _stop, _task) = start(limits).await;

    // Fill every slot with a client that never finishes its request head.
    let mut slow = Vec::new();
    for _ in 0..limits.max_connections {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        slow.push(stream);
    }

    // A real client still gets served: the slow ones are cut off after the
    // header-read timeout, which frees their slots.
    let started = Instant::now();
    assert!(get_ok(&addr).await, "a normal request must be served");
    assert!(started.elapsed() < Duration::from_secs(3), "served only after {:?}", started.elapsed());

    // Each slow connection was closed by the server (EOF or reset, maybe
    // after a 408 response), not left hanging.
    for mut stream in slow {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a slowloris connection was left open");
    }
}

#[tokio::test]
async fn shutdown_drains_for_at_most_the_drain_timeout() {
    let limits = HttpServeLimits {
        max_connections: 16,
        header_read_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_millis(300),
    };
    let (addr, stop, task) = start(limits).await;
    assert!(get_ok(&addr).await);

    // A request that would take an hour is in flight when shutdown starts.
    let hanging = tokio::spawn({
        let addr = addr.clone();
        async move { reqwest::get(format!("http://{addr}/hang")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    drop(stop);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("shutdown must not wait for ever")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "drain took {:?}", started.elapsed());
    let hanging = tokio::time::timeout(Duration::from_secs(5), hanging).await;
    assert!(hanging.expect("the hanging request is cut off").unwrap().is_err(), "cut off, not answered");

    // Not accepting any more.
    assert!(TcpStream::connect(&addr).await.is_err() || !get_ok(&addr).await);
}
