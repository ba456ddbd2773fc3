//! One task per upstream MQTT session: TCP (and TLS when configured) to the broker, CONNECT
//! first, then packets both ways. The broker keep-alive (PINGREQ) is this task's business,
//! never the device's.
//!
//! Owns the socket and its read buffer; knows nothing of devices. Reports every packet and
//! the end of the connection to the driver (with the reason when the connection could not be
//! made, which the driver logs through [`FailureLog`]). Must never act on a packet for a
//! device: that is the core's decision.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use super::event::Event;
use super::outbox::Outbox;
use crate::core::SessionId;
use crate::mqtt;

/// Largest packet accepted from the broker.
const MAX_BROKER_PACKET: usize = 1 << 20;

/// TLS toward the broker: the client config (built once at start) and the name its
/// certificate must carry.
#[derive(Clone)]
pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

pub struct SessionParams {
    pub session: SessionId,
    pub broker: SocketAddr,
    /// The local address to connect from (`broker.upstream.source_addresses`); `None`: the
    /// kernel picks.
    pub source: Option<IpAddr>,
    /// `None`: plain TCP.
    pub tls: Option<TlsTarget>,
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

/// Runs until the broker closes, an error occurs, or the driver closes `outbox` (then what
/// it holds is written and the socket shut down).
///
/// `p` is boxed before the session's state machine takes it: an `async fn` keeps each argument
/// twice in its state (as argument and as local), and the state is the task's size for its
/// whole life (see docs/benchmarks.md, scale).
pub fn run(
    p: SessionParams,
    outbox: Arc<Outbox>,
    events: mpsc::Sender<Event>,
) -> impl std::future::Future<Output = ()> + Send {
    session(Box::new(p), outbox, events)
}

async fn session(mut p: Box<SessionParams>, outbox: Arc<Outbox>, events: mpsc::Sender<Event>) {
    let session = p.session;
    let mut failure = None;
    if let Some(previous) = p.after.take() {
        let _ = timeout(PREVIOUS_SESSION_WAIT, previous).await;
    }
    // Whether the broker has said anything (its CONNACK comes first).
    let mut heard = false;
    let ended = match establish(&p).await {
        Err(reason) => {
            failure = Some(reason);
            Ok(())
        }
        Ok(Stream::Plain(s)) => {
            let (rd, wr) = s.into_split();
            let wr = Arc::new(wr);
            let direct = Some(wr.clone());
            drive(
                PlainConn { rd, wr },
                p,
                &outbox,
                direct,
                &events,
                &mut heard,
            )
            .await
        }
        // Boxed: the TLS session's state (~3.7 KB, the TLS stream inline) would otherwise size
        // every session's task, plain ones included (~1.5 KB); see docs/benchmarks.md, scale.
        Ok(Stream::Tls(s)) => Box::pin(drive(*s, p, &outbox, None, &events, &mut heard)).await,
    };
    // The driver's writes stop (it learns of the end from the event below).
    outbox.disconnect();
    match ended {
        // Refused before a CONNACK: with TLS 1.3 a broker that rejects the client
        // certificate says so (an alert) only after the handshake.
        Err(reason) if !heard => failure = Some(format!("before CONNACK: {reason}")),
        Err(reason) => debug!(session = session.0, %reason, "upstream session ended"),
        Ok(()) => {}
    }
    let _ = events
        .send(Event::UpstreamClosed { session, failure })
        .await;
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// TCP connect (from `p.source` when set; `TCP_NODELAY` on) and, with TLS, the handshake,
/// within the connect timeout.
/// The error is the reason, the same words for every session that fails the same way (so the
/// driver can count them as one).
async fn establish(p: &SessionParams) -> Result<Stream, String> {
    let connect = async {
        let stream = super::source::connect(p.broker, p.source).await?;
        let _ = stream.set_nodelay(true);
        match &p.tls {
            None => Ok(Stream::Plain(stream)),
            Some(t) => TlsConnector::from(t.config.clone())
                .connect(t.server_name.clone(), stream)
                .await
                .map(|s| Stream::Tls(Box::new(s)))
                .map_err(|e| format!("TLS handshake: {e}")),
        }
    };
    timeout(p.connect_timeout, connect)
        .await
        .map_err(|_| "connect timed out".to_string())?
}

/// `check --deep`: TCP (and TLS) to the broker, `connect`, and the broker's CONNACK code;
/// then DISCONNECT. The error is the reason, as a session would log it.
pub(super) async fn probe(
    broker: SocketAddr,
    source: Option<IpAddr>,
    tls: Option<TlsTarget>,
    connect: mqtt::Connect,
    connect_timeout: Duration,
) -> Result<mqtt::ConnectReturnCode, String> {
    let p = SessionParams {
        session: SessionId(0),
        broker,
        source,
        tls,
        connect,
        connect_timeout,
        after: None,
    };
    let connack = async {
        match establish(&p).await? {
            Stream::Plain(s) => connack(s, p.connect).await,
            Stream::Tls(s) => connack(*s, p.connect).await,
        }
    };
    timeout(connect_timeout, connack)
        .await
        .map_err(|_| "no CONNACK within broker.upstream.connect_timeout".to_string())?
}

async fn connack<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    connect: mqtt::Connect,
) -> Result<mqtt::ConnectReturnCode, String> {
    let mut out = BytesMut::with_capacity(128);
    encode_into(&mqtt::Packet::Connect(Box::new(connect)), &mut out)?;
    write_out(&mut stream, &mut out).await?;
    let mut inbuf = BytesMut::with_capacity(64);
    loop {
        let n = stream
            .read_buf(&mut inbuf)
            .await
            .map_err(|e| format!("before CONNACK: {e}"))?;
        if n == 0 {
            return Err("the broker closed the connection before its CONNACK".into());
        }
        if let Some(packet) =
            mqtt::decode(&mut inbuf, MAX_BROKER_PACKET).map_err(|e| e.to_string())?
        {
            let mqtt::Packet::ConnAck { code, .. } = packet else {
                return Err(format!("the broker answered CONNECT with {packet:?}"));
            };
            if code == mqtt::ConnectReturnCode::Accepted {
                encode_into(&mqtt::Packet::Disconnect, &mut out)?;
                let _ = write_out(&mut stream, &mut out).await;
                let _ = stream.shutdown().await;
            }
            return Ok(code);
        }
    }
}

/// The TCP socket under a session's stream, to switch it to quick ACKs after each read.
///
/// Why: a broker with Nagle on (mosquitto's default) holds a small packet (the PUBACK of a
/// device's PUBLISH) while an earlier segment on the same connection (the echo of that PUBLISH
/// to the device's own subscription) is unacknowledged; Linux delays our ACK up to 40 ms when
/// nothing goes back. TCP_QUICKACK after a read sends the ACK at once. It is not sticky (the
/// kernel may fall back to delayed ACKs), so it is set after every read that brought more than
/// answers to our own packets ([`answers_us`]): one setsockopt per such wake-up, not per packet.
trait QuickAck {
    fn quick_ack(&self);
}

impl QuickAck for TcpStream {
    fn quick_ack(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(self).set_tcp_quickack(true);
    }
}

impl QuickAck for tokio_rustls::client::TlsStream<TcpStream> {
    fn quick_ack(&self) {
        self.get_ref().0.quick_ack();
    }
}

impl QuickAck for PlainConn {
    fn quick_ack(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(self.rd.as_ref()).set_tcp_quickack(true);
    }
}

/// Whether `packet` only answers one of ours (so the broker sends nothing more until we
/// write again, and our next write carries the TCP ACK). After anything else (a PUBLISH, a
/// SUBACK that retained messages follow) something may wait behind it in the broker's Nagle
/// buffer, so the ACK goes at once. Skipping the quick ACK after plain acks saves a
/// `setsockopt` and an ACK segment per QoS 1/2 message.
fn answers_us(packet: &mqtt::Packet) -> bool {
    matches!(
        packet,
        mqtt::Packet::PubAck { .. }
            | mqtt::Packet::PubRec { .. }
            | mqtt::Packet::PubComp { .. }
            | mqtt::Packet::PingResp
    )
}

/// A plain connection whose writing side is shared with the driver, which writes to it
/// through the [`Outbox`] (`TcpStream::try_write` takes `&self`). Reads go through tokio's
/// own read half (which knows a short read drained the socket: no extra `recv` that finds
/// nothing); the task's writes await the shared socket's write readiness.
struct PlainConn {
    rd: OwnedReadHalf,
    wr: Arc<OwnedWriteHalf>,
}

impl AsyncRead for PlainConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

impl AsyncWrite for PlainConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let sock: &TcpStream = (*self.wr).as_ref();
        loop {
            ready!(sock.poll_write_ready(cx))?;
            match sock.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let sock: &TcpStream = (*self.wr).as_ref();
        Poll::Ready(socket2::SockRef::from(sock).shutdown(std::net::Shutdown::Write))
    }
}

