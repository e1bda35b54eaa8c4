//! A loopback TCP proxy in front of one engine, which the suite can cut
//! (every open connection reset, new ones reset at once) or stall (bytes
//! held, nothing forwarded either way: what a hung peer looks like from the
//! client, without touching the engine itself).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Open,
    /// Connections reset, new ones reset on accept.
    Cut,
    /// Connections held open, nothing forwarded.
    Stalled,
}

pub struct Proxy {
    pub address: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Connections reset on accept while cut.
    refused: Arc<AtomicU64>,
    accept: tokio::task::AbortHandle,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Open);
        let refused = Arc::new(AtomicU64::new(0));
        let (modes, refused2) = (mode.clone(), refused.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let watch = modes.subscribe();
                if *watch.borrow() == Mode::Cut {
                    refused2.fetch_add(1, Ordering::Relaxed);
                    reset(client);
                    continue;
                }
                tokio::spawn(relay(client, upstream.clone(), watch));
            }
        })
        .abort_handle();
        Ok(Proxy {
            address,
            mode,
            refused,
            accept,
        })
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Connections reset on accept while cut, so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set(Mode::Cut);
    }
}

/// Closes with a RST, as a crashed peer or a cut link does.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn relay(client: TcpStream, upstream: String, mut mode: watch::Receiver<Mode>) {
    // A connection made while stalled waits, as a SYN to a hung host would.
    if mode.wait_for(|m| *m != Mode::Stalled).await.is_err() || *mode.borrow() == Mode::Cut {
        return reset(client);
    }
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return reset(client);
    };
    // Every close of a relayed connection is then a reset: a cut drops both
    // sides mid-stream, as a broken link would.
    for stream in [&client, &server] {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_zero_linger();
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut cut = mode.clone();
    tokio::select! {
        _ = async {
            tokio::join!(
                pump(client_read, server_write, mode.clone()),
                pump(server_read, client_write, mode.clone())
            )
        } => {}
        _ = cut.wait_for(|m| *m == Mode::Cut) => {}
    }
}

/// Copies one direction until either side closes; holds bytes while stalled.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if mode.wait_for(|m| *m == Mode::Open).await.is_err() {
            break;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An upstream that echoes every byte back.
    async fn echo() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        address
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.ok()?;
        let mut reply = [0u8; 4];
        match tokio::time::timeout(within, stream.read_exact(&mut reply)).await {
            Ok(Ok(_)) => Some(reply.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn forwards_when_open_holds_when_stalled_resets_when_cut() {
        let proxy = Proxy::start(echo().await).await.expect("proxy");
        let mut client = TcpStream::connect(proxy.address).await.expect("connects");
        let second = Duration::from_secs(1);
        assert_eq!(
            round_trip(&mut client, second).await.as_deref(),
            Some(&b"ping"[..])
        );

        proxy.set(Mode::Stalled);
        assert_eq!(
            round_trip(&mut client, Duration::from_millis(300)).await,
            None
        );
        proxy.set(Mode::Open);
        // What was held is delivered once open again.
        let mut held = [0u8; 4];
        tokio::time::timeout(second, client.read_exact(&mut held))
            .await
            .expect("delivered after the stall")
            .expect("read");
        assert_eq!(&held, b"ping");

        proxy.set(Mode::Cut);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            round_trip(&mut client, second).await,
            None,
            "cut connection"
        );
        let mut fresh = TcpStream::connect(proxy.address)
            .await
            .expect("accepted, then reset");
        assert_eq!(
            round_trip(&mut fresh, second).await,
            None,
            "refused while cut"
        );
        assert!(proxy.refused() >= 1);

        proxy.set(Mode::Open);
        let mut again = TcpStream::connect(proxy.address).await.expect("connects");
        assert_eq!(
            round_trip(&mut again, second).await.as_deref(),
            Some(&b"ping"[..])
        );
    }
}
