//! Bounded request heads and slow clients, seen from raw sockets: 431 for heads over the limits, slowloris and idle connections closed, h2 streams and header lists bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::{Origin, Proxy, ProxyConfig, Reply, eventually, lazy_message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Longest any exchange here may take; the limits under test are far shorter.
const PATIENCE: Duration = Duration::from_secs(5);

/// A GET of `path` whose head is exactly `size` bytes, padded by one
/// field; the proxy closes the connection after answering it.
/// Waits until `proxy` has counted `count` rejections for `reason`
/// (`sidecache_client_rejections_total`): what hyper refuses is counted
/// when its connection task ends, which may be just after the client has
/// seen the close.
async fn rejected(proxy: &Proxy, reason: &str, count: u64) {
    let series = format!("sidecache_client_rejections_total{{reason=\"{reason}\"}}");
    eventually(
        lazy_message(|| format!("{count} {reason} rejections")),
        Duration::from_secs(2),
        async || proxy.metric(&series).await == count,
    )
    .await;
}

fn head_of_size(path: &str, size: usize) -> Vec<u8> {
    let start = format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\nx-pad: ");
    let end = "\r\n\r\n";
    let pad = size - start.len() - end.len();
    format!("{start}{}{end}", "a".repeat(pad)).into_bytes()
}

