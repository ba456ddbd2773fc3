//! Serial transport: one task per `transports.serial[]` entry. The task opens the port, feeds
//! what it reads through the port's framing decoder (`transport::serial`) to the driver as
//! [`Event::Frame`]s, writes the frames the driver queues on its bounded channel, and reopens
//! the port with back-off (1 s doubling to 30 s) when it disappears (USB radio unplugged).
//!
//! Owns the port, the decoder and, for XBee, the bounded 64-bit -> 16-bit address book used for
//! replies. Must never hold protocol state: a device behind the port is the core's business.
//! Malformed input is dropped by the decoder, counted, and logged here at debug.

use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_serial::{SerialPortBuilderExt, SerialStream};
use tracing::{debug, info, warn};

use super::event::Event;
use crate::config::{SerialFlowControl, SerialFraming, SerialParity, SerialTransport};
use crate::core::{DeviceAddr, PeerAddr, TransportId};
use crate::transport::serial::{self as framing, xbee, Counters, Decoder, Destination, Framing};

/// First wait before reopening a lost port.
const REOPEN_INITIAL: Duration = Duration::from_secs(1);
/// Longest wait between reopen attempts.
const REOPEN_MAX: Duration = Duration::from_secs(30);
/// Octets asked for per read.
const READ_CHUNK: usize = 512;

/// A frame for the port's task to send.
#[derive(Debug)]
pub enum SerialOut {
    /// To one peer: its link address (`PeerAddr::Link`; empty on a point-to-point line).
    To { link: Bytes, frame: Bytes },
    /// To everyone on the link.
    Broadcast { frame: Bytes },
}

/// What a port's task needs.
pub struct PortParams {
    pub transport: TransportId,
    pub config: SerialTransport,
    pub max_frame_size: usize,
    /// Bound of the XBee address book.
    pub max_peers: usize,
}

/// The framing codec's parameters for a configured port.
pub fn framing_of(config: &SerialTransport) -> Framing {
    match config.framing {
        SerialFraming::Raw => Framing::Raw,
        SerialFraming::Slip => Framing::Slip,
        SerialFraming::Xbee => Framing::Xbee {
            api_mode: if config.xbee_api_mode == 2 {
                xbee::ApiMode::Escaped
            } else {
                xbee::ApiMode::Unescaped
            },
        },
    }
}

/// Opens the port with the configured line settings.
pub fn open(config: &SerialTransport) -> Result<SerialStream, tokio_serial::Error> {
    use tokio_serial::{DataBits, FlowControl, Parity, StopBits};
    let data_bits = match config.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = match config.parity {
        SerialParity::None => Parity::None,
        SerialParity::Even => Parity::Even,
        SerialParity::Odd => Parity::Odd,
    };
    let stop_bits = match config.stop_bits {
        2 => StopBits::Two,
        _ => StopBits::One,
    };
    let flow_control = match config.flow_control {
        SerialFlowControl::None => FlowControl::None,
        SerialFlowControl::Software => FlowControl::Software,
        SerialFlowControl::Hardware => FlowControl::Hardware,
    };
    tokio_serial::new(config.path.to_string_lossy(), config.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(flow_control)
        .open_native_async()
}

/// Why serving an open port stopped.
enum Ended {
    Shutdown,
    Lost(String),
}

/// The port's task. `first` is the port opened at start, if that worked.
pub async fn run(
    params: PortParams,
    first: Option<SerialStream>,
    mut outgoing: mpsc::Receiver<SerialOut>,
    events: mpsc::Sender<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let framing = framing_of(&params.config);
    let mut port = Port {
        transport: params.transport,
        path: params.config.path.clone(),
        framing,
        frame_timeout: params.config.frame_timeout,
        decoder: Decoder::new(framing, params.max_frame_size),
        book: xbee::AddressBook::new(params.max_peers),
        reported: Counters::default(),
    };
    let mut stream = first;
    let mut backoff = REOPEN_INITIAL;
    loop {
        let s = match stream.take() {
            Some(s) => s,
            None => {
                // Wait, dropping what the driver wants sent: there is no line to send it on.
                let deadline = Instant::now() + backoff;
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep_until(deadline) => break,
                        out = outgoing.recv() => match out {
                            None => return,
                            Some(_) => debug!(path = %port.path.display(), "serial port closed; frame dropped"),
                        },
                    }
                }
                match open(&params.config) {
                    Ok(s) => {
                        info!(transport = port.transport.0, path = %port.path.display(), "serial port open");
                        s
                    }
                    Err(e) => {
                        backoff = (backoff * 2).min(REOPEN_MAX);
                        debug!(path = %port.path.display(), error = %e, retry_in = ?backoff, "serial port still cannot be opened");
                        continue;
                    }
                }
            }
        };
        port.decoder.reset_partial();
        match port.serve(s, &mut outgoing, &events, &mut shutdown).await {
            Ended::Shutdown => return,
            Ended::Lost(reason) => {
                warn!(path = %port.path.display(), %reason, "serial port lost; reopening with back-off");
                backoff = REOPEN_INITIAL;
            }
        }
    }
}

