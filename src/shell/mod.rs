//! The tokio shell.
//!
//! PLACEHOLDER until the real shell (driver task, transports, upstream sessions) lands: it binds
//! the configured UDP sockets so the configuration can be tried end to end, says where traffic
//! would go, and waits for ctrl-c. It reads nothing from the sockets.

use tokio::net::UdpSocket;

use crate::config::Config;

/// Binds every `transports.udp[].bind`, then waits for ctrl-c.
pub async fn run(config: Config) -> std::io::Result<()> {
    // Keep the sockets open until shutdown so the ports stay taken, as they will be later.
    let mut sockets = Vec::with_capacity(config.transports.udp.len());
    for transport in &config.transports.udp {
        let socket = UdpSocket::bind(transport.bind).await.map_err(|err| {
            std::io::Error::new(err.kind(), format!("binding UDP {}: {err}", transport.bind))
        })?;
        tracing::info!(configured = %transport.bind, bound = %socket.local_addr()?, "UDP transport bound");
        sockets.push(socket);
    }
    tracing::info!(
        broker_mode = ?config.broker.mode,
        "gateway core is not wired yet: datagrams are not read; device sessions would go to the broker at {}",
        config.broker_address(),
    );
    tokio::signal::ctrl_c().await?;
    tracing::info!("ctrl-c received, shutting down");
    drop(sockets);
    Ok(())
}
