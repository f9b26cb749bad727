//! The classic `@socket.io/redis-adapter` 8.x wire format (channels, messages, encoding).
//!
//! Everything that touches bytes on Redis lives here: channel names ([`Channels`]), the
//! broadcast message `[uid, packet, opts]` ([`BroadcastMessage`]), requests
//! ([`WireRequest`], types 0–7) and responses ([`WireResponse`], incl. 8 and 9).
//!
//! Encoding follows the Node side exactly: msgpack maps with named fields in Node's key
//! order (notepack.io style, `rmp_serde::to_vec_named`), JSON for the requests/responses
//! Node sends as JSON. Decoding is tolerant where Node is (rooms may be numbers, missing
//! `nsp`/`except`/`flags`) and strict where safety demands it (nesting depth, trailing
//! bytes). Decoding never panics: every failure is a [`DecodeError`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

pub mod sharded;

/// Maximum nesting depth accepted when decoding msgpack from the wire.
pub const MAX_DEPTH: usize = 128;

/// Node's `RequestType` enum (`lib/index.ts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RequestType {
    /// `SOCKETS` (legacy ≤7.x `sockets()`), answered with socket ids.
    Sockets = 0,
    /// `ALL_ROOMS`, answered with every local room.
    AllRooms = 1,
    /// `REMOTE_JOIN` (`socketsJoin`), no answer.
    RemoteJoin = 2,
    /// `REMOTE_LEAVE` (`socketsLeave`), no answer.
    RemoteLeave = 3,
    /// `REMOTE_DISCONNECT` (`disconnectSockets`), no answer.
    RemoteDisconnect = 4,
    /// `REMOTE_FETCH` (`fetchSockets`), answered with socket details.
    RemoteFetch = 5,
    /// `SERVER_SIDE_EMIT` (no socketioxide equivalent).
    ServerSideEmit = 6,
    /// `BROADCAST` with acks (msgpack), answered with 8 then 9s.
    Broadcast = 7,
    /// `BROADCAST_CLIENT_COUNT` response.
    BroadcastClientCount = 8,
    /// `BROADCAST_ACK` response.
    BroadcastAck = 9,
}

impl RequestType {
    /// Parses the numeric type.
    pub fn from_u8(v: u8) -> Option<Self> {
        use RequestType::*;
        Some(match v {
            0 => Sockets,
            1 => AllRooms,
            2 => RemoteJoin,
            3 => RemoteLeave,
            4 => RemoteDisconnect,
            5 => RemoteFetch,
            6 => ServerSideEmit,
            7 => Broadcast,
            8 => BroadcastClientCount,
            9 => BroadcastAck,
            _ => return None,
        })
    }

    /// Bounded label used in metrics.
    pub fn label(self) -> &'static str {
        use RequestType::*;
        match self {
            Sockets => "sockets",
            AllRooms => "all_rooms",
            RemoteJoin => "remote_join",
            RemoteLeave => "remote_leave",
            RemoteDisconnect => "remote_disconnect",
            RemoteFetch => "remote_fetch",
            ServerSideEmit => "server_side_emit",
            Broadcast => "broadcast_ack",
            BroadcastClientCount => "broadcast_client_count",
            BroadcastAck => "broadcast_ack_response",
        }
    }
}

/// The channel names of one namespace (the table in `adapter/README.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    /// `key#nsp#`: broadcasts to zero or several rooms; prefix of every broadcast channel.
    pub broadcast: String,
    /// `key#nsp#*`: the PSUBSCRIBE pattern covering all broadcast channels.
    pub pattern: String,
    /// `key-request#nsp#`: requests (also what `PUBSUB NUMSUB` counts).
    pub request: String,
    /// `key-response#nsp#`: shared response channel.
    pub response: String,
    /// `key-response#nsp#uid#`: this node's own response channel.
    pub own_response: String,
}

impl Channels {
    /// Channel names for prefix `key`, namespace `nsp` and node `uid`.
    pub fn new(key: &str, nsp: &str, uid: &str) -> Self {
        Self {
            broadcast: format!("{key}#{nsp}#"),
            pattern: format!("{key}#{nsp}#*"),
            request: format!("{key}-request#{nsp}#"),
            response: format!("{key}-response#{nsp}#"),
            own_response: format!("{key}-response#{nsp}#{uid}#"),
        }
    }

