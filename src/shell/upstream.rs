//! One task per upstream MQTT session: TCP to the broker, CONNECT first, then packets both
//! ways. The broker keep-alive (PINGREQ) is this task's business, never the device's.
//!
//! Owns the socket and its read buffer; knows nothing of devices. Reports every packet and
//! the end of the connection to the driver. Must never act on a packet for a device: that is
//! the core's decision.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::ReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tracing::debug;

use super::event::Event;
use crate::core::SessionId;
use crate::mqtt;

/// Largest packet accepted from the broker.
const MAX_BROKER_PACKET: usize = 1 << 20;

pub struct SessionParams {
    pub session: SessionId,
    pub broker: SocketAddr,
    pub connect: mqtt::Connect,
    pub connect_timeout: Duration,
    /// The previous session task with the same ClientId: it finishes (its DISCONNECT written,
    /// its socket closed) before this one connects, so the broker never sees the two overlap
    /// (an overlap is a takeover, and some brokers publish the old session's will then).
    pub after: Option<JoinHandle<()>>,
}

/// Longest wait for the previous session with the same ClientId to close.
const PREVIOUS_SESSION_WAIT: Duration = Duration::from_secs(3);

/// Longest wait, after our side is closed, for the broker to close its side.
const BROKER_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Runs until the broker closes, an error occurs, or `commands` is closed (then pending
/// packets are flushed and the socket shut down).
pub async fn run(
    p: SessionParams,
    mut commands: mpsc::Receiver<mqtt::Packet>,
    events: mpsc::Sender<Event>,
) {
    let session = p.session;
    if let Err(reason) = drive(p, &mut commands, &events).await {
        debug!(session = session.0, %reason, "upstream session ended");
    }
    let _ = events.send(Event::UpstreamClosed { session }).await;
}

async fn drive(
    p: SessionParams,
    commands: &mut mpsc::Receiver<mqtt::Packet>,
    events: &mpsc::Sender<Event>,
) -> Result<(), String> {
    if let Some(previous) = p.after {
        let _ = timeout(PREVIOUS_SESSION_WAIT, previous).await;
    }
    let keep_alive = Duration::from_secs(u64::from(p.connect.keep_alive));
    let mut stream = timeout(p.connect_timeout, TcpStream::connect(p.broker))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.split();
    let mut out = BytesMut::with_capacity(128);
    mqtt::Packet::Connect(Box::new(p.connect))
        .encode(&mut out)
        .map_err(|e| format!("encode CONNECT: {e}"))?;
    wr.write_all(&out).await.map_err(|e| e.to_string())?;
    out.clear();

    // Small to start: most sessions carry little; the buffer grows for a large packet.
    let mut inbuf = BytesMut::with_capacity(256);
    let mut last_write = Instant::now();
    let mut last_read = Instant::now();
    // Half the keep-alive leaves room for a PINGRESP before the broker's 1.5x deadline.
    let ping_every = if keep_alive.is_zero() {
        Duration::from_secs(3600)
    } else {
        keep_alive / 2
    };
    loop {
        let ping_at = last_write + ping_every;
        tokio::select! {
            cmd = commands.recv() => {
                let Some(packet) = cmd else {
                    // The driver let go of this session: flush and close, then wait for the
                    // broker to close its side too.
                    let _ = wr.shutdown().await;
                    await_broker_close(&mut rd, &mut inbuf).await;
                    return Ok(());
                };
                encode_into(&packet, &mut out)?;
                // Batch what is already queued into one write.
                while out.len() < 64 * 1024 {
                    match commands.try_recv() {
                        Ok(p) => encode_into(&p, &mut out)?,
                        Err(_) => break,
                    }
                }
                wr.write_all(&out).await.map_err(|e| e.to_string())?;
                out.clear();
                last_write = Instant::now();
            }
            n = rd.read_buf(&mut inbuf) => {
                let n = n.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("broker closed the connection".into());
                }
                last_read = Instant::now();
                while let Some(packet) = mqtt::decode(&mut inbuf, MAX_BROKER_PACKET).map_err(|e| e.to_string())? {
                    if packet == mqtt::Packet::PingResp {
                        continue; // our own keep-alive; the core never sees it
                    }
                    if events.send(Event::Upstream { session: p.session, packet }).await.is_err() {
                        return Ok(());
                    }
                }
            }
            _ = tokio::time::sleep_until(ping_at) => {
                if !keep_alive.is_zero() && last_read.elapsed() > keep_alive + keep_alive / 2 {
                    return Err("broker silent beyond keep-alive".into());
                }
                encode_into(&mqtt::Packet::PingReq, &mut out)?;
                wr.write_all(&out).await.map_err(|e| e.to_string())?;
                out.clear();
                last_write = Instant::now();
            }
        }
    }
}

/// After our DISCONNECT (if any) and FIN, reads until the broker closes the connection,
/// discarding what it still sends (the core has already let go of this session).
///
/// The broker reads a connection in order, so its close proves it has seen everything we
/// sent, DISCONNECT included: from then on the session's will is settled (discarded after a
/// DISCONNECT, published otherwise). Only then may a session with the same ClientId connect
/// (the next task waits for this one): a CONNECT that arrives earlier is a takeover, and a
/// broker may handle the takeover before the DISCONNECT still waiting in the old socket and
/// publish the old will (rmqtt does: its session loop picks between the kick and the socket
/// at random). Bounded by [`BROKER_CLOSE_WAIT`] against a broker that never closes.
async fn await_broker_close(rd: &mut ReadHalf<'_>, inbuf: &mut BytesMut) {
    let drain = async {
        loop {
            inbuf.clear();
            match rd.read_buf(inbuf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = timeout(BROKER_CLOSE_WAIT, drain).await;
}

fn encode_into(p: &mqtt::Packet, out: &mut BytesMut) -> Result<(), String> {
    p.encode(out).map_err(|e| format!("encode: {e}"))
}
