//! The sharded wire format of `@socket.io/redis-adapter` 8.3 (`createShardedAdapter`,
//! `ClusterAdapter` of socket.io-adapter 2.5), as recorded in `adapter/docs/SHARDED.md`.
//!
//! Every message is one envelope `{type, data, uid, nsp}`: JSON, or msgpack when `data`
//! holds binary. This module maps it onto the classic wire types the rest of the crate
//! already handles, so one receive path serves both protocols:
//!
//! | sharded type | classic equivalent |
//! | --- | --- |
//! | 3 BROADCAST (no `requestId`) | [`BroadcastMessage`] |
//! | 3 BROADCAST with `requestId` | request 7 |
//! | 4 SOCKETS_JOIN / 5 SOCKETS_LEAVE | requests 2 / 3 |
//! | 6 DISCONNECT_SOCKETS | request 4 |
//! | 7 FETCH_SOCKETS | request 5 |
//! | 9 SERVER_SIDE_EMIT | request 6 |
//! | 8 FETCH_SOCKETS_RESPONSE | response to 5 (`uid` from the envelope) |
//! | 10 SERVER_SIDE_EMIT_RESPONSE | response 6 |
//! | 11 BROADCAST_CLIENT_COUNT / 12 BROADCAST_ACK | responses 8 / 9 |
//! | 1, 2, 13 (heartbeats, close), unknown | ignored ([`ShardedMessage::Ignored`]) |
//!
//! Channels: [`ShardedChannels`]; which one a broadcast goes to: [`ShardedChannels::broadcast_channel`].

use serde::Deserialize;

use super::{
    BroadcastMessage, DecodeError, EncodeError, RequestType, SocketEntry, WireOpts, WirePacket,
    WireRequest, WireResponse, de_id, de_opt_millis, de_opt_rooms, decode_json, read_msgpack,
};

/// `MessageType` of socket.io-adapter's `ClusterAdapter` (not the classic numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ShardedType {
    /// 3: a broadcast (with `requestId`: a broadcast with acks).
    Broadcast = 3,
    /// 4: `socketsJoin`.
    SocketsJoin = 4,
    /// 5: `socketsLeave`.
    SocketsLeave = 5,
    /// 6: `disconnectSockets`.
    DisconnectSockets = 6,
    /// 7: `fetchSockets`.
    FetchSockets = 7,
    /// 8: answer to 7.
    FetchSocketsResponse = 8,
    /// 9: `serverSideEmit`.
    ServerSideEmit = 9,
    /// 10: answer to 9 with `requestId`.
    ServerSideEmitResponse = 10,
    /// 11: how many clients got an ack broadcast.
    BroadcastClientCount = 11,
    /// 12: one client ack.
    BroadcastAck = 12,
}

/// The channel names of one namespace in sharded mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardedChannels {
    /// `key#nsp#`: requests and every broadcast that does not go to a room channel; what
    /// `PUBSUB SHARDNUMSUB` counts.
    pub main: String,
    /// `key#nsp#uid#`: responses to this node.
    pub own_response: String,
}

impl ShardedChannels {
    /// Channel names for prefix `key`, namespace `nsp` and node `uid`.
    pub fn new(key: &str, nsp: &str, uid: &str) -> Self {
        let main = format!("{key}#{nsp}#");
        Self {
            own_response: format!("{main}{uid}#"),
            main,
        }
    }

    /// `key#nsp#room#`: broadcasts to exactly that room (also the response channel of the
    /// node whose uid is `room`).
    pub fn room(&self, room: &str) -> String {
        format!("{}{room}#", self.main)
    }

    /// The response channel of the node with uid `uid`.
    pub fn response_for(&self, uid: &str) -> String {
        self.room(uid)
    }

    /// Where a broadcast to `rooms` without acks is published (Node's `computeChannel` in
    /// `dynamic` mode): the room channel iff there is exactly one room and it
    /// [has its own channel](has_room_channel); else the main channel. Requests, ack
    /// broadcasts and everything else go to [`main`](Self::main).
    pub fn broadcast_channel(&self, rooms: &[String]) -> String {
        match rooms {
            [room] if has_room_channel(room) => self.room(room),
            _ => self.main.clone(),
        }
    }
}