/// A GET of `path` with `count` header fields in all (`host` and
/// `connection: close` included).
fn head_with_fields(path: &str, count: usize) -> Vec<u8> {
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n");
    for i in 2..count {
        head.push_str(&format!("x-field-{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Reads until the peer closes the connection (or resets it): everything it sent.
async fn read_to_close(reader: &mut OwnedReadHalf) -> String {
    let mut received = Vec::new();
    let mut buffer = [0; 16 * 1024];
    let read_all = async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read_all)
        .await
        .expect("the proxy closes the connection");
    String::from_utf8_lossy(&received).into_owned()
}

/// A new raw connection to `proxy`, split for reading and writing.
async fn connect(proxy: &Proxy) -> (OwnedReadHalf, OwnedWriteHalf) {
    TcpStream::connect(proxy.running.addr())
        .await
        .unwrap()
        .into_split()
}

/// Sends `request` on a new connection and returns everything the proxy
/// sent before it closed the connection. The request is written on a task
/// of its own: the proxy may answer and close before it has read it all.
async fn exchange(addr: SocketAddr, request: Vec<u8>) -> String {
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    // The write half is kept open (returned) until the answer is read:
    // closing it would tell the proxy the client left.
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let answer = read_to_close(&mut reader).await;
    drop(writing.await);
    answer
}

/// Reads one HTTP/1.1 response with a `Content-Length` from a kept-alive
/// connection: its status line and headers, and its body.
async fn read_response(reader: &mut OwnedReadHalf) -> (String, String) {
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = tokio::time::timeout(PATIENCE, reader.read(&mut buffer))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed before a response");
        received.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    while received.len() < head_end + length {
        let n = reader.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed mid-body");
        received.extend_from_slice(&buffer[..n]);
    }
    let body = String::from_utf8_lossy(&received[head_end..]).into_owned();
    (head, body)
}

/// A proxy whose first head must come within 200 ms and whose connections
/// idle out after 600 ms.
async fn short_timeouts(origin: &Origin) -> Proxy {
    ProxyConfig::new(origin)
        .server("header_read_timeout = \"200ms\"")
        .server("idle_timeout = \"600ms\"")
        .start()
        .await
}

/// Waits until the proxy closes `reader`'s connection, with nothing sent:
/// how long that took.
async fn closed_silently(reader: &mut OwnedReadHalf, since: Instant) -> Duration {
    let answer = read_to_close(reader).await;
    assert_eq!(answer, "", "closed without an answer");
    since.elapsed()
}

#[tokio::test]
async fn a_request_head_over_max_header_size_gets_431_and_the_connection_closes() {
    let origin = Origin::start().await;
    // The default bound: 64 KiB.
    let proxy = ProxyConfig::new(&origin).start().await;
    let addr = proxy.running.addr();

    let at_limit = exchange(addr, head_of_size("/h/at", 64 * 1024)).await;
    assert!(at_limit.starts_with("HTTP/1.1 200 OK\r\n"), "{at_limit}");
    assert_eq!(origin.hits("/h/at"), 1);
    // One byte more, and a head the size the issue measured (200 KB): both
    // are refused with an empty 431, and the connection closes.
    for size in [64 * 1024 + 1, 200_000] {
        let over = exchange(addr, head_of_size("/h/over", size)).await;
        assert!(
            over.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{size}: {over}"
        );
        assert!(over.ends_with("\r\n\r\n"), "no body: {over}");
    }
    assert_eq!(origin.hits("/h/over"), 0);
    rejected(&proxy, "head-too-large", 2).await;
    // A head that does not parse is refused by hyper with 400, and counted.
    let malformed = exchange(addr, b"GET /h/bad HTTP/1.1\r\nno colon\r\n\r\n".to_vec()).await;
    assert!(malformed.starts_with("HTTP/1.1 400 "), "{malformed}");
    rejected(&proxy, "malformed", 1).await;

    // The admin port has the same bounds.
    let admin = exchange(proxy.running.admin_addr(), head_of_size("/healthz", 70_000)).await;
    assert!(admin.starts_with("HTTP/1.1 431 "), "{admin}");
    let healthy = exchange(proxy.running.admin_addr(), head_of_size("/healthz", 1000)).await;
    assert!(healthy.starts_with("HTTP/1.1 200 "), "{healthy}");
}

#[tokio::test]
async fn a_smaller_max_header_size_is_exact_too() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .server("max_header_size = \"2KiB\"")
        .start()
        .await;
    let addr = proxy.running.addr();
    let fits = exchange(addr, head_of_size("/h/small", 2048)).await;
    assert!(fits.starts_with("HTTP/1.1 200 "), "{fits}");
    let over = exchange(addr, head_of_size("/h/small", 2049)).await;
    assert!(over.starts_with("HTTP/1.1 431 "), "{over}");
    assert!(
        over.to_ascii_lowercase().contains("connection: close\r\n"),
        "{over}"
    );
    assert_eq!(origin.hits("/h/small"), 1);
}

#[tokio::test]
async fn more_header_fields_than_max_headers_get_431() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin).start().await;
    let addr = proxy.running.addr();
    // The default: 100 fields. The proxy adds four (Via, X-Forwarded-For,
    // -Proto, -Host), which the test origin, hyper with the same default,
    // counts too: so 96 fields are served, and 100 pass the proxy (its
    // answer carries a Cache-Status) but not the origin.
    let served = exchange(addr, head_with_fields("/h/fields", 96)).await;
    assert!(served.starts_with("HTTP/1.1 200 "), "{served}");
    let hundred = exchange(addr, head_with_fields("/h/fields", 100)).await;
    assert!(
        hundred.contains("cache-status: sidecache; fwd=bypass\r\n"),
        "{hundred}"
    );
    let more = exchange(addr, head_with_fields("/h/fields", 101)).await;
    assert!(
        more.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{more}"
    );
    rejected(&proxy, "head-too-large", 1).await;
    assert!(
        !more.contains("cache-status"),
        "refused by the proxy: {more}"
    );
    assert_eq!(origin.hits("/h/fields"), 1);

    let proxy = ProxyConfig::new(&origin)
        .server("max_headers = 20")
        .start()
        .await;
    let addr = proxy.running.addr();
    let twenty = exchange(addr, head_with_fields("/h/twenty", 20)).await;
    assert!(twenty.starts_with("HTTP/1.1 200 "), "{twenty}");
    let more = exchange(addr, head_with_fields("/h/twenty", 21)).await;
    assert!(more.starts_with("HTTP/1.1 431 "), "{more}");
}

