//! The accept loop every listener of the proxy runs (worker, client and admin ports).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Accepts TCP connections on `listener` until `shutdown` fires, running `on_conn` for each in
/// its own task (TCP_NODELAY set). Then, with `drain`, waits for the open connections to end;
/// without, aborts them. `port` names the listener in logs.
pub(crate) async fn accept_connections<F, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    port: &'static str,
    drain: bool,
    mut on_conn: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(on_conn(tcp, addr));
                }
                Err(e) => {
                    tracing::warn!(error = %e, port, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
        while conns.try_join_next().is_some() {}
    }
    if drain {
        while conns.join_next().await.is_some() {}
    }
}