    /// The channel a broadcast to `rooms` is published to: the room channel iff there is
    /// exactly one room, else the base channel.
    pub fn broadcast_channel(&self, rooms: &[String]) -> String {
        match rooms {
            [room] => format!("{}{room}#", self.broadcast),
            _ => self.broadcast.clone(),
        }
    }

    /// The response channel of a node with uid `uid`.
    pub fn response_for(&self, uid: &str) -> String {
        format!("{}{uid}#", self.response)
    }

    /// Whether `channel` is one of this namespace's broadcast channels.
    pub fn is_broadcast(&self, channel: &str) -> bool {
        channel.starts_with(&self.broadcast)
    }
}

/// The Socket.IO packet carried between nodes: `{type, data, nsp?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WirePacket {
    /// Packet type; always 2 (EVENT) for broadcasts.
    #[serde(rename = "type")]
    pub kind: u8,
    /// `[event, ...args]`, arbitrary msgpack data (binary inline).
    #[serde(default = "nil")]
    pub data: rmpv::Value,
    /// Namespace; a missing one means `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsp: Option<String>,
}

/// Broadcast flags as Node serializes them; keys whose value is `undefined` are omitted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WireFlags {
    /// `volatile`: may be dropped when the client is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volatile: Option<bool>,
    /// `compress`: ignored by socketioxide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<bool>,
    /// `local`: never published by Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<bool>,
    /// Ack timeout in milliseconds (ack broadcasts).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_millis"
    )]
    pub timeout: Option<u64>,
}

/// Broadcast options: `{rooms, except, flags?}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WireOpts {
    /// Target rooms; empty = every socket of the namespace.
    #[serde(default, deserialize_with = "de_rooms")]
    pub rooms: Vec<String>,
    /// Excluded rooms (and socket ids).
    #[serde(default, deserialize_with = "de_rooms")]
    pub except: Vec<String>,
    /// Flags; absent in join/leave/disconnect/fetch requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<WireFlags>,
}

/// A broadcast message on `key#nsp#[room#]`: `[uid, packet, opts]` (msgpack array of 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastMessage(pub String, pub WirePacket, pub WireOpts);

/// A request on `key-request#nsp#` (JSON, or msgpack for type 7).
///
/// One struct for every request type: field order = Node's key order for each of them
/// (`uid, requestId, type, packet, opts, rooms, close, data`), absent fields are skipped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WireRequest {
    /// Sender uid (absent in emitter join/leave/disconnect requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Request id (types 0, 1, 5, 6-with-ack, 7 and legacy forms).
    #[serde(rename = "requestId", default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Request type.
    #[serde(rename = "type")]
    pub kind: u8,
    /// The packet of a type-7 broadcast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet: Option<WirePacket>,
    /// Target selection (types 2, 3, 4, 5, 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opts: Option<WireOpts>,
    /// Rooms to join/leave (2, 3) or the legacy `SOCKETS` filter (0).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_rooms"
    )]
    pub rooms: Option<Vec<String>>,
    /// Whether a disconnect closes the transport (4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<bool>,
    /// Server-side-emit arguments (6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<rmpv::Value>,
    /// Legacy (≤7.x) single-socket forms of 2/3/4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Legacy (≤7.x) single-room form of 2/3.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_room"
    )]
    pub room: Option<String>,
}

/// One socket in a `REMOTE_FETCH` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireSocket {
    /// Socket id (20 chars on Node, 16 on socketioxide).
    pub id: String,
    /// The handshake (Node: full; ours: a minimal one).
    #[serde(default = "nil")]
    pub handshake: rmpv::Value,
    /// Rooms of the socket (Node includes the socket's own id).
    #[serde(default, deserialize_with = "de_rooms")]
    pub rooms: Vec<String>,
    /// `socket.data`.
    #[serde(default = "nil")]
    pub data: rmpv::Value,
}

/// An entry of `sockets` in a response: ids (type 0) or objects (type 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SocketEntry {
    /// A bare socket id (`SOCKETS` response).
    Id(String),
    /// A socket description (`REMOTE_FETCH` response).
    Full(WireSocket),
}