#[tokio::test]
async fn a_client_trickling_its_head_is_dropped_after_the_header_read_timeout_while_others_are_served()
 {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .server("header_read_timeout = \"300ms\"")
        .start()
        .await;
    let addr = proxy.running.addr();

    let connected = Instant::now();
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    // A field every 50 ms, the head never finished.
    let trickle = tokio::spawn(async move {
        writer
            .write_all(b"GET /s/slow HTTP/1.1\r\nhost: a\r\n")
            .await
            .unwrap();
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if writer
                .write_all(format!("x-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
        writer
    });
    // Meanwhile other clients are served as usual, on new connections and
    // on one kept alive.
    let served = async {
        for i in 0..6 {
            let answer = proxy.get(&format!("/s/normal/{i}")).await;
            assert_eq!(answer.status, 200);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (dropped_after, ()) = tokio::join!(closed_silently(&mut reader, connected), served);
    assert!(
        dropped_after >= Duration::from_millis(280) && dropped_after < Duration::from_millis(1500),
        "dropped after {dropped_after:?}"
    );
    trickle.abort();
    assert_eq!(origin.hits("/s/slow"), 0);
    rejected(&proxy, "header-timeout", 1).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let origin = Origin::start().await;
    let proxy = short_timeouts(&origin).await;
    let (mut reader, mut writer) = connect(&proxy).await;
    let request = b"GET /i/kept HTTP/1.1\r\nhost: a\r\n\r\n";
    writer.write_all(request).await.unwrap();
    let (head, body) = read_response(&mut reader).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, "/i/kept #1");
    // Longer than the header read timeout, within the idle timeout: the
    // connection is still there, and its idle time starts again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    writer.write_all(request).await.unwrap();
    let (head, body) = read_response(&mut reader).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, "/i/kept #2");
    // Then nothing: closed, without a word, once it has idled that long.
    let idle_since = Instant::now();
    let closed_after = closed_silently(&mut reader, idle_since).await;
    assert!(
        closed_after >= Duration::from_millis(550) && closed_after < Duration::from_millis(2000),
        "closed after {closed_after:?}"
    );
    rejected(&proxy, "idle-timeout", 1).await;
    drop(writer);
}

#[tokio::test]
async fn a_later_request_head_trickled_after_idling_is_cut_at_the_idle_timeout() {
    let origin = Origin::start().await;
    let proxy = short_timeouts(&origin).await;
    let (mut reader, mut writer) = connect(&proxy).await;
    writer
        .write_all(b"GET /i/first HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut reader).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    // The next head, a byte every 50 ms: never complete within the timeout.
    let idle_since = Instant::now();
    let trickle = tokio::spawn(async move {
        for byte in b"GET /i/second HTTP/1.1\r\nx-slow: ".iter().cycle() {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let closed_after = closed_silently(&mut reader, idle_since).await;
    assert!(
        closed_after >= Duration::from_millis(550) && closed_after < Duration::from_millis(2000),
        "closed after {closed_after:?}"
    );
    trickle.abort();
    assert_eq!(origin.hits("/i/second"), 0);
}

#[tokio::test]
async fn an_h2_connection_with_no_open_stream_is_closed_after_the_idle_timeout() {
    use h2_frames::*;
    let origin = Origin::start().await;
    let proxy = short_timeouts(&origin).await;
    let (mut reader, mut writer) = connect(&proxy).await;
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_STREAM_AND_HEADERS, 1, &get("/i/h2")));
    writer.write_all(&out).await.unwrap();
    origin.wait_for_hits("/i/h2", 1).await;
    let served = Instant::now();
    // Whatever the proxy sends (settings, the response, no GOAWAY needed),
    // the connection ends once it has been idle for the timeout.
    let mut buffer = [0; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the idle h2 connection was not closed"),
        }
    }
    let closed_after = served.elapsed();
    assert!(
        closed_after >= Duration::from_millis(500) && closed_after < Duration::from_millis(2000),
        "closed after {closed_after:?}"
    );
    drop(writer);
}

/// An h2c client speaking raw frames.
mod h2_frames {
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;
    pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const REFUSED_STREAM: u32 = 0x7;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// One frame: its 9-byte header, then `payload`.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = length[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    }

    /// A GET of `path` as an HPACK block: static-table `:method GET` and
    /// `:scheme http`, literal `:path` and `:authority` (never Huffman).
    pub fn get(path: &str) -> Vec<u8> {
        let mut block = vec![0x82, 0x86];
        for (name_index, value) in [(0x04, path), (0x01, "a")] {
            block.push(name_index);
            block.push(u8::try_from(value.len()).unwrap());
            block.extend(value.as_bytes());
        }
        block
    }
}

#[tokio::test]
async fn h2_streams_beyond_max_concurrent_streams_are_refused() {
    use h2_frames::*;
    let origin = Origin::start().await;
    origin.on("/c/slow", Reply::ok().delay(Duration::from_millis(800)));
    let proxy = ProxyConfig::new(&origin)
        .server("h2_max_concurrent_streams = 2")
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.running.addr()).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for id in [1, 3, 5] {
        out.extend(frame(HEADERS, END_STREAM_AND_HEADERS, id, &get("/c/slow")));
    }
    stream.write_all(&out).await.unwrap();

    // Read frames until the third stream is refused.
    let mut advertised = None;
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    let refused = loop {
        if received.len() >= 9 {
            let length = usize::from(received[0]) << 16
                | usize::from(received[1]) << 8
                | usize::from(received[2]);
            if received.len() >= 9 + length {
                let frame: Vec<u8> = received.drain(..9 + length).collect();
                let (kind, flags) = (frame[3], frame[4]);
                let id = u32::from_be_bytes(frame[5..9].try_into().unwrap()) & 0x7fff_ffff;
                let payload = &frame[9..];
                if kind == SETTINGS && flags == 0 {
                    for setting in payload.chunks(6) {
                        if u16::from_be_bytes([setting[0], setting[1]])
                            == SETTINGS_MAX_CONCURRENT_STREAMS
                        {
                            advertised =
                                Some(u32::from_be_bytes(setting[2..6].try_into().unwrap()));
                        }
                    }
                }
                if kind == RST_STREAM {
                    break (id, u32::from_be_bytes(payload.try_into().unwrap()));
                }
                continue;
            }
        }
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
            .await
            .expect("frames")
            .unwrap();
        assert!(n > 0, "the proxy closed the connection");
        received.extend_from_slice(&buffer[..n]);
    };
    assert_eq!(advertised, Some(2), "SETTINGS_MAX_CONCURRENT_STREAMS");
    assert_eq!(refused, (5, REFUSED_STREAM));
    // The two streams within the limit go to the origin.
    origin.wait_for_hits("/c/slow", 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(origin.hits("/c/slow"), 2);
}

/// An h2c GET with `headers`, through the proxy: the status it got, or the error.
async fn h2_get(proxy: &Proxy, path: &str, headers: &[(String, String)]) -> Result<u16, String> {
    let client: LegacyClient<HttpConnector, Empty<Bytes>> =
        LegacyClient::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let mut request = Request::get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let sent = client.request(request.body(Empty::new()).unwrap());
    match tokio::time::timeout(PATIENCE, sent)
        .await
        .expect("an answer")
    {
        Ok(response) => {
            assert_eq!(response.version(), http::Version::HTTP_2);
            Ok(response.status().as_u16())
        }
        Err(error) => Err(format!("{error:?}")),
    }
}

#[tokio::test]
async fn h2_header_lists_over_the_limits_get_431() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .server("max_header_size = \"16KiB\"")
        .server("max_headers = 20")
        .start()
        .await;
    let field = |size: usize| vec![("x-pad".to_owned(), "a".repeat(size))];
    assert_eq!(h2_get(&proxy, "/g/fits", &field(12 * 1024)).await, Ok(200));
    // Over the header list size (h2 counts 32 bytes more per field).
    assert_eq!(h2_get(&proxy, "/g/large", &field(17 * 1024)).await, Ok(431));
    // Far over it (beyond what h2 decodes to answer), the connection goes.
    let refused = h2_get(&proxy, "/g/huge", &field(100 * 1024)).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("GoAway") && e.contains("ENHANCE_YOUR_CALM")),
        "{refused:?}"
    );
    // Over the field count.
    let many: Vec<_> = (0..25)
        .map(|i| (format!("x-f{i}"), "1".to_owned()))
        .collect();
    assert_eq!(h2_get(&proxy, "/g/many", &many).await, Ok(431));
    assert_eq!(origin.hits("/g/fits"), 1);
    let refused = ["/g/large", "/g/huge", "/g/many"].map(|path| origin.hits(path));
    assert_eq!(refused, [0, 0, 0]);
}