/// The session over an established stream (plain or TLS: one instance per kind, no boxing
/// per packet). `direct`: the plain socket, handed to the outbox once the CONNECT is written.
async fn drive<S: AsyncRead + AsyncWrite + Unpin + QuickAck>(
    mut stream: S,
    p: Box<SessionParams>,
    outbox: &Outbox,
    direct: Option<Arc<OwnedWriteHalf>>,
    events: &mpsc::Sender<Event>,
    heard: &mut bool,
) -> Result<(), String> {
    let keep_alive = Duration::from_secs(u64::from(p.connect.keep_alive));
    let mut local = BytesMut::with_capacity(128);
    mqtt::Packet::Connect(Box::new(p.connect))
        .encode(&mut local)
        .map_err(|e| format!("encode CONNECT: {e}"))?;
    write_out(&mut stream, &mut local).await?;
    if let Some(sock) = direct {
        outbox.set_direct(sock);
    }

    // Small to start: most sessions carry little; the buffer grows for a large packet.
    let mut inbuf = BytesMut::with_capacity(256);
    let mut last_read = Instant::now();
    // Half the keep-alive leaves room for a PINGRESP before the broker's 1.5x deadline. A
    // fixed period (not "since the last write": the driver's writes are not seen here) costs
    // one small packet per period and one timer for the session's life, not one per packet.
    let ping_every = if keep_alive.is_zero() {
        Duration::from_secs(3600)
    } else {
        keep_alive / 2
    };
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // What the driver left (the socket was full, TLS, or queued before set-up), checked
        // every turn so a wake-up can never be missed.
        while outbox.take(&mut local) {
            write_out(&mut stream, &mut local).await?;
        }
        if outbox.is_closed() {
            // The driver let go of this session: close, then wait for the broker to close
            // its side too.
            outbox.disconnect();
            let _ = stream.shutdown().await;
            await_broker_close(&mut stream, &mut inbuf).await;
            return Ok(());
        }
        tokio::select! {
            _ = outbox.wait() => {}
            n = stream.read_buf(&mut inbuf) => {
                let n = n.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("broker closed the connection".into());
                }
                last_read = Instant::now();
                *heard = true;
                let mut quick_ack = false;
                while let Some(packet) = mqtt::decode(&mut inbuf, MAX_BROKER_PACKET).map_err(|e| e.to_string())? {
                    quick_ack |= !answers_us(&packet);
                    if packet == mqtt::Packet::PingResp {
                        continue; // our own keep-alive; the core never sees it
                    }
                    if events.send(Event::Upstream { session: p.session, packet }).await.is_err() {
                        return Ok(());
                    }
                }
                if quick_ack {
                    stream.quick_ack();
                }
            }
            _ = ping.tick() => {
                if !keep_alive.is_zero() && last_read.elapsed() > keep_alive + keep_alive / 2 {
                    return Err("broker silent beyond keep-alive".into());
                }
                // Behind whatever the driver queued; written at the top of the loop.
                outbox.push_own(&mqtt::Packet::PingReq);
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
async fn await_broker_close<S: AsyncRead + Unpin>(rd: &mut S, inbuf: &mut BytesMut) {
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

/// Writes `out` whole (and flushes: TLS buffers records) and clears it.
async fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
) -> Result<(), String> {
    stream.write_all(out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    out.clear();
    Ok(())
}

/// How often one reason for failing to reach the broker is logged.
pub(super) const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Distinct reasons remembered; a new one past this forgets the oldest.
const FAILURE_REASONS: usize = 32;

/// Failures to reach the broker (TCP connect, TLS handshake), logged at warn once per distinct
/// reason per [`FAILURE_LOG_EVERY`] with the count of the ones not logged since: when the
/// broker or its certificate is wrong every device fails at once, again at each retry.
/// Owned by the driver (one owner, no lock).
#[derive(Default)]
pub(super) struct FailureLog {
    /// reason -> (when it was last logged, failures since then not logged)
    reasons: HashMap<String, (Instant, u64)>,
}

impl FailureLog {
    /// Records a failure; logs it unless the same reason was logged less than
    /// [`FAILURE_LOG_EVERY`] ago. Returns whether it logged.
    ///
    /// Reasons that differ only in their numbers are one reason: rustls names the verification
    /// time in seconds ("certificate expired: verification time 1796178113"), which would
    /// otherwise make a new reason every second.
    pub(super) fn failed(&mut self, now: Instant, broker: SocketAddr, reason: &str) -> bool {
        let key = reason_key(reason);
        if let Some((logged, suppressed)) = self.reasons.get_mut(&key) {
            if now.duration_since(*logged) < FAILURE_LOG_EVERY {
                *suppressed += 1;
                return false;
            }
            let since = *suppressed;
            *logged = now;
            *suppressed = 0;
            warn!(%broker, reason, suppressed = since, "cannot reach the upstream broker ({since} more like it not logged in the last {}s)", FAILURE_LOG_EVERY.as_secs());
            return true;
        }
        if self.reasons.len() >= FAILURE_REASONS {
            if let Some(oldest) = self
                .reasons
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(r, _)| r.clone())
            {
                self.reasons.remove(&oldest);
            }
        }
        self.reasons.insert(key, (now, 0));
        warn!(%broker, reason, "cannot reach the upstream broker");
        true
    }
}

/// `reason` with every run of digits as one `#`.
fn reason_key(reason: &str) -> String {
    let mut key = String::with_capacity(reason.len());
    for c in reason.chars() {
        if c.is_ascii_digit() {
            if !key.ends_with('#') {
                key.push('#');
            }
        } else {
            key.push(c);
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_interval() {
        let mut log = FailureLog::default();
        let broker: SocketAddr = "127.0.0.1:8883".parse().unwrap();
        let t0 = Instant::now();
        assert!(log.failed(t0, broker, "TLS handshake: bad"));
        for i in 1..100 {
            assert!(!log.failed(
                t0 + Duration::from_millis(i * 50),
                broker,
                "TLS handshake: bad"
            ));
        }
        assert!(
            log.failed(t0, broker, "TCP connect: refused"),
            "another reason logs"
        );
        assert!(log.failed(t0 + FAILURE_LOG_EVERY, broker, "TLS handshake: bad"));
        assert_eq!(log.reasons["TLS handshake: bad"].1, 0);
    }

    #[test]
    fn reasons_that_differ_only_in_numbers_are_one() {
        let mut log = FailureLog::default();
        let broker: SocketAddr = "127.0.0.1:8883".parse().unwrap();
        let t0 = Instant::now();
        assert!(log.failed(
            t0,
            broker,
            "certificate expired: verification time 1796178113"
        ));
        assert!(!log.failed(
            t0 + Duration::from_secs(1),
            broker,
            "certificate expired: verification time 1796178114"
        ));
        assert!(log.failed(t0, broker, "TCP connect: refused"));
    }

    #[test]
    fn remembers_a_bounded_number_of_reasons() {
        let mut log = FailureLog::default();
        let broker: SocketAddr = "127.0.0.1:8883".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..(FAILURE_REASONS as u64 * 3) {
            log.failed(
                t0 + Duration::from_millis(i),
                broker,
                &format!("reason {i}"),
            );
        }
        assert!(log.reasons.len() <= FAILURE_REASONS);
    }
}