/// A response on `key-response#nsp#[uid#]`.
///
/// Field order = Node's key order: `type, requestId, sockets | rooms | clientCount | packet | data`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WireResponse {
    /// Only set for 6, 8 and 9.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<u8>,
    /// The request this answers.
    #[serde(rename = "requestId", deserialize_with = "de_id")]
    pub request_id: String,
    /// Sockets (0, 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<Vec<SocketEntry>>,
    /// Rooms (1).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_rooms"
    )]
    pub rooms: Option<Vec<String>>,
    /// Number of clients that will ack (8).
    #[serde(
        rename = "clientCount",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_millis"
    )]
    pub client_count: Option<u64>,
    /// First ack argument (9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet: Option<rmpv::Value>,
    /// Server-side-emit ack data (6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<rmpv::Value>,
    /// Extension (ignored by Node): uid of the responding node, so socketioxide can fill
    /// `RemoteSocketData::server_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

fn nil() -> rmpv::Value {
    rmpv::Value::Nil
}

/// Why a wire message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not valid msgpack (or nested deeper than [`MAX_DEPTH`]).
    #[error("invalid msgpack")]
    Msgpack(#[source] rmpv::decode::Error),
    /// Valid msgpack followed by more bytes (notepack refuses these too).
    #[error("{0} trailing bytes after msgpack value")]
    TrailingBytes(usize),
    /// Valid msgpack, but not the shape of the expected message.
    #[error("wrong shape")]
    Shape(#[source] rmpv::ext::Error),
    /// Not valid JSON, or not the shape of the expected message.
    #[error("invalid JSON")]
    Json(#[source] serde_json::Error),
}

/// Why a message could not be encoded for the wire.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// msgpack serialization failed.
    #[error("msgpack encoding failed")]
    Msgpack(#[from] rmp_serde::encode::Error),
    /// JSON serialization failed.
    #[error("JSON encoding failed")]
    Json(#[from] serde_json::Error),
    /// msgpack writing of a value failed.
    #[error("msgpack writing failed")]
    Io(#[source] rmpv::encode::Error),
    /// A value could not be converted to msgpack.
    #[error("value not convertible: {0}")]
    Value(String),
    /// The message has no form in the target protocol (e.g. a classic-only request type in
    /// the sharded protocol).
    #[error("{0} {1} has no form in this protocol")]
    Unsupported(&'static str, u8),
}

/// Encodes a value as notepack-style msgpack (maps with field names).
pub fn encode_msgpack<T: Serialize>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// Encodes a value as JSON.
pub fn encode_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

/// Reads one msgpack value with a nesting limit and no trailing bytes (like notepack).
pub fn read_msgpack(bytes: &[u8]) -> Result<rmpv::Value, DecodeError> {
    let mut rd = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(DecodeError::Msgpack)?;
    if !rd.is_empty() {
        return Err(DecodeError::TrailingBytes(rd.len()));
    }
    Ok(value)
}

/// Decodes msgpack into `T` (via a depth-limited [`rmpv::Value`]).
pub fn decode_msgpack<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    let value = read_msgpack(bytes)?;
    rmpv::ext::from_value(value).map_err(DecodeError::Shape)
}

/// Decodes JSON into `T` (serde_json limits nesting to 128).
pub fn decode_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(DecodeError::Json)
}

/// Decodes a request/response: JSON if the first byte is `{`, msgpack otherwise (Node's sniffing).
pub fn decode_sniff<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.first() == Some(&b'{') {
        decode_json(bytes)
    } else {
        decode_msgpack(bytes)
    }
}

impl BroadcastMessage {
    /// Decodes a broadcast-channel payload (always msgpack).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_msgpack(bytes)
    }

    /// Encodes as Node does: msgpack array `[uid, packet, opts]`.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(encode_msgpack(self)?)
    }
}

impl WireRequest {
    /// Encodes: msgpack for type 7 (the packet may hold binary), JSON for the rest.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        if self.kind == RequestType::Broadcast as u8 {
            Ok(encode_msgpack(self)?)
        } else {
            Ok(encode_json(self)?)
        }
    }
}

impl WireResponse {
    /// Encodes: msgpack for type 9 (the ack may hold binary), JSON for the rest.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        if self.kind == Some(RequestType::BroadcastAck as u8) {
            Ok(encode_msgpack(self)?)
        } else {
            Ok(encode_json(self)?)
        }
    }
}

