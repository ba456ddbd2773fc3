//! The HTTP listener (`http.bind`): the status page (`/`), `/api/gateway`, `/api/devices`,
//! `/api/devices/{client_id}` and `/metrics`.
//!
//! HTTP/1.1 only, with hyper 1. Bounded: at most `http.max_connections` connections are served
//! at once (a further one waits in the kernel's backlog, no task is spawned for it), a request
//! head larger than [`MAX_HEAD`] is refused, the head must arrive within [`HEAD_TIMEOUT`] and a
//! connection lives at most [`CONNECTION_LIFETIME`], so a slow-loris holds a slot for seconds,
//! never piles up tasks. Request bodies are never read.
//!
//! Every answer comes from a [`Snapshot`] the driver builds on request (a [`StatusRequest`] on
//! its bounded event channel, the reply on a oneshot): nothing is done for this side unless
//! someone asks, and no lock is shared with the driver. The device list is cached for
//! [`DEVICES_TTL`] so many viewers cost the driver one snapshot a second at most.
//!
//! Owns the listener, the auth check and the routes; the JSON is `api.rs`, the Prometheus text
//! `metrics.rs`, the page `page.html`. Must never change the gateway's state.

mod api;
mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{debug, info, warn};

use super::event::Event;
use super::status::{Query, Snapshot, StatusRequest};
use crate::util::constant_time_eq;

/// Largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 16 * 1024;
/// The request head must be in within this time.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection (keep-alive included) is closed after this long.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// How long a request waits for the driver's snapshot.
const DRIVER_WAIT: Duration = Duration::from_secs(5);
/// How long a device list is served again before a new one is asked for.
const DEVICES_TTL: Duration = Duration::from_secs(1);

/// The login every request must carry (HTTP Basic).
pub struct Credentials {
    /// `Basic base64(username:password)`, the header value a client sends.
    expected: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(********)")
    }
}

impl Credentials {
    pub fn new(username: &str, password: &str) -> Self {
        let mut expected = b"Basic ".to_vec();
        expected.extend(base64(format!("{username}:{password}").as_bytes()).into_bytes());
        Credentials { expected }
    }

    /// Whether the `Authorization` header value logs in (compared in constant time).
    fn admits(&self, header: Option<&HeaderValue>) -> bool {
        let given = header.map_or(&b""[..], HeaderValue::as_bytes);
        // The scheme is case-insensitive (RFC 7235): compare it apart.
        let (scheme, rest) = given.split_at(given.len().min(6));
        scheme.eq_ignore_ascii_case(b"basic ") && constant_time_eq(rest, &self.expected[6..])
    }
}

/// Standard base64 with padding (RFC 4648), for the Basic credentials.
fn base64(input: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What the page and `/api/gateway` say about the gateway itself.
#[derive(Debug, Clone)]
pub struct GatewayInfo {
    pub version: &'static str,
    /// `embedded` or `upstream`.
    pub broker_mode: &'static str,
    /// The broker the device sessions connect to.
    pub broker: SocketAddr,
}

/// One wall-clock reading paired with one monotonic reading, taken at start: the core's
/// `Instant`s become wall-clock times through it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub wall: SystemTime,
    pub mono: Instant,
}

impl Clock {
    pub fn now() -> Self {
        Clock {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    /// The wall-clock time of `at`.
    pub fn wall_of(&self, at: Instant) -> SystemTime {
        if at >= self.mono {
            self.wall + (at - self.mono)
        } else {
            self.wall - (self.mono - at)
        }
    }
}

/// What the listener needs.
pub struct HttpParams {
    pub listener: TcpListener,
    pub auth: Option<Credentials>,
    pub max_connections: usize,
    pub events: mpsc::Sender<Event>,
    pub info: GatewayInfo,
    pub started: Clock,
    pub shutdown: watch::Receiver<bool>,
}

/// Shared by the connection tasks.
struct Shared {
    auth: Option<Credentials>,
    events: mpsc::Sender<Event>,
    info: GatewayInfo,
    started: Clock,
    /// The last device list and when it was taken (a std lock, never held across `.await`).
    devices: Mutex<Option<Arc<Snapshot>>>,
}

/// Serves until shutdown.
pub async fn serve(p: HttpParams) {
    let addr = p.listener.local_addr().ok();
    info!(addr = ?addr, auth = p.auth.is_some(), "status page and /metrics listening");
    let shared = Arc::new(Shared {
        auth: p.auth,
        events: p.events,
        info: p.info,
        started: p.started,
        devices: Mutex::new(None),
    });
    let slots = Arc::new(Semaphore::new(p.max_connections.max(1)));
    let mut shutdown = p.shutdown;
    loop {
        // A slot first: past the limit, connections wait in the kernel's backlog.
        let permit = tokio::select! {
            _ = shutdown.changed() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = p.listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "http connection ended"),
                Err(_) => debug!(%peer, "http connection closed after its lifetime"),
            }
        });
    }
}