/// Whether a one-room broadcast to `room` travels on the room's own channel. Node (dynamic
/// mode) sends rooms of exactly 20 characters — its socket ids — to the main channel. We
/// also send rooms that parse as a socketioxide socket id (16 url-safe base64 chars) to the
/// main channel: nobody subscribes per-socket channels, and every node reads the main one.
pub fn has_room_channel(room: &str) -> bool {
    room.chars().count() != 20 && !looks_like_sid(room)
}

/// A socketioxide `Sid`: 16 characters of url-safe base64.
fn looks_like_sid(room: &str) -> bool {
    room.len() == 16
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A decoded sharded message, mapped to the classic types (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub enum ShardedMessage {
    /// A broadcast without acks; the packet's `nsp` is the envelope's.
    Broadcast(BroadcastMessage),
    /// A request, as the classic request of the same meaning.
    Request(WireRequest),
    /// A response, as the classic response of the same meaning.
    Response(WireResponse),
    /// A type the sharded adapter never sends (1, 2, 13) or does not define.
    Ignored(u8),
}

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardedEnvelope {
    /// Sender uid (empty when absent).
    pub uid: String,
    /// Sender namespace (Node drops messages of another namespace; so do we).
    pub nsp: Option<String>,
    /// The message.
    pub message: ShardedMessage,
}

#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    data: Option<RawData>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    nsp: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawData {
    #[serde(default)]
    packet: Option<rmpv::Value>,
    #[serde(rename = "requestId", default, deserialize_with = "de_opt_id")]
    request_id: Option<String>,
    #[serde(default)]
    opts: Option<WireOpts>,
    #[serde(default, deserialize_with = "de_opt_rooms")]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    close: Option<bool>,
    #[serde(default)]
    sockets: Option<Vec<SocketEntry>>,
    #[serde(rename = "clientCount", default, deserialize_with = "de_opt_millis")]
    client_count: Option<u64>,
}

fn de_opt_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Id(#[serde(deserialize_with = "de_id")] String);
    Ok(Option::<Id>::deserialize(d)?.map(|i| i.0))
}

/// Why a well-formed envelope is not a usable message.
#[derive(Debug, thiserror::Error)]
pub enum ShardedError {
    /// The envelope could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A field the message type needs is absent or has the wrong shape.
    #[error("sharded message type {kind} without a valid {field}")]
    Missing {
        /// The message type.
        kind: u8,
        /// The missing field.
        field: &'static str,
    },
}

/// Decodes an envelope: JSON if the first byte is `{`, msgpack otherwise (Node's sniffing).
pub fn decode(bytes: &[u8]) -> Result<ShardedEnvelope, ShardedError> {
    let value = if bytes.first() == Some(&b'{') {
        decode_json::<rmpv::Value>(bytes)?
    } else {
        read_msgpack(bytes)?
    };
    let raw: RawEnvelope = rmpv::ext::from_value(value).map_err(DecodeError::Shape)?;
    let kind = raw.kind;
    let missing = |field| ShardedError::Missing { kind, field };
    let uid = raw.uid.unwrap_or_default();
    let d = raw.data.unwrap_or_default();
    let req = |t: RequestType| WireRequest {
        uid: Some(uid.clone()),
        kind: t as u8,
        ..Default::default()
    };
    let res = |t: Option<RequestType>, id: Option<String>| -> Result<WireResponse, ShardedError> {
        Ok(WireResponse {
            kind: t.map(|t| t as u8),
            request_id: id.ok_or_else(|| missing("requestId"))?,
            ..Default::default()
        })
    };
    use ShardedMessage as M;
    let message = match kind {
        3 => {
            let packet = d.packet.ok_or_else(|| missing("packet"))?;
            let mut packet: WirePacket =
                rmpv::ext::from_value(packet).map_err(|_| missing("packet"))?;
            let opts = d.opts.ok_or_else(|| missing("opts"))?;
            match d.request_id {
                Some(id) => M::Request(WireRequest {
                    request_id: Some(id),
                    packet: Some(packet),
                    opts: Some(opts),
                    ..req(RequestType::Broadcast)
                }),
                None => {
                    packet.nsp = raw.nsp.clone();
                    M::Broadcast(BroadcastMessage(uid.clone(), packet, opts))
                }
            }
        }
        4 | 5 => M::Request(WireRequest {
            opts: Some(d.opts.ok_or_else(|| missing("opts"))?),
            rooms: Some(d.rooms.unwrap_or_default()),
            ..req(if kind == 4 {
                RequestType::RemoteJoin
            } else {
                RequestType::RemoteLeave
            })
        }),
        6 => M::Request(WireRequest {
            opts: Some(d.opts.ok_or_else(|| missing("opts"))?),
            close: d.close,
            ..req(RequestType::RemoteDisconnect)
        }),
        7 => M::Request(WireRequest {
            request_id: Some(d.request_id.ok_or_else(|| missing("requestId"))?),
            opts: Some(d.opts.unwrap_or_default()),
            ..req(RequestType::RemoteFetch)
        }),
        9 => M::Request(WireRequest {
            request_id: d.request_id,
            data: d.packet,
            ..req(RequestType::ServerSideEmit)
        }),
        8 => M::Response(WireResponse {
            sockets: Some(d.sockets.unwrap_or_default()),
            uid: Some(uid.clone()),
            ..res(None, d.request_id)?
        }),
        10 => M::Response(WireResponse {
            data: Some(d.packet.unwrap_or(rmpv::Value::Nil)),
            ..res(Some(RequestType::ServerSideEmit), d.request_id)?
        }),
        11 => M::Response(WireResponse {
            client_count: Some(d.client_count.unwrap_or(0)),
            ..res(Some(RequestType::BroadcastClientCount), d.request_id)?
        }),
        12 => M::Response(WireResponse {
            packet: Some(d.packet.unwrap_or(rmpv::Value::Nil)),
            ..res(Some(RequestType::BroadcastAck), d.request_id)?
        }),
        other => M::Ignored(other),
    };
    Ok(ShardedEnvelope {
        uid,
        nsp: raw.nsp,
        message,
    })
}

/// Encodes a broadcast without acks (type 3); the uid is the message's, `nsp` the sender's.
pub fn encode_broadcast(msg: &BroadcastMessage, nsp: &str) -> Result<Vec<u8>, EncodeError> {
    let BroadcastMessage(uid, packet, opts) = msg;
    let data = map(vec![
        ("packet", packet_value(packet)),
        ("opts", to_value(opts)?),
    ]);
    envelope(ShardedType::Broadcast, data, uid, nsp)
}

/// Encodes a request (classic types 2–7) as the sharded message of the same meaning.
pub fn encode_request(req: &WireRequest, nsp: &str) -> Result<Vec<u8>, EncodeError> {
    let uid = req.uid.as_deref().unwrap_or_default();
    let id = || req.request_id.as_deref().map(rmpv::Value::from);
    // Node always sends `flags` (`{}` when none are set).
    let opts = || {
        let mut opts = req.opts.clone().unwrap_or_default();
        opts.flags.get_or_insert_with(Default::default);
        to_value(&opts)
    };
    let rooms = || {
        rmpv::Value::Array(
            req.rooms
                .iter()
                .flatten()
                .map(|r| rmpv::Value::from(r.as_str()))
                .collect(),
        )
    };
    let unsupported = || EncodeError::Unsupported("classic request type", req.kind);
    let (kind, data) = match RequestType::from_u8(req.kind).ok_or_else(unsupported)? {
        RequestType::RemoteJoin => (
            ShardedType::SocketsJoin,
            map(vec![("opts", opts()?), ("rooms", rooms())]),
        ),
        RequestType::RemoteLeave => (
            ShardedType::SocketsLeave,
            map(vec![("opts", opts()?), ("rooms", rooms())]),
        ),
        RequestType::RemoteDisconnect => (
            ShardedType::DisconnectSockets,
            map(vec![
                ("opts", opts()?),
                ("close", rmpv::Value::from(req.close.unwrap_or(false))),
            ]),
        ),
        RequestType::RemoteFetch => (
            ShardedType::FetchSockets,
            map_opt(vec![("opts", Some(opts()?)), ("requestId", id())]),
        ),
        RequestType::ServerSideEmit => (
            ShardedType::ServerSideEmit,
            map_opt(vec![
                ("requestId", id()),
                ("packet", Some(req.data.clone().unwrap_or(rmpv::Value::Nil))),
            ]),
        ),
        RequestType::Broadcast => {
            let packet = req.packet.as_ref().ok_or_else(unsupported)?;
            (
                ShardedType::Broadcast,
                map_opt(vec![
                    ("packet", Some(packet_value(packet))),
                    ("requestId", id()),
                    ("opts", Some(opts()?)),
                ]),
            )
        }
        _ => return Err(unsupported()),
    };
    envelope(kind, data, uid, nsp)
}

/// Encodes a response (to classic 5, 6, 7) as the sharded message of the same meaning,
/// sent by `uid`.
pub fn encode_response(res: &WireResponse, uid: &str, nsp: &str) -> Result<Vec<u8>, EncodeError> {
    let id = rmpv::Value::from(res.request_id.as_str());
    let (kind, data) = match res.kind {
        None if res.sockets.is_some() => (
            ShardedType::FetchSocketsResponse,
            map(vec![
                ("requestId", id),
                ("sockets", to_value(&res.sockets)?),
            ]),
        ),
        Some(k) if k == RequestType::ServerSideEmit as u8 => (
            ShardedType::ServerSideEmitResponse,
            map(vec![
                ("requestId", id),
                ("packet", res.data.clone().unwrap_or(rmpv::Value::Nil)),
            ]),
        ),
        Some(k) if k == RequestType::BroadcastClientCount as u8 => (
            ShardedType::BroadcastClientCount,
            map(vec![
                ("requestId", id),
                (
                    "clientCount",
                    rmpv::Value::from(res.client_count.unwrap_or(0)),
                ),
            ]),
        ),
        Some(k) if k == RequestType::BroadcastAck as u8 => (
            ShardedType::BroadcastAck,
            map(vec![
                ("requestId", id),
                ("packet", res.packet.clone().unwrap_or(rmpv::Value::Nil)),
            ]),
        ),
        other => {
            return Err(EncodeError::Unsupported(
                "classic response type",
                other.unwrap_or(0),
            ));
        }
    };
    envelope(kind, data, uid, nsp)
}

/// `{type, data, uid, nsp}`: msgpack when `data` holds binary, JSON otherwise.
fn envelope(
    kind: ShardedType,
    data: rmpv::Value,
    uid: &str,
    nsp: &str,
) -> Result<Vec<u8>, EncodeError> {
    let binary = has_binary(&data);
    let value = map(vec![
        ("type", rmpv::Value::from(kind as u8)),
        ("data", data),
        ("uid", rmpv::Value::from(uid)),
        ("nsp", rmpv::Value::from(nsp)),
    ]);
    if binary {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &value).map_err(EncodeError::Io)?;
        Ok(out)
    } else {
        Ok(serde_json::to_vec(&value)?)
    }
}

