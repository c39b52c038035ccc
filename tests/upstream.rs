//! The origin connection pool: kept-alive connections carry request after request; closed or broken ones are never reused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::{Origin, ProxyConfig, Reply};

#[tokio::test]
async fn sequential_requests_share_one_origin_connection() {
    let origin = Origin::start().await;
    origin.on("/pass", Reply::ok().body("p".repeat(1000)));
    origin.on("/chunked", Reply::ok().body("c".repeat(1000)).chunked());
    origin.on("/empty", Reply::ok().status(204));
    let proxy = ProxyConfig::new(&origin).workers(1).start().await;
    for round in 0..10 {
        for path in ["/pass", "/chunked", "/empty"] {
            let answer = proxy.get(path).await;
            assert!(
                answer.status.is_success(),
                "{path} in round {round}: {}",
                answer.status
            );
        }
        assert_eq!(proxy.send("HEAD", "/pass", &[]).await.status, 200);
    }
    assert_eq!(origin.hits("/pass"), 20);
    assert_eq!(
        origin.connections(),
        1,
        "every request on one kept-alive connection"
    );
}

#[tokio::test]
async fn a_body_the_client_abandons_closes_its_connection() {
    let origin = Origin::start().await;
    origin.on(
        "/slow",
        Reply::ok()
            .body("s".repeat(64 * 1024))
            .slow(1024, Duration::from_millis(20)),
    );
    origin.on("/next", Reply::ok().body("n"));
    let proxy = ProxyConfig::new(&origin).workers(1).start().await;
    let response = proxy.open("/slow").await;
    assert_eq!(response.status(), 200);
    drop(response);
    // The abandoned response's connection still has body bytes in it: the
    // next request must not be written behind them.
    let answer = proxy.get("/next").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "n");
    assert_eq!(origin.connections(), 2);
}

/// An origin that answers one request per connection and then closes it
/// without saying so (no `Connection: close`), as an origin whose
/// keep-alive timeout ran out does; returns its port and how many
/// connections it accepted.
async fn closing_origin() -> (u16, tokio::sync::watch::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, count) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted.send_modify(|count| *count += 1);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                let _ = stream.write_all(answer.as_bytes()).await;
                // Dropping the stream closes the connection.
            });
        }
    });
    (port, count)
}

#[tokio::test]
async fn a_connection_the_origin_closed_while_idle_is_not_reused() {
    let (port, connections) = closing_origin().await;
    let proxy = ProxyConfig::for_url(&format!("http://127.0.0.1:{port}"))
        .workers(1)
        .start()
        .await;
    for round in 1..=5 {
        let answer = proxy.get("/x").await;
        assert_eq!(answer.status, 200, "round {round}: {}", answer.text());
        assert_eq!(answer.text(), "ok");
        assert_eq!(*connections.borrow(), round, "a new connection each time");
        // Real sockets: the origin's close takes a moment to reach the
        // proxy's connection task (a request sent in that window would
        // fail, as it would with any keep-alive client).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
