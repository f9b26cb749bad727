//! A lean Socket.IO (protocol v5) / Engine.IO (v4) client over WebSocket only.
//!
//! It does exactly what a load generator (or an integration test) needs and nothing else:
//! open a WebSocket to `/socket.io/?EIO=4&transport=websocket`, read the Engine.IO OPEN
//! packet, send the Socket.IO CONNECT packet for namespace `/` with an `auth` payload, and
//! then exchange EVENT / ACK packets. There is no long-polling, no reconnection, no
//! binary attachments and no background task: the caller owns a [`Reader`] and a [`Writer`]
//! and answers Engine.IO pings itself ([`Incoming::Ping`] → [`Writer::pong`]), so one tokio
//! task per connection is enough and a connection costs a few KiB.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fanout_loadtest::client::ClientError> {
//! use fanout_loadtest::client::{ConnectOptions, Incoming, connect};
//! let opts = ConnectOptions::new("http://127.0.0.1:3000").with_auth(serde_json::json!({"token": "t"}));
//! let (mut conn, _timings) = connect(&opts).await?;
//! let ack = conn.writer.emit_with_ack("subscribe", &serde_json::json!(["news"])).await?;
//! loop {
//!     match conn.reader.recv().await? {
//!         Incoming::Ping => conn.writer.pong().await?,
//!         Incoming::Ack { id, .. } if id == ack => break,
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// The WebSocket stream type used by a connection (plain TCP, no TLS: loopback targets only).
pub type WsStream = WebSocketStream<TcpStream>;

/// Why a connection or an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL could not be parsed into host and port.
    #[error("bad url {0}")]
    BadUrl(String),
    /// TCP connect or socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// WebSocket handshake or framing error.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server answered with something that is not Engine.IO v4 / Socket.IO v5.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server refused the Socket.IO CONNECT (`connect_error`); carries its message.
    #[error("connect_error: {0}")]
    Unauthorized(String),
    /// A step did not finish within the connect timeout.
    #[error("timeout during {0}")]
    Timeout(&'static str),
    /// The server closed the connection.
    #[error("closed by server")]
    Closed,
}

impl ClientError {
    /// True when the server refused the handshake (bad or missing token), as opposed to a
    /// transport failure.
    pub fn is_auth(&self) -> bool {
        matches!(self, ClientError::Unauthorized(_))
    }
}

/// How to connect one client.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Base URL of the server, `http://host:port` (a `ws://` scheme is accepted too).
    pub url: String,
    /// The Socket.IO CONNECT payload (`{"token": "..."}`), or none.
    pub auth: Option<Value>,
    /// Source address to bind before connecting (spreads ephemeral ports over 127.0.0.x).
    pub local_ip: Option<IpAddr>,
    /// Upper bound for TCP connect + WebSocket upgrade + Engine.IO OPEN + Socket.IO CONNECT.
    pub timeout: Duration,
    /// tungstenite read buffer size in bytes (small keeps idle clients cheap).
    pub read_buffer: usize,
}

impl ConnectOptions {
    /// Options for `url` with no auth, no source binding and a 10 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            auth: None,
            local_ip: None,
            timeout: Duration::from_secs(10),
            read_buffer: 8 * 1024,
        }
    }

    /// Sets the CONNECT auth payload.
    pub fn with_auth(mut self, auth: Value) -> Self {
        self.auth = Some(auth);
        self
    }
}

/// Durations of the handshake steps of one connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// TCP connect.
    pub tcp: Duration,
    /// TCP connect + WebSocket upgrade.
    pub websocket: Duration,
    /// ... + Engine.IO OPEN packet received.
    pub eio_open: Duration,
    /// ... + Socket.IO CONNECT acknowledged: the full handshake.
    pub total: Duration,
}

/// Engine.IO OPEN packet fields we use.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenPacket {
    /// Engine.IO session id.
    pub sid: String,
    /// Server ping interval (ms).
    #[serde(default)]
    pub ping_interval: u64,
    /// Server ping timeout (ms).
    #[serde(default)]
    pub ping_timeout: u64,
}

