//! `conclave bench delay-proxy`: a TCP proxy that holds every byte for a fixed time in each
//! direction, so that processes on one machine talk as if across a network with that much more
//! round trip (twice the delay). The benchmark puts one in front of a "remote" Redis, and one in
//! front of each Conclave node's peer port so that the nodes sit on different hosts.
//!
//! Bytes are delayed, not throttled: each direction reads as fast as the sender writes and
//! writes each chunk once its time has come, in order. Threads and `std::thread::sleep` rather
//! than async timers, whose millisecond granularity would round a half-millisecond delay up.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct ProxyOptions {
    /// Where to accept connections.
    #[arg(long)]
    pub listen: String,
    /// Where to forward them.
    #[arg(long)]
    pub upstream: String,
    /// Delay in each direction, in milliseconds (the round trip grows by twice this).
    #[arg(long)]
    pub delay_ms: f64,
}

/// Serves until the process is stopped.
pub fn serve(options: &ProxyOptions) -> std::io::Result<()> {
    let listener = TcpListener::bind(&options.listen)?;
    let delay = Duration::from_secs_f64(options.delay_ms.max(0.0) / 1000.0);
    eprintln!(
        "delay-proxy: {} -> {}, {:.2} ms each way",
        options.listen, options.upstream, options.delay_ms
    );
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let upstream = options.upstream.clone();
        std::thread::spawn(move || {
            let Ok(server) = TcpStream::connect(&upstream) else {
                let _ = client.shutdown(Shutdown::Both);
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (Ok(client_reader), Ok(server_reader)) = (client.try_clone(), server.try_clone())
            else {
                return;
            };
            std::thread::spawn(move || pump(client_reader, server, delay));
            pump(server_reader, client, delay);
        });
    }
    Ok(())
}

/// Copies `from` to `to`, each chunk `delay` after it was read. Chunks whose time has come
/// together go out in one write, so that the proxy costs few system calls under load.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (chunks, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut next = due.recv().ok();
        while let Some((at, bytes)) = next.take() {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            out.extend_from_slice(&bytes);
            // Whatever else is due by now joins this write.
            while let Ok((at, bytes)) = due.try_recv() {
                if at > Instant::now() {
                    next = Some((at, bytes));
                    break;
                }
                out.extend_from_slice(&bytes);
            }
            if to.write_all(&out).is_err() {
                break;
            }
            out.clear();
            if next.is_none() {
                next = due.recv().ok();
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if chunks
                    .send((Instant::now() + delay, buffer[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(chunks);
    let _ = writer.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind the proxy: a round trip takes at least twice the delay, and the
    /// bytes come back whole and in order.
    #[test]
    fn a_round_trip_through_the_proxy_takes_twice_the_delay() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = echo.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in echo.incoming() {
                let mut stream = stream.unwrap();
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buffer) {
                        if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = ProxyOptions {
            listen: format!("127.0.0.1:{port}"),
            upstream,
            delay_ms: 20.0,
        };
        std::thread::spawn(move || serve(&options).unwrap());
        let mut client = loop {
            if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
                break c;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let started = Instant::now();
        client.write_all(b"hello through the proxy").unwrap();
        let mut back = vec![0u8; 23];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello through the proxy");
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "{:?}",
            started.elapsed()
        );
    }
}