type Body = Full<Bytes>;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

const JSON: &str = "application/json";

fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    respond(status, JSON, body)
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    if let Some(auth) = &shared.auth {
        if !auth.admits(req.headers().get(header::AUTHORIZATION)) {
            let mut r = json_error(StatusCode::UNAUTHORIZED, "log in (HTTP Basic)");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"mqttsn-gateway\", charset=\"UTF-8\""),
            );
            return r;
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = json_error(StatusCode::METHOD_NOT_ALLOWED, "only GET");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = req.uri().path();
    match path {
        "/" | "/index.html" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(PAGE.as_bytes()),
        ),
        "/metrics" => match shared.snapshot(Query::Summary).await {
            Some(s) => respond(
                StatusCode::OK,
                metrics::CONTENT_TYPE,
                metrics::render(&s, &shared.info, &shared.started),
            ),
            None => unavailable(),
        },
        "/api/gateway" => match shared.snapshot(Query::Summary).await {
            Some(s) => respond(
                StatusCode::OK,
                JSON,
                api::gateway(&s, &shared.info, &shared.started).to_string(),
            ),
            None => unavailable(),
        },
        "/api/devices" | "/api/devices/" => match shared.devices().await {
            Some(s) => respond(
                StatusCode::OK,
                JSON,
                api::devices(&s, &shared.started).to_string(),
            ),
            None => unavailable(),
        },
        _ => match path.strip_prefix("/api/devices/") {
            Some(id) => {
                let Some(id) = percent_decode(id) else {
                    return json_error(StatusCode::BAD_REQUEST, "the ClientId is not valid UTF-8");
                };
                match shared.snapshot(Query::Device(id.clone())).await {
                    Some(s) => match s.devices.first() {
                        Some(d) => respond(
                            StatusCode::OK,
                            JSON,
                            api::device(d, &s, &shared.started).to_string(),
                        ),
                        None => json_error(
                            StatusCode::NOT_FOUND,
                            &format!("no device with ClientId `{id}`"),
                        ),
                    },
                    None => unavailable(),
                }
            }
            None => json_error(StatusCode::NOT_FOUND, "no such page"),
        },
    }
}

fn unavailable() -> Response<Body> {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the gateway did not answer in time (busy or stopping)",
    )
}

impl Shared {
    /// Asks the driver (bounded waits both ways).
    async fn snapshot(&self, query: Query) -> Option<Snapshot> {
        let (reply, answer) = oneshot::channel();
        let request = Event::Status(StatusRequest { query, reply });
        tokio::time::timeout(DRIVER_WAIT, self.events.send(request))
            .await
            .ok()?
            .ok()?;
        tokio::time::timeout(DRIVER_WAIT, answer).await.ok()?.ok()
    }

    /// Every device, from the cache when it is fresh.
    async fn devices(&self) -> Option<Arc<Snapshot>> {
        if let Some(s) = self.cached_devices() {
            return Some(s);
        }
        let s = Arc::new(self.snapshot(Query::Devices).await?);
        if let Ok(mut c) = self.devices.lock() {
            *c = Some(s.clone());
        }
        Some(s)
    }

    fn cached_devices(&self) -> Option<Arc<Snapshot>> {
        let c = self.devices.lock().ok()?;
        c.as_ref()
            .filter(|s| s.taken.elapsed() < DEVICES_TTL)
            .cloned()
    }
}

/// `%XX` escapes undone; `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The status page: one file, no build step, no CDN.
const PAGE: &str = include_str!("page.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_7617() {
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn basic_auth_admits_only_the_configured_login() {
        let c = Credentials::new("Aladdin", "open sesame");
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(c.admits(Some(&h("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="))));
        assert!(c.admits(Some(&h("basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="))));
        assert!(!c.admits(Some(&h("Basic QWxhZGRpbjpvcGVuIHNlc2FtZR=="))));
        assert!(!c.admits(Some(&h("Bearer QWxhZGRpbjpvcGVuIHNlc2FtZQ=="))));
        assert!(!c.admits(Some(&h("Basic"))));
        assert!(!c.admits(None));
        assert!(!format!("{c:?}").contains("QWxh"));
    }

    #[test]
    fn client_ids_in_paths_are_percent_decoded() {
        assert_eq!(percent_decode("sensor%201").as_deref(), Some("sensor 1"));
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("50%").as_deref(), Some("50%"));
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn the_clock_maps_instants_both_ways() {
        let c = Clock::now();
        let later = c.mono + Duration::from_secs(5);
        assert_eq!(c.wall_of(later), c.wall + Duration::from_secs(5));
        if let Some(earlier) = c.mono.checked_sub(Duration::from_secs(5)) {
            assert_eq!(c.wall_of(earlier), c.wall - Duration::from_secs(5));
        }
    }
}