/// An established Socket.IO connection, split into its two halves.
pub struct Connection {
    /// Receiving half.
    pub reader: Reader,
    /// Sending half.
    pub writer: Writer,
    /// The Engine.IO OPEN packet.
    pub open: OpenPacket,
    /// The Socket.IO session id from the CONNECT acknowledgement.
    pub sid: String,
}

/// Receiving half of a [`Connection`].
pub struct Reader {
    stream: SplitStream<WsStream>,
}

/// Sending half of a [`Connection`].
pub struct Writer {
    sink: SplitSink<WsStream, Message>,
    next_ack: u64,
}

/// One packet received from the server, namespace `/`.
#[derive(Debug)]
pub enum Incoming {
    /// Engine.IO ping: answer with [`Writer::pong`] or the server closes the connection.
    Ping,
    /// A Socket.IO EVENT; [`Incoming::args`] is its JSON array text (`["name", arg…]`).
    Event {
        /// Ack id requested by the server, if any.
        ack: Option<u64>,
        /// The whole frame (zero-copy).
        frame: Utf8Bytes,
        /// Byte offset of the JSON array in `frame`.
        start: usize,
    },
    /// A Socket.IO ACK for one of our `emit_with_ack` calls.
    Ack {
        /// The ack id returned by `emit_with_ack`.
        id: u64,
        /// The whole frame (zero-copy).
        frame: Utf8Bytes,
        /// Byte offset of the JSON array of ack arguments in `frame`.
        start: usize,
    },
    /// Socket.IO DISCONNECT from the server.
    Disconnect,
    /// Any other packet (noop, pong, other namespace, binary frame…).
    Other,
}

impl Incoming {
    /// The JSON array text of an event (name then arguments) or of an ack's arguments;
    /// empty for other packets.
    pub fn args(&self) -> &str {
        match self {
            Incoming::Event { frame, start, .. } | Incoming::Ack { frame, start, .. } => {
                frame.as_str().get(*start..).unwrap_or("")
            }
            _ => "",
        }
    }

    /// For an event: its name and first argument parsed as JSON values (allocates; fine for
    /// tests, the load generator parses `args` itself).
    pub fn event(&self) -> Option<(String, Value)> {
        match self {
            Incoming::Event { .. } => {
                let mut v: Vec<Value> = serde_json::from_str(self.args()).ok()?;
                if v.is_empty() {
                    return None;
                }
                let first = if v.len() > 1 {
                    v.swap_remove(1)
                } else {
                    Value::Null
                };
                let name = v.swap_remove(0).as_str()?.to_owned();
                Some((name, first))
            }
            _ => None,
        }
    }
}

/// Splits `http://host:port/...` into `host:port`.
fn host_port(url: &str) -> Result<String, ClientError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or_else(|| ClientError::BadUrl(url.to_owned()))?;
    let hp = rest.split('/').next().unwrap_or(rest);
    if hp.is_empty() {
        return Err(ClientError::BadUrl(url.to_owned()));
    }
    Ok(if hp.contains(':') {
        hp.to_owned()
    } else {
        format!("{hp}:80")
    })
}

pub(crate) async fn with_timeout<T>(
    deadline: Instant,
    step: &'static str,
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, fut)
        .await
        .map_err(|_| ClientError::Timeout(step))?
}

