//! Serial lines for the tests: a socat pseudo-terminal pair, the gateway config for it, and the
//! device (or radio) end that frames and de-frames MQTT-SN as the gateway's serial transport does.
//! Owns: the pty pair and the device end of the line.
//! Never: a real serial device, or framing code of its own (it uses the gateway's).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqttsn_gateway::codec::{self, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{test_config, WAIT};
use mqttsn_gateway::config::Config;

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
