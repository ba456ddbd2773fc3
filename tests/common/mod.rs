//! Shared parts of the integration tests: a broker on a free port (a real mosquitto, or the
//! gateway's embedded broker — see [`Backend`]), the gateway started in-process on UDP port 0,
//! a raw MQTT-SN client over a real UDP socket, and a small MQTT 3.1.1 client over TCP.
#![allow(dead_code, unused_macros)]

/// The broker of a scenario, or return (skipped loudly) when it cannot run here.
macro_rules! broker_or_skip {
    ($backend:expr) => {
        match start_backend($backend).await {
            Some(b) => b,
            None => return,
        }
    };
}

/// Runs each named `async fn(Backend)` scenario twice, as `NAME::mosquitto` and
/// `NAME::embedded`. Multi-threaded, since a scenario may block on a command-line client while
/// the embedded broker runs in-process.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mosquitto() {
                super::$name(Backend::Mosquitto).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(Backend::Embedded).await
            }
        }
    )*};
}

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
    bin: PathBuf,
}

impl Mosquitto {
    /// Starts mosquitto, or returns None (with a loud message) when it is not installed and
    /// this is not CI. In CI a missing mosquitto fails the test.
    pub fn start() -> Option<Mosquitto> {
        Self::start_with(false)
    }

    /// Like [`Mosquitto::start`], with mosquitto's own persistence on (sessions and queued
    /// messages survive [`Mosquitto::stop`] + [`Mosquitto::resume`]).
    pub fn start_persistent() -> Option<Mosquitto> {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Option<Mosquitto> {
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
            let persistence = if persistent {
                // Started as root, mosquitto would drop to its own user and could not write
                // the test's directory; `user` is ignored when not started as root.
                format!(
                    "persistence true\npersistence_location {}/\nuser root\n",
                    dir.display()
                )
            } else {
                "persistence false\n".to_string()
            };
            std::fs::write(
                &conf,
                format!("listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}"),
            )
            .unwrap();
            let mut child = spawn_mosquitto(&bin, &conf);
            if wait_listening(port, &mut child) {
                return Some(Mosquitto {
                    port,
                    child,
                    dir,
                    bin,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("mosquitto did not start");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Stops the broker with SIGTERM (it saves its persistence file) and waits for it.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the same configuration.
    pub fn resume(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        self.child = spawn_mosquitto(&self.bin, &conf);
        assert!(
            wait_listening(self.port, &mut self.child),
            "mosquitto restarts"
        );
    }
}

fn spawn_mosquitto(bin: &std::path::Path, conf: &std::path::Path) -> Child {
    Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto")
}

/// True once `port` accepts connections; false when the process exited (port taken).
fn wait_listening(port: u16, child: &mut Child) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
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
                max_queued_messages: 1000,
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
    // Memory only unless a test asks for a store (see `with_store`).
    c.store.path = None;
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

    /// While awake: acknowledges every REGISTER and PUBLISH (full QoS handshake) until PINGRESP;
    /// returns the PUBLISHes in arrival order with their topic names (`known`: id -> name,
    /// extended by the REGISTERs seen).
    pub async fn drain_until_pingresp(
        &self,
        known: &mut std::collections::HashMap<u16, String>,
    ) -> Vec<(String, codec::Publish)> {
        let mut got = Vec::new();
        loop {
            match self.recv().await {
                Message::PingResp => return got,
                Message::Register(r) => {
                    known.insert(r.topic_id, r.topic_name.clone());
                    self.send(Message::Regack(codec::Regack {
                        topic_id: r.topic_id,
                        msg_id: r.msg_id,
                        return_code: codec::ReturnCode::Accepted,
                    }))
                    .await;
                }
                Message::Publish(p) => {
                    let codec::TopicRef::Id(id) = p.topic else {
                        panic!("unexpected topic {:?}", p.topic)
                    };
                    let name = known
                        .get(&id)
                        .cloned()
                        .expect("PUBLISH before its REGISTER");
                    match p.qos {
                        codec::QoS::AtLeastOnce => {
                            self.send(Message::Puback(codec::Puback {
                                topic_id: id,
                                msg_id: p.msg_id,
                                return_code: codec::ReturnCode::Accepted,
                            }))
                            .await
                        }
                        codec::QoS::ExactlyOnce => {
                            self.send(Message::Pubrec { msg_id: p.msg_id }).await;
                            assert_eq!(self.recv().await, Message::Pubrel { msg_id: p.msg_id });
                            self.send(Message::Pubcomp { msg_id: p.msg_id }).await;
                        }
                        _ => {}
                    }
                    got.push((name, p));
                }
                other => panic!("unexpected while awake: {other:?}"),
            }
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

    /// A client whose session (subscriptions, queued QoS 1/2) the broker keeps.
    pub async fn connect_persistent(broker: SocketAddr, client_id: &str) -> MqttClient {
        Self::connect_with(broker, client_id, false, None).await
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
        c.send(mqtt::Packet::Connect(Box::new(mqtt::Connect {
            client_id: client_id.into(),
            clean_session,
            keep_alive: 60,
            will: None,
            username: login.map(|(u, _)| u.into()),
            password: login.map(|(_, p)| Bytes::copy_from_slice(p.as_bytes())),
        })))
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

// ---------------------------------------------------------------- serial

use mqttsn_gateway::config::{SerialFraming, SerialTransport};
use mqttsn_gateway::transport::serial::{self as framing, xbee, Destination, Framing};
use tokio_serial::{SerialPortBuilderExt, SerialStream};

fn socat_binary() -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| PathBuf::from(dir).join("socat"))
        .find(|p| p.is_file())
}

/// A pseudo-terminal pair made by socat: the gateway opens `gateway_end`, the simulated
/// device (or radio) `device_end`. Killed on drop.
pub struct Socat {
    pub gateway_end: PathBuf,
    pub device_end: PathBuf,
    child: Option<Child>,
    dir: PathBuf,
}

impl Socat {
    /// Starts socat in a fresh directory, or returns None (loudly) when socat is missing and
    /// CI is unset. In CI a missing socat fails the test.
    pub fn start() -> Option<Socat> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        if socat_binary().is_none() {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "socat is not installed but CI is set: install it (apt-get install -y socat)"
                );
            }
            eprintln!("\n!!!!! SKIPPED: socat is not installed; apt-get install -y socat to run this test !!!!!\n");
            return None;
        }
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mqttsn-pty-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Socat {
            gateway_end: dir.join("gateway"),
            device_end: dir.join("device"),
            child: None,
            dir,
        };
        s.replug();
        Some(s)
    }

    /// Unplugs: kills socat, so both ends close and the links go away.
    pub fn unplug(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.gateway_end);
        let _ = std::fs::remove_file(&self.device_end);
    }

    /// (Re)starts socat on the same link paths and waits until both exist.
    pub fn replug(&mut self) {
        self.unplug();
        let bin = socat_binary().expect("socat");
        let end = |p: &PathBuf| format!("pty,raw,echo=0,link={}", p.display());
        let child = Command::new(bin)
            .arg("-d")
            .arg("-d")
            .arg(end(&self.gateway_end))
            .arg(end(&self.device_end))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn socat");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while !(self.gateway_end.exists() && self.device_end.exists()) {
            assert!(std::time::Instant::now() < deadline, "socat made no ptys");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        self.unplug();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test configuration with no UDP and one serial port at `path`.
pub fn serial_config(broker_port: u16, path: &std::path::Path, framing: SerialFraming) -> Config {
    let mut c = test_config(broker_port);
    c.transports.udp.clear();
    let mut port = SerialTransport::new(path);
    port.framing = framing;
    port.frame_timeout = Duration::from_millis(100);
    c.transports.serial = vec![port];
    c
}

/// The far side of a serial line: a device (raw, SLIP) or the local XBee radio that remote
/// radios talk through.
pub struct SerialLine {
    stream: SerialStream,
    framing: Framing,
    decoder: framing::Decoder,
    radio: xbee::TransmitDecoder,
}

/// What the gateway sent on a line: the XBee destination (64-bit, 16-bit), if any, and the
/// MQTT-SN frame.
#[derive(Debug)]
pub struct LineFrame {
    pub dest: Option<([u8; 8], u16)>,
    pub frame: Bytes,
}

impl SerialLine {
    pub fn open(path: &std::path::Path, framing: Framing) -> SerialLine {
        let stream = tokio_serial::new(path.to_string_lossy(), 9600)
            .open_native_async()
            .expect("open the device end of the pty");
        let mode = match framing {
            Framing::Xbee { api_mode } => api_mode,
            _ => xbee::ApiMode::Unescaped,
        };
        SerialLine {
            stream,
            framing,
            decoder: framing::Decoder::new(framing, 4096),
            radio: xbee::TransmitDecoder::new(mode, 4096),
        }
    }

    /// Sends `frame` framed; for XBee as a Receive Packet from `from` (64-bit, 16-bit).
    pub async fn send_frame(&mut self, from: ([u8; 8], u16), frame: &[u8]) {
        let mut out = BytesMut::new();
        match self.framing {
            Framing::Xbee { api_mode } => {
                xbee::encode_receive_packet(api_mode, from.0, from.1, frame, &mut out)
            }
            f => framing::encode(f, &Destination::Broadcast, frame, &mut out),
        }
        self.send_bytes(&out).await;
    }

    pub async fn send(&mut self, from: ([u8; 8], u16), m: impl Into<codec::Frame>) {
        let bytes = m.into().to_bytes().unwrap();
        self.send_frame(from, &bytes).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    fn next(&mut self) -> Option<LineFrame> {
        match self.framing {
            Framing::Xbee { .. } => self.radio.next_request().map(|r| LineFrame {
                dest: Some((r.addr64, r.addr16)),
                frame: r.data,
            }),
            _ => self.decoder.next_frame().map(|i| LineFrame {
                dest: None,
                frame: i.frame,
            }),
        }
    }

    pub async fn try_recv_frame(&mut self, wait: Duration) -> Option<LineFrame> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = [0u8; 512];
        loop {
            if let Some(f) = self.next() {
                return Some(f);
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .ok()?
                .expect("read from the pty");
            match self.framing {
                Framing::Xbee { .. } => self.radio.push(&buf[..n]),
                _ => self.decoder.push(&buf[..n]),
            }
        }
    }

    /// The next message from the gateway with its XBee destination; panics after [`WAIT`].
    pub async fn recv(&mut self) -> (Option<([u8; 8], u16)>, Message) {
        let f = self
            .try_recv_frame(WAIT)
            .await
            .expect("a frame from the gateway");
        (f.dest, codec::decode_message(f.frame).expect("valid frame"))
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("mqttsn-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The gateway binary as a separate process (so it can be killed with SIGKILL), with its
/// config in a file; UDP on a free loopback port read back from its log.
pub struct GatewayProcess {
    child: Child,
    pub udp: SocketAddr,
}

impl GatewayProcess {
    pub fn start(config: &Config, dir: &std::path::Path) -> GatewayProcess {
        use std::io::{BufRead, BufReader};
        let file = dir.join("gateway.yaml");
        std::fs::write(&file, config.to_yaml()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_mqttsn-gateway"))
            .args(["run", "-c"])
            .arg(&file)
            .args([
                "--log",
                if std::env::var_os("MQTTSN_TEST_LOG").is_some() {
                    "debug"
                } else {
                    "info"
                },
            ])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the gateway");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("MQTTSN_TEST_LOG").is_some() {
                    eprintln!("[gateway] {line}");
                }
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + WAIT;
        let udp = loop {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(wait) else {
                break None;
            };
            if line.contains("UDP transport listening") {
                break line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .and_then(|a| a.parse().ok());
            }
        };
        match udp {
            Some(udp) => GatewayProcess { child, udp },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the gateway did not log its UDP address");
            }
        }
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