/// TCP connect (from `opts.local_ip` if set) and WebSocket upgrade to `path` on `opts.url`'s
/// host; returns the stream and the time the TCP connect took.
pub(crate) async fn open_websocket(
    opts: &ConnectOptions,
    path: &str,
    deadline: Instant,
) -> Result<(WsStream, Duration), ClientError> {
    let start = Instant::now();
    let hp = host_port(&opts.url)?;
    let addr: SocketAddr = tokio::net::lookup_host(hp.as_str())
        .await?
        .next()
        .ok_or_else(|| ClientError::BadUrl(opts.url.clone()))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = opts.local_ip {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = with_timeout(deadline, "tcp connect", async {
        Ok(socket.connect(addr).await?)
    })
    .await?;
    stream.set_nodelay(true)?;
    let tcp = start.elapsed();

    let request = format!("ws://{hp}{path}").into_client_request()?;
    let config = WebSocketConfig::default()
        .read_buffer_size(opts.read_buffer)
        .write_buffer_size(0);
    let (ws, _resp) = with_timeout(deadline, "websocket upgrade", async {
        Ok(client_async_with_config(request, stream, Some(config)).await?)
    })
    .await?;
    Ok((ws, tcp))
}

/// Opens a WebSocket to `url` and completes the Engine.IO + Socket.IO handshake for
/// namespace `/`. A `connect_error` reply is [`ClientError::Unauthorized`].
pub async fn connect(opts: &ConnectOptions) -> Result<(Connection, Timings), ClientError> {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let (ws, tcp) = open_websocket(opts, "/socket.io/?EIO=4&transport=websocket", deadline).await?;
    let websocket = start.elapsed();
    let (sink, stream) = ws.split();
    let mut reader = Reader { stream };
    let mut writer = Writer { sink, next_ack: 0 };

    // Engine.IO OPEN: `0{"sid":..,"pingInterval":..}`.
    let open_text = with_timeout(deadline, "engine.io open", reader.next_text()).await?;
    let open: OpenPacket = match open_text.as_str().strip_prefix('0') {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| ClientError::Protocol(format!("bad OPEN packet: {e}")))?,
        None => {
            return Err(ClientError::Protocol(format!(
                "expected OPEN, got {}",
                truncate(open_text.as_str())
            )));
        }
    };
    let eio_open = start.elapsed();

    // Socket.IO CONNECT `40{auth}` → `40{"sid":..}` or `44{"message":..}`.
    let connect_packet = match &opts.auth {
        Some(auth) => format!("40{auth}"),
        None => "40".to_owned(),
    };
    writer.send_text(connect_packet).await?;
    let sid = with_timeout(deadline, "socket.io connect", async {
        loop {
            let text = reader.next_text().await?;
            let t = text.as_str();
            if t == "2" {
                writer.pong().await?;
                continue;
            }
            if let Some(body) = t.strip_prefix("40") {
                #[derive(Deserialize)]
                struct Ok {
                    sid: Option<String>,
                }
                let sid = serde_json::from_str::<Ok>(body)
                    .ok()
                    .and_then(|o| o.sid)
                    .unwrap_or_default();
                return Ok(sid);
            }
            if let Some(body) = t.strip_prefix("44") {
                #[derive(Deserialize)]
                struct Err {
                    message: Option<String>,
                }
                let msg = serde_json::from_str::<Err>(body)
                    .ok()
                    .and_then(|e| e.message)
                    .unwrap_or_else(|| body.to_owned());
                return Err(ClientError::Unauthorized(msg));
            }
            if t.starts_with('1') || t.starts_with("41") {
                return Err(ClientError::Closed);
            }
        }
    })
    .await?;
    let total = start.elapsed();
    Ok((
        Connection {
            reader,
            writer,
            open,
            sid,
        },
        Timings {
            tcp,
            websocket,
            eio_open,
            total,
        },
    ))
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Reader {
    /// Next text frame; errors on close.
    async fn next_text(&mut self) -> Result<Utf8Bytes, ClientError> {
        loop {
            match self.stream.next().await {
                None => return Err(ClientError::Closed),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(Message::Close(_))) => return Err(ClientError::Closed),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Receives the next packet. Cancel-safe: it only reads, so it can sit in a
    /// `tokio::select!` next to a timer that drives the [`Writer`].
    pub async fn recv(&mut self) -> Result<Incoming, ClientError> {
        let text = self.next_text().await?;
        Ok(parse_packet(text))
    }
}

/// Parses one Engine.IO text frame into an [`Incoming`] packet (namespace `/` only).
pub fn parse_packet(text: Utf8Bytes) -> Incoming {
    let b = text.as_bytes();
    match b.first() {
        Some(b'2') => return Incoming::Ping,
        Some(b'4') => {}
        _ => return Incoming::Other,
    }
    let kind = match b.get(1) {
        Some(k) => *k,
        None => return Incoming::Other,
    };
    // Optional ack id digits, then the JSON array.
    let mut i = 2;
    if b.get(i) == Some(&b'/') {
        return Incoming::Other; // other namespace
    }
    let mut id: Option<u64> = None;
    while let Some(d) = b.get(i).filter(|c| c.is_ascii_digit()) {
        id = Some(
            id.unwrap_or(0)
                .saturating_mul(10)
                .saturating_add(u64::from(d - b'0')),
        );
        i += 1;
    }
    match kind {
        b'2' => Incoming::Event {
            ack: id,
            frame: text,
            start: i,
        },
        b'3' => match id {
            Some(id) => Incoming::Ack {
                id,
                frame: text,
                start: i,
            },
            None => Incoming::Other,
        },
        b'1' => Incoming::Disconnect,
        _ => Incoming::Other,
    }
}

impl Writer {
    /// Sends a raw Engine.IO text frame.
    pub async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        self.sink.send(Message::text(text)).await?;
        Ok(())
    }

    /// Answers an Engine.IO ping.
    pub async fn pong(&mut self) -> Result<(), ClientError> {
        self.send_text("3".to_owned()).await
    }

    /// Emits event `name` with the arguments in `args` (a JSON array), without ack.
    pub async fn emit(&mut self, name: &str, args: &Value) -> Result<(), ClientError> {
        let frame = event_frame(None, name, args);
        self.send_text(frame).await
    }

    /// Emits event `name` with the arguments in `args` (a JSON array) asking for an ack;
    /// returns the ack id to match against [`Incoming::Ack`].
    pub async fn emit_with_ack(&mut self, name: &str, args: &Value) -> Result<u64, ClientError> {
        let id = self.next_ack;
        self.next_ack += 1;
        let frame = event_frame(Some(id), name, args);
        self.send_text(frame).await?;
        Ok(id)
    }

    /// Emits a pre-serialized event: `args_json` must be the JSON text of the arguments
    /// after the event name, e.g. `{"topic":"a","data":1}` (no surrounding brackets).
    /// Saves a `Value` round trip on the hot publish path.
    pub async fn emit_raw_with_ack(
        &mut self,
        name: &str,
        args_json: &str,
    ) -> Result<u64, ClientError> {
        let id = self.next_ack;
        self.next_ack += 1;
        let name = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".to_owned());
        let frame = format!("42{id}[{name},{args_json}]");
        self.send_text(frame).await?;
        Ok(id)
    }

    /// Sends a WebSocket close frame.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        self.sink.send(Message::Close(None)).await?;
        Ok(())
    }
}

fn event_frame(ack: Option<u64>, name: &str, args: &Value) -> String {
    let mut arr = vec![Value::String(name.to_owned())];
    match args {
        Value::Array(a) => arr.extend(a.iter().cloned()),
        other => arr.push(other.clone()),
    }
    let body = Value::Array(arr).to_string();
    match ack {
        Some(id) => format!("42{id}{body}"),
        None => format!("42{body}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_packets() {
        assert!(matches!(
            parse_packet(Utf8Bytes::from_static("2")),
            Incoming::Ping
        ));
        match parse_packet(Utf8Bytes::from_static("42[\"t\",{\"a\":1}]")) {
            ev @ Incoming::Event { ack: None, .. } => assert_eq!(ev.args(), "[\"t\",{\"a\":1}]"),
            other => panic!("{other:?}"),
        }
        match parse_packet(Utf8Bytes::from_static("4312[{\"ok\":true}]")) {
            ack @ Incoming::Ack { id: 12, .. } => assert_eq!(ack.args(), "[{\"ok\":true}]"),
            other => panic!("{other:?}"),
        }
        let ev = parse_packet(Utf8Bytes::from_static("427[\"x\",5]"));
        assert!(matches!(ev, Incoming::Event { ack: Some(7), .. }));
        assert_eq!(ev.event(), Some(("x".to_owned(), Value::from(5))));
        assert!(matches!(
            parse_packet(Utf8Bytes::from_static("42/chat,[\"x\"]")),
            Incoming::Other
        ));
    }

    #[test]
    fn frames_events() {
        assert_eq!(
            event_frame(Some(3), "subscribe", &serde_json::json!(["t"])),
            "423[\"subscribe\",\"t\"]"
        );
        assert_eq!(
            host_port("http://127.0.0.1:3000").ok(),
            Some("127.0.0.1:3000".into())
        );
        assert!(host_port("https://x").is_err());
    }
}
