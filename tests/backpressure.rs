//! A broker that stops reading: the driver writes a session's packets itself while the socket
//! takes them and hands the rest to the session's task (`shell/outbox.rs`). Two guarantees:
//! nothing is lost or reordered across that hand-over, and the wait is bounded
//! (`limits.channel_depth` packets) after which only that session is closed.
//!
//! The broker here is a bare TCP listener in the test with a small receive buffer, which
//! answers CONNECT and then reads when the test says so.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use mqttsn_gateway::codec::{QoS, TopicRef};
use mqttsn_gateway::mqtt;

/// A listener whose accepted sockets have a 4 KiB receive buffer, so the gateway's writes stop
/// being taken after a few packets while nobody reads.
fn small_buffer_listener() -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(16).unwrap();
    s.into()
}

/// Reads one MQTT packet from a blocking socket.
fn read_packet(sock: &mut TcpStream, buf: &mut BytesMut) -> Option<mqtt::Packet> {
    loop {
        if let Some(p) = mqtt::decode(buf, 1 << 20).unwrap() {
            return Some(p);
        }
        let mut chunk = [0u8; 65536];
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The gateway's other sections: `limits.channel_depth` (and more `limits` lines), the status
/// session off.
fn sections(channel_depth: usize, limits: &str) -> String {
    format!("limits:\n  channel_depth: {channel_depth}\n{limits}status:\n  enabled: false\n")
}

/// Accepts connections; answers each CONNECT with CONNACK Accepted and hands the connection
/// (and what was read past the CONNECT) to the test.
fn fake_broker(listener: TcpListener) -> mpsc::Receiver<(TcpStream, BytesMut)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut sock) = conn else { return };
            let mut buf = BytesMut::new();
            let Some(mqtt::Packet::Connect(_)) = read_packet(&mut sock, &mut buf) else {
                continue;
            };
            let mut out = BytesMut::new();
            mqtt::Packet::ConnAck {
                session_present: false,
                code: mqtt::ConnectReturnCode::Accepted,
            }
            .encode(&mut out)
            .unwrap();
            sock.write_all(&out).unwrap();
            if tx.send((sock, buf)).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stalls_then_reads_gets_every_packet_in_order() {
    let listener = small_buffer_listener();
    let port = listener.local_addr().unwrap().port();
    let sessions = fake_broker(listener);
    let dir = TempDir::new("backpressure-order");
    let (_gw, gw_addr) =
        LoggedGateway::upstream(GATEWAY_BIN.as_ref(), &dir.0, port, "", &sections(4096, ""));

    let dev = SnClient::new(gw_addr).await;
    // A short topic name: no REGISTER needed.
    dev.connect("stall", true, 60).await;
    let (mut sock, mut buf) = next_session(&sessions).await;
    // ~400 KiB while the broker reads nothing: far more than its 4 KiB window and the
    // gateway's send buffer take, so most of it waits in the outbox for the session task.
    let n = 1000u32;
    let payload = vec![b'p'; 400];
    for seq in 0..n {
        let mut data = seq.to_be_bytes().to_vec();
        data.extend_from_slice(&payload);
        dev.publish(TopicRef::Short(*b"st"), QoS::AtMostOnce, false, 0, &data)
            .await;
        if seq % 50 == 49 {
            // Paced a little so the gateway's UDP socket never overflows.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = tokio::task::spawn_blocking(move || {
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut seqs = Vec::new();
        while seqs.len() < n as usize {
            match read_packet(&mut sock, &mut buf) {
                Some(mqtt::Packet::Publish(p)) => {
                    assert_eq!(p.topic, "st");
                    seqs.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
                }
                Some(_) => {}
                None => break,
            }
        }
        seqs
    })
    .await
    .unwrap();
    assert_eq!(got.len(), n as usize, "every PUBLISH reached the broker");
    assert!(
        got.iter().copied().eq(0..n),
        "in the order the device sent them"
    );
    let log = log_of(&dir);
    assert!(!log.contains("backlog full"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_reads_costs_only_its_session() {
    let listener = small_buffer_listener();
    let port = listener.local_addr().unwrap().port();
    let sessions = fake_broker(listener);
    let dir = TempDir::new("backpressure-bound");
    let (mut gw, gw_addr) =
        LoggedGateway::upstream(GATEWAY_BIN.as_ref(), &dir.0, port, "", &sections(32, ""));

    let stuck = SnClient::new(gw_addr).await;
    stuck.connect("stuck", true, 60).await;
    let (stalled_sock, _) = next_session(&sessions).await;
    // Up to 40 MiB: past the gateway's send buffer (which the kernel may grow to 4 MiB) and
    // 32 waiting packets; stops as soon as the session is given up.
    let payload = vec![b'q'; 1000];
    for seq in 0..40_000u32 {
        stuck
            .publish(TopicRef::Short(*b"st"), QoS::AtMostOnce, false, 0, &payload)
            .await;
        if seq % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if log_of(&dir).contains("backlog full") {
                break;
            }
        }
    }
    gw.wait_log("upstream session backlog full; closing it", &dir.0);
    drop(stalled_sock);

    // Another device is served as before: its session connects and its PUBLISH arrives.
    let other = SnClient::new(gw_addr).await;
    other.connect("other", true, 60).await;
    let (mut sock, mut buf) = next_session(&sessions).await;
    other
        .publish(TopicRef::Short(*b"ok"), QoS::AtMostOnce, false, 0, b"fine")
        .await;
    let p = tokio::task::spawn_blocking(move || {
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        loop {
            match read_packet(&mut sock, &mut buf) {
                Some(mqtt::Packet::Publish(p)) => return Some(p),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .unwrap()
    .expect("the other device's PUBLISH reached the broker");
    assert_eq!(&p.payload[..], b"fine");
}

/// The next connection the fake broker accepted (its CONNECT answered).
async fn next_session(sessions: &mpsc::Receiver<(TcpStream, BytesMut)>) -> (TcpStream, BytesMut) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match sessions.try_recv() {
            Ok(s) => return s,
            Err(mpsc::TryRecvError::Empty) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("no upstream session reached the fake broker: {e}"),
        }
    }
}

fn log_of(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.0.join("stderr.log")).unwrap_or_default()
}

/// Aggregating mode: the shared session carries every device, so it waits for
/// `limits.shared_session_backlog` packets, not a device's `channel_depth`: a stalled broker
/// first fills the kernel's buffers, then that backlog, and only then is the session closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_session_waits_for_its_own_backlog_not_a_devices() {
    // With the backlog at the device's bound (32) the same load closes it: the load is past
    // what the kernel's buffers take by more than that.
    for (backlog, closed) in [(1_000_000usize, false), (32, true)] {
        let listener = small_buffer_listener();
        let port = listener.local_addr().unwrap().port();
        let sessions = fake_broker(listener);
        let dir = TempDir::new("backpressure-shared");
        let (gw, gw_addr) = LoggedGateway::upstream(
            GATEWAY_BIN.as_ref(),
            &dir.0,
            port,
            "    sessions: aggregating\n",
            &sections(32, &format!("  shared_session_backlog: {backlog}\n")),
        );
        let (_shared, _) = next_session(&sessions).await;
        let dev = SnClient::new(gw_addr).await;
        dev.connect("many", true, 60).await;
        let payload = vec![b's'; 1000];
        // ~3 MiB toward a broker that reads nothing: far below a million packets.
        for seq in 0..3_000u32 {
            dev.publish(TopicRef::Short(*b"sh"), QoS::AtMostOnce, false, 0, &payload)
                .await;
            if seq % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let log = log_of(&dir);
        assert_eq!(
            log.contains("backlog full"),
            closed,
            "shared_session_backlog {backlog}: {log}"
        );
        drop(gw);
    }
}