/// A room as found on the wire: a string, or a number that Node stringifies.
struct RoomName(String);

impl<'de> Deserialize<'de> for RoomName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RoomName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a room name (string or number)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RoomName, E> {
                Ok(RoomName(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<RoomName, E> {
                Ok(RoomName(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RoomName, E> {
                Ok(RoomName(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RoomName, E> {
                Ok(RoomName(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RoomName, E> {
                // JS number formatting for integral floats: `1.0` prints as `1`.
                if v.fract() == 0.0 && v.abs() < 1e15 {
                    Ok(RoomName(format!("{}", v as i64)))
                } else {
                    Ok(RoomName(v.to_string()))
                }
            }
        }
        d.deserialize_any(V)
    }
}

fn de_rooms<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let rooms: Option<Vec<RoomName>> = Option::deserialize(d)?;
    Ok(rooms.unwrap_or_default().into_iter().map(|r| r.0).collect())
}

fn de_opt_rooms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let rooms: Option<Vec<RoomName>> = Option::deserialize(d)?;
    Ok(rooms.map(|r| r.into_iter().map(|r| r.0).collect()))
}

fn de_opt_room<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let room: Option<RoomName> = Option::deserialize(d)?;
    Ok(room.map(|r| r.0))
}

/// Ids are strings on the wire; accept numbers too rather than failing the whole message.
fn de_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(RoomName::deserialize(d)?.0)
}

/// A non-negative number (ms or count); floats are truncated, negatives become 0.
fn de_opt_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v: Option<f64> = Option::deserialize(d)?;
    Ok(v.map(|v| {
        if v.is_finite() && v > 0.0 {
            v as u64
        } else {
            0
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        let c = Channels::new("socket.io", "/", "NYfa7f");
        assert_eq!(c.broadcast, "socket.io#/#");
        assert_eq!(c.pattern, "socket.io#/#*");
        assert_eq!(c.request, "socket.io-request#/#");
        assert_eq!(c.response, "socket.io-response#/#");
        assert_eq!(c.own_response, "socket.io-response#/#NYfa7f#");
        assert_eq!(c.broadcast_channel(&["r1".into()]), "socket.io#/#r1#");
        assert_eq!(c.broadcast_channel(&[]), "socket.io#/#");
        assert_eq!(
            c.broadcast_channel(&["a".into(), "b".into()]),
            "socket.io#/#"
        );
        let admin = Channels::new("socket.io", "/admin", "x");
        assert_eq!(admin.broadcast, "socket.io#/admin#");
        assert!(admin.is_broadcast("socket.io#/admin#r1#"));
        assert!(!c.is_broadcast("socket.io#/admin#"));
    }

    #[test]
    fn numeric_rooms_are_stringified() {
        let opts: WireOpts = decode_json(br#"{"rooms":[123, "r", 1.5],"except":[7]}"#).unwrap();
        assert_eq!(opts.rooms, vec!["123", "r", "1.5"]);
        assert_eq!(opts.except, vec!["7"]);
        assert_eq!(opts.flags, None);
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        // wrong shapes
        assert!(BroadcastMessage::decode(&[0x93, 0xa1, b'x']).is_err());
        assert!(BroadcastMessage::decode(b"{\"a\":1}").is_err());
        assert!(BroadcastMessage::decode(&[]).is_err());
        assert!(BroadcastMessage::decode(&[0xc1]).is_err());
        // huge declared lengths do not allocate
        assert!(BroadcastMessage::decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        // deep nesting is refused
        let deep = vec![0x91u8; 100_000];
        assert!(read_msgpack(&deep).is_err());
        let deep_json = "[".repeat(100_000);
        assert!(decode_sniff::<WireRequest>(deep_json.as_bytes()).is_err());
        // trailing bytes are refused (as notepack does)
        assert!(read_msgpack(&[0xc0, 0xc0]).is_err());
        // requests without type
        assert!(decode_sniff::<WireRequest>(br#"{"uid":"x"}"#).is_err());
        assert!(decode_sniff::<WireRequest>(br#"{"type":"x"}"#).is_err());
        assert!(decode_sniff::<WireResponse>(br#"{"type":8}"#).is_err());
    }
}
