//! Shared parts of the integration tests: a broker on a free port (a real mosquitto, or the
//! gateway's embedded broker — see [`Backend`]), the gateway started in-process on UDP port 0,
//! a raw MQTT-SN client over a real UDP socket, and a small MQTT 3.1.1 client over TCP.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqttsn_gateway::codec::{self, Message};
use mqttsn_gateway::config::{BrokerMode, Config, PredefinedTopic, UdpTransport};
use mqttsn_gateway::mqtt;
use mqttsn_gateway::shell::{self, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

fn mosquitto_binary() -> Option<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin"])
    {
        let p = PathBuf::from(dir).join("mosquitto");
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// A mosquitto broker on a free loopback port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Mosquitto {
    /// Starts mosquitto, or returns None (with a loud message) when it is not installed and
    /// this is not CI. In CI a missing mosquitto fails the test.
    pub fn start() -> Option<Mosquitto> {
        let Some(bin) = mosquitto_binary() else {
            if std::env::var_os("CI").is_some() {
                panic!("mosquitto is not installed but CI is set: install it (apt-get install -y mosquitto)");
            }
            eprintln!("\n!!!!! SKIPPED: mosquitto is not installed; apt-get install -y mosquitto to run this test !!!!!\n");
            return None;
        };
        for _attempt in 0..5 {
            let port = free_tcp_port();
            let dir =
                std::env::temp_dir().join(format!("mqttsn-mosq-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
            )
            .unwrap();
            let mut child = Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn mosquitto");
            let deadline = std::time::Instant::now() + WAIT;
            while std::time::Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Mosquitto { port, child, dir });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("mosquitto did not start");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Which broker the end-to-end scenarios run against. The gateway reaches either one through
/// the same TCP client path (upstream mode to the test broker's port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A real mosquitto process.
    Mosquitto,
    /// The gateway's own embedded broker (`mqttsn_gateway::broker`), in this process.
    Embedded,
}

/// A broker for one test, stopped on drop.
pub struct TestBroker {
    pub port: u16,
    _inner: TestBrokerInner,
}

enum TestBrokerInner {
    Mosquitto(Mosquitto),
    Embedded(EmbeddedTestBroker),
}

impl TestBroker {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// The embedded broker on a free loopback port with its own data directory.
pub struct EmbeddedTestBroker {
    pub handle: Option<mqttsn_gateway::broker::BrokerHandle>,
    pub data_dir: PathBuf,
}

impl Drop for EmbeddedTestBroker {
    fn drop(&mut self) {
        let _ = self.handle.take();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A fresh directory under the system temp dir, unique to this process and call.
pub fn temp_dir(what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mqttsn-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the broker of `backend`, or returns None (with a loud message) when it is not
/// available: mosquitto not installed outside CI, or a build without `embedded-broker`.
pub async fn start_backend(backend: Backend) -> Option<TestBroker> {
    match backend {
        Backend::Mosquitto => Mosquitto::start().map(|m| TestBroker {
            port: m.port,
            _inner: TestBrokerInner::Mosquitto(m),
        }),
        Backend::Embedded => {
            if !mqttsn_gateway::broker::BUILT_IN {
                eprintln!("\n!!!!! SKIPPED: built without the embedded-broker feature !!!!!\n");
                return None;
            }
            let data_dir = temp_dir("broker");
            let settings = mqttsn_gateway::broker::EmbeddedSettings {
                bind: "127.0.0.1:0".parse().unwrap(),
                data_dir: data_dir.clone(),
                username: None,
                password: None,
                allow_anonymous: false,
            };
            let handle = mqttsn_gateway::broker::start(&settings)
                .await
                .expect("embedded broker starts");
            Some(TestBroker {
                port: handle.local_addr().port(),
                _inner: TestBrokerInner::Embedded(EmbeddedTestBroker {
                    handle: Some(handle),
                    data_dir,
                }),
            })
        }
    }
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway configuration for tests: UDP on a free loopback port, upstream to `broker_port`,
/// short timers.
pub fn test_config(broker_port: u16) -> Config {
    let mut c = Config::default();
    c.transports.udp = vec![UdpTransport {
        bind: "127.0.0.1:0".parse().unwrap(),
    }];
    c.broker.mode = BrokerMode::Upstream;
    c.broker.upstream.host = "127.0.0.1".into();
    c.broker.upstream.port = broker_port;
    c.broker.upstream.connect_timeout = Duration::from_secs(3);
    c.timers.retry_interval = Duration::from_millis(300);
    c.predefined_topics = vec![PredefinedTopic {
        id: 7,
        topic: "sensors/predefined".into(),
    }];
    c
}

pub async fn start_gateway(config: &Config) -> (Running, SocketAddr) {
    let running = shell::start(config).await.expect("gateway starts");
    let addr = running.udp_addrs[0];
    (running, addr)
}

/// A raw MQTT-SN device over a real UDP socket.
pub struct SnClient {
    pub sock: UdpSocket,
    pub gateway: SocketAddr,
}

impl SnClient {
    pub async fn new(gateway: SocketAddr) -> SnClient {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        SnClient { sock, gateway }
    }

    pub async fn send(&self, m: Message) {
        let bytes = m.to_bytes().unwrap();
        self.sock.send_to(&bytes, self.gateway).await.unwrap();
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.gateway).await.unwrap();
    }

    /// The next message from the gateway; panics after [`WAIT`].
    pub async fn recv(&self) -> Message {
        self.try_recv(WAIT)
            .await
            .expect("a message from the gateway")
    }

    pub async fn try_recv(&self, wait: Duration) -> Option<Message> {
        let mut buf = vec![0u8; 2048];
        let (n, _) = timeout(wait, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(
            codec::decode_message(Bytes::copy_from_slice(&buf[..n]))
                .expect("gateway sends valid frames"),
        )
    }

    /// CONNECT (no will) and expect CONNACK accepted.
    pub async fn connect(&self, client_id: &str, clean: bool, duration: u16) {
        self.send(Message::Connect(codec::Connect {
            will: false,
            clean_session: clean,
            protocol_id: codec::PROTOCOL_ID_V1_2,
            duration,
            client_id: client_id.into(),
        }))
        .await;
        assert_eq!(
            self.recv().await,
            Message::Connack {
                return_code: codec::ReturnCode::Accepted
            }
        );
    }

    /// CONNECT with a will, answering the prompts; expects CONNACK accepted.
    pub async fn connect_with_will(
        &self,
        client_id: &str,
        duration: u16,
        topic: &str,
        msg: &[u8],
        qos: codec::QoS,
        retain: bool,
    ) {
        self.send(Message::Connect(codec::Connect {
            will: true,
            clean_session: true,
            protocol_id: codec::PROTOCOL_ID_V1_2,
            duration,
            client_id: client_id.into(),
        }))
        .await;
        assert_eq!(self.recv().await, Message::WillTopicReq);
        self.send(Message::WillTopic(Some(codec::WillTopic {
            qos,
            retain,
            topic: topic.into(),
        })))
        .await;
        assert_eq!(self.recv().await, Message::WillMsgReq);
        self.send(Message::WillMsg {
            msg: Bytes::copy_from_slice(msg),
        })
        .await;
        assert_eq!(
            self.recv().await,
            Message::Connack {
                return_code: codec::ReturnCode::Accepted
            }
        );
    }

    /// REGISTER `name`; returns the topic id.
    pub async fn register(&self, name: &str, msg_id: u16) -> u16 {
        self.send(Message::Register(codec::Register {
            topic_id: 0,
            msg_id,
            topic_name: name.into(),
        }))
        .await;
        match self.recv().await {
            Message::Regack(r) => {
                assert_eq!(r.msg_id, msg_id);
                assert_eq!(r.return_code, codec::ReturnCode::Accepted);
                r.topic_id
            }
            other => panic!("expected REGACK, got {other:?}"),
        }
    }

    /// SUBSCRIBE and return the SUBACK.
    pub async fn subscribe(
        &self,
        topic: codec::TopicFilter,
        qos: codec::QoS,
        msg_id: u16,
    ) -> codec::Suback {
        self.send(Message::Subscribe(codec::Subscribe {
            dup: false,
            qos,
            msg_id,
            topic,
        }))
        .await;
        match self.recv().await {
            Message::Suback(s) => {
                assert_eq!(s.msg_id, msg_id);
                s
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn publish(
        &self,
        topic: codec::TopicRef,
        qos: codec::QoS,
        retain: bool,
        msg_id: u16,
        data: &[u8],
    ) {
        self.send(Message::Publish(codec::Publish {
            dup: false,
            qos,
            retain,
            topic,
            msg_id,
            data: Bytes::copy_from_slice(data),
        }))
        .await;
    }
}

/// A plain MQTT 3.1.1 client over TCP, using the crate's own packet codec.
pub struct MqttClient {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u16,
}

impl MqttClient {
    pub async fn connect(broker: SocketAddr, client_id: &str) -> MqttClient {
        Self::connect_with(broker, client_id, true, None).await
    }

    /// CONNECT with the given clean-session flag and optional (username, password); expects
    /// it accepted.
    pub async fn connect_with(
        broker: SocketAddr,
        client_id: &str,
        clean_session: bool,
        login: Option<(&str, &str)>,
    ) -> MqttClient {
        let (c, code) = Self::try_connect(broker, client_id, clean_session, login).await;
        assert_eq!(code, mqtt::ConnectReturnCode::Accepted);
        c
    }

    /// CONNECT and return the CONNACK's return code.
    pub async fn try_connect(
        broker: SocketAddr,
        client_id: &str,
        clean_session: bool,
        login: Option<(&str, &str)>,
    ) -> (MqttClient, mqtt::ConnectReturnCode) {
        let stream = TcpStream::connect(broker).await.unwrap();
        let mut c = MqttClient {
            stream,
            buf: BytesMut::new(),
            next_id: 0,
        };
        c.send(mqtt::Packet::Connect(mqtt::Connect {
            client_id: client_id.into(),
            clean_session,
            keep_alive: 60,
            will: None,
            username: login.map(|(u, _)| u.into()),
            password: login.map(|(_, p)| Bytes::copy_from_slice(p.as_bytes())),
        }))
        .await;
        match c.recv().await {
            mqtt::Packet::ConnAck { code, .. } => (c, code),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, p: mqtt::Packet) {
        let bytes = p.to_bytes().unwrap();
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// The next packet; panics after [`WAIT`].
    pub async fn recv(&mut self) -> mqtt::Packet {
        self.try_recv(WAIT).await.expect("a packet from the broker")
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<mqtt::Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = mqtt::decode(&mut self.buf, 1 << 20).unwrap() {
                return Some(p);
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .ok()?
                .unwrap();
            assert!(n > 0, "broker closed the connection");
        }
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    pub async fn subscribe(&mut self, filter: &str, qos: mqtt::QoS) {
        let packet_id = self.id();
        self.send(mqtt::Packet::Subscribe {
            packet_id,
            filters: vec![(filter.into(), qos)],
        })
        .await;
        loop {
            match self.recv().await {
                mqtt::Packet::SubAck { packet_id: id, .. } if id == packet_id => return,
                _ => continue,
            }
        }
    }

    /// Publishes and completes the QoS handshake.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: mqtt::QoS, retain: bool) {
        let packet_id = (qos != mqtt::QoS::AtMostOnce).then(|| self.id());
        self.send(mqtt::Packet::Publish(mqtt::Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id,
            payload: Bytes::copy_from_slice(payload),
        }))
        .await;
        match qos {
            mqtt::QoS::AtMostOnce => {}
            mqtt::QoS::AtLeastOnce => loop {
                if let mqtt::Packet::PubAck { .. } = self.recv().await {
                    break;
                }
            },
            mqtt::QoS::ExactlyOnce => {
                loop {
                    if let mqtt::Packet::PubRec { packet_id } = self.recv().await {
                        self.send(mqtt::Packet::PubRel { packet_id }).await;
                        break;
                    }
                }
                loop {
                    if let mqtt::Packet::PubComp { .. } = self.recv().await {
                        break;
                    }
                }
            }
        }
    }

    /// The next PUBLISH delivered to this client (acknowledged as its QoS requires).
    pub async fn next_publish(&mut self, wait: Duration) -> Option<mqtt::Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_recv(left).await? {
                mqtt::Packet::Publish(p) => {
                    match (p.qos, p.packet_id) {
                        (mqtt::QoS::AtLeastOnce, Some(packet_id)) => {
                            self.send(mqtt::Packet::PubAck { packet_id }).await
                        }
                        (mqtt::QoS::ExactlyOnce, Some(packet_id)) => {
                            self.send(mqtt::Packet::PubRec { packet_id }).await
                        }
                        _ => {}
                    }
                    return Some(p);
                }
                mqtt::Packet::PubRel { packet_id } => {
                    self.send(mqtt::Packet::PubComp { packet_id }).await
                }
                _ => {}
            }
        }
    }
}
