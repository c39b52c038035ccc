//! The cheapest proxy this machine can run: bytes copied between each client connection and an origin connection of its own, no HTTP at all; `bench/compare.sh` measures it beside nginx to show what the kernel and the runtime leave for any proxy.
//!
//! `cargo run --release --example relay_floor -- LISTEN ORIGIN [WORKERS]`.
//! Built like sidecache's server (a single-threaded runtime per worker, each
//! with its own `SO_REUSEPORT` listener), so that the difference between the
//! two is the HTTP work alone. With keep-alive clients, one origin
//! connection per client connection carries every request that client
//! sends, as a pooled upstream connection would: this is an HTTP/1 proxy
//! for a benchmark's clients, and nothing else (it never parses a request).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(origin)) = (args.next(), args.next()) else {
        eprintln!("usage: relay_floor LISTEN ORIGIN [WORKERS]");
        std::process::exit(64);
    };
    let parse = |address: String| {
        address.parse::<SocketAddr>().unwrap_or_else(|error| {
            eprintln!("{address}: {error}");
            std::process::exit(64);
        })
    };
    let (listen, origin) = (parse(listen), parse(origin));
    let workers = args.next().and_then(|n| n.parse().ok()).unwrap_or(2);
    let threads: Vec<_> = (0..workers)
        .map(|_| std::thread::spawn(move || worker(listen, origin)))
        .collect();
    for thread in threads {
        thread.join().unwrap_or(Ok(()))?;
    }
    Ok(())
}

fn worker(listen: SocketAddr, origin: SocketAddr) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseport(true)?;
        socket.bind(listen)?;
        let listener: TcpListener = socket.listen(1024)?;
        loop {
            let (client, _) = listener.accept().await?;
            tokio::spawn(relay(client, origin));
        }
    })
}

async fn relay(mut client: TcpStream, origin: SocketAddr) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut upstream = TcpStream::connect(origin).await?;
    upstream.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