struct Port {
    transport: TransportId,
    path: PathBuf,
    framing: Framing,
    frame_timeout: Duration,
    decoder: Decoder,
    book: xbee::AddressBook,
    /// Counters as last logged.
    reported: Counters,
}

impl Port {
    async fn serve(
        &mut self,
        stream: SerialStream,
        outgoing: &mut mpsc::Receiver<SerialOut>,
        events: &mpsc::Sender<Event>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut out = BytesMut::new();
        loop {
            let partial = self.decoder.has_partial();
            tokio::select! {
                _ = shutdown.changed() => return Ended::Shutdown,
                read = reader.read(&mut buf) => match read {
                    Ok(0) => return Ended::Lost("end of file".into()),
                    Err(e) => return Ended::Lost(e.to_string()),
                    Ok(n) => {
                        self.decoder.push(buf.get(..n).unwrap_or_default());
                        if !self.deliver(events).await {
                            return Ended::Shutdown;
                        }
                    }
                },
                _ = tokio::time::sleep(self.frame_timeout), if partial => {
                    self.decoder.reset_partial();
                    self.report();
                }
                msg = outgoing.recv() => {
                    let Some(msg) = msg else { return Ended::Shutdown };
                    out.clear();
                    self.encode(&msg, &mut out);
                    if let Err(e) = writer.write_all(&out).await {
                        return Ended::Lost(e.to_string());
                    }
                }
            }
        }
    }

    /// Hands every complete frame to the driver; false when the driver is gone.
    async fn deliver(&mut self, events: &mpsc::Sender<Event>) -> bool {
        while let Some(inbound) = self.decoder.next_frame() {
            if let (Ok(addr64), Some(addr16)) =
                (<[u8; 8]>::try_from(&inbound.link[..]), inbound.short_addr)
            {
                self.book.learn(addr64, addr16);
            }
            let from = DeviceAddr {
                transport: self.transport,
                peer: PeerAddr::Link(inbound.link),
                wireless_node_id: None,
            };
            let ev = Event::Frame {
                from,
                frame: inbound.frame,
            };
            if events.send(ev).await.is_err() {
                return false;
            }
        }
        self.report();
        true
    }

    /// Logs at debug when the decoder dropped something since the last report.
    fn report(&mut self) {
        let now = self.decoder.counters();
        let dropped = |c: &Counters| {
            c.skipped_octets + c.bad_checksum + c.oversized + c.truncated + c.ignored
        };
        if dropped(&now) != dropped(&self.reported) {
            debug!(path = %self.path.display(), counters = ?now, "serial input dropped");
        }
        self.reported = now;
    }

    fn encode(&self, msg: &SerialOut, out: &mut BytesMut) {
        match msg {
            SerialOut::To { link, frame } => {
                let to = Destination::Unicast {
                    link,
                    short_addr: self.book.lookup(link),
                };
                framing::encode(self.framing, &to, frame, out)
            }
            SerialOut::Broadcast { frame } => {
                framing::encode(self.framing, &Destination::Broadcast, frame, out)
            }
        }
    }
}
