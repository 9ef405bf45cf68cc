//! The floor under any proxy built like keygate, for the load benchmark's comparisons: a
//! relay that does nothing but move bytes, on the same runtime layout as keygate (one
//! single-threaded Tokio runtime per worker thread) and the same two loopback hops.
//!
//! Each client connection gets one upstream connection of its own, for its whole life;
//! then, in a loop: one read from the client, one write of those bytes upstream, one read
//! of the upstream's answer, one write of it back. No HTTP parsing, no headers, no pool,
//! no timers: it is correct only for a client that sends one small request and waits for
//! its small response before the next (wrk against nginx `return 200`, as the benchmark
//! does), which is all it is for. What it costs per request is what the kernel (two TCP
//! hops on loopback, epoll) and the runtime cost any such proxy before it does any work
//! of its own; keygate's CPU per request minus this is what keygate itself spends.
//!
//! ```text
//! cargo build --release --locked --example relay_floor
//! target/release/examples/relay_floor LISTEN_PORT UPSTREAM_PORT [WORKERS]
//! ```
//! `benches/lean/ab.py --relay target/release/examples/relay_floor` runs it beside nginx
//! and keygate.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || std::io::Error::other("usage: relay_floor LISTEN_PORT UPSTREAM_PORT [WORKERS]");
    let listen: u16 = args.get(1).and_then(|p| p.parse().ok()).ok_or_else(usage)?;
    let upstream: u16 = args.get(2).and_then(|p| p.parse().ok()).ok_or_else(usage)?;
    let workers: usize = args.get(3).map_or(Some(2), |w| w.parse().ok()).ok_or_else(usage)?;
    let listen = SocketAddr::from(([127, 0, 0, 1], listen));
    let upstream = SocketAddr::from(([127, 0, 0, 1], upstream));
    let threads: Vec<std::thread::JoinHandle<std::io::Result<()>>> = (0..workers)
        .map(|index| {
            std::thread::Builder::new().name(format!("relay-worker-{index}")).spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(serve(listen, upstream))
            })
        })
        .collect::<std::io::Result<_>>()?;
    for thread in threads {
        thread.join().map_err(|_| std::io::Error::other("a worker panicked"))??;
    }
    Ok(())
}

/// One worker: its own listening socket on the shared port (SO_REUSEPORT: the kernel
/// spreads connections over the workers, as nginx's `reuseport` does).
async fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(listen)?;
    let listener = socket.listen(1024)?;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = relay(client, upstream).await;
        });
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut origin = TcpStream::connect(upstream).await?;
    origin.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        origin.write_all(&buf[..n]).await?;
        let m = origin.read(&mut buf).await?;
        if m == 0 {
            return Ok(());
        }
        client.write_all(&buf[..m]).await?;
    }
}