/// The socket.io packet inside a broadcast: `{type, data}` (no `nsp`, no `id`).
fn packet_value(packet: &WirePacket) -> rmpv::Value {
    map(vec![
        ("type", rmpv::Value::from(packet.kind)),
        ("data", packet.data.clone()),
    ])
}

/// A struct as a msgpack map with named fields (`rmpv::ext::to_value` would make an array).
fn to_value<T: serde::Serialize>(v: &T) -> Result<rmpv::Value, EncodeError> {
    let bytes = super::encode_msgpack(v)?;
    read_msgpack(&bytes).map_err(|e| EncodeError::Value(e.to_string()))
}

fn map(entries: Vec<(&str, rmpv::Value)>) -> rmpv::Value {
    rmpv::Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (rmpv::Value::from(k), v))
            .collect(),
    )
}

/// A map without the entries whose value is absent (JS `undefined` keys vanish).
fn map_opt(entries: Vec<(&str, Option<rmpv::Value>)>) -> rmpv::Value {
    map(entries
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
}

/// Node's `hasBinary`: any Buffer (msgpack `bin`) anywhere; extension values count too,
/// since JSON has no form for them.
fn has_binary(v: &rmpv::Value) -> bool {
    match v {
        rmpv::Value::Binary(_) | rmpv::Value::Ext(..) => true,
        rmpv::Value::Array(a) => a.iter().any(has_binary),
        rmpv::Value::Map(m) => m.iter().any(|(k, v)| has_binary(k) || has_binary(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WireFlags;

    #[test]
    fn channels() {
        let c = ShardedChannels::new("socket.io", "/", "63eab8f0648c496b");
        assert_eq!(c.main, "socket.io#/#");
        assert_eq!(c.own_response, "socket.io#/#63eab8f0648c496b#");
        assert_eq!(c.broadcast_channel(&["r1".into()]), "socket.io#/#r1#");
        assert_eq!(c.broadcast_channel(&[]), "socket.io#/#");
        assert_eq!(
            c.broadcast_channel(&["a".into(), "b".into()]),
            "socket.io#/#"
        );
        // Node socket id (20 chars) and socketioxide Sid (16 chars): main channel.
        assert_eq!(
            c.broadcast_channel(&["KZIwqrVp75cAhUSIAAAB".into()]),
            "socket.io#/#"
        );
        assert_eq!(
            c.broadcast_channel(&["AAAAAAAAAAAAAAA-".into()]),
            "socket.io#/#"
        );
        assert_eq!(
            c.broadcast_channel(&["a room with 16 c".into()]),
            "socket.io#/#a room with 16 c#"
        );
    }

    #[test]
    fn broadcast_round_trip_and_binary_switches_to_msgpack() {
        let msg = BroadcastMessage(
            "u1".into(),
            WirePacket {
                kind: 2,
                data: rmpv::Value::Array(vec!["ev".into(), 1.into()]),
                nsp: Some("/".into()),
            },
            WireOpts {
                rooms: vec!["r".into()],
                except: vec![],
                flags: Some(WireFlags::default()),
            },
        );
        let bytes = encode_broadcast(&msg, "/").unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"type":3,"data":{"packet":{"type":2,"data":["ev",1]},"opts":{"rooms":["r"],"except":[],"flags":{}}},"uid":"u1","nsp":"/"}"#
        );
        let env = decode(&bytes).unwrap();
        assert_eq!(env.message, ShardedMessage::Broadcast(msg.clone()));
        let mut bin = msg;
        bin.1.data = rmpv::Value::Array(vec!["ev".into(), rmpv::Value::Binary(vec![1, 2])]);
        let bytes = encode_broadcast(&bin, "/").unwrap();
        assert_eq!(bytes[0], 0x84);
        assert_eq!(
            decode(&bytes).unwrap().message,
            ShardedMessage::Broadcast(bin)
        );
    }

    #[test]
    fn malformed_envelopes_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"{",
            b"{}",
            br#"{"type":"x"}"#,
            br#"{"type":3,"data":{"opts":{}}}"#,
            br#"{"type":3,"data":{"packet":5,"opts":{}}}"#,
            br#"{"type":7,"data":{}}"#,
            br#"{"type":11,"data":{"clientCount":1}}"#,
            &[0xc1],
            &[0x84, 0xa4],
        ] {
            assert!(decode(bad).is_err(), "{bad:?} accepted");
        }
        let deep = "[".repeat(100_000);
        assert!(decode(format!(r#"{{"type":9,"data":{{"packet":{deep}"#).as_bytes()).is_err());
        assert_eq!(
            decode(br#"{"type":2,"uid":"x","nsp":"/"}"#)
                .unwrap()
                .message,
            ShardedMessage::Ignored(2)
        );
    }
}
