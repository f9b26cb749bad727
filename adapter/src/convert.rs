//! Mapping between socketioxide's types and the Node wire types of [`crate::protocol`].
//!
//! * [`opts_to_wire`]: socketioxide [`BroadcastOptions`] → Node `opts`.
//! * [`value_to_args`] / [`args_to_value`]: a socketioxide payload [`Value`] (already encoded
//!   by the namespace's parser) ↔ the msgpack `[event, ...args]` array Node carries. Going
//!   through the parser's own `decode_value`/`encode_value` keeps this parser-agnostic
//!   (common JSON parser with binary placeholders, or the msgpack parser).

use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions};
use socketioxide_core::packet::{Packet, PacketData};
use socketioxide_core::parser::{Parse, ParserError};
use socketioxide_core::{Str, Value};

use crate::protocol::{WireFlags, WireOpts, WirePacket};

/// Socket.IO EVENT packet type.
pub(crate) const EVENT: u8 = 2;
/// Socket.IO BINARY_EVENT packet type (accepted on receive, never sent).
const BINARY_EVENT: u8 = 5;

/// Why a payload could not be converted between socketioxide and the Node wire format.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The namespace's parser refused the value.
    #[error("parser refused the payload")]
    Parser(#[from] ParserError),
    /// Only EVENT packets travel between nodes.
    #[error("only EVENT packets can be broadcast to Node peers")]
    NotAnEvent,
    /// A wire packet of a type other than EVENT / BINARY_EVENT.
    #[error("unsupported packet type {0}")]
    PacketType(u8),
    /// The `data` of a wire packet is not a non-empty array.
    #[error("packet data must be a non-empty array")]
    EmptyData,
    /// The first element of `data` is not a string.
    #[error("event name must be a string")]
    EventName,
    /// JSON data that has no msgpack form.
    #[error("data not convertible to msgpack")]
    Data(#[from] rmpv::ext::Error),
}

/// Converts socketioxide broadcast options to Node `opts`.
///
/// Returns `None` when the options select no socket at all (no rooms, no `Broadcast` flag,
/// no `sid`): there is nothing to publish.
///
/// * `rooms` / `except` are copied.
/// * With the `Broadcast` flag the sender `sid` goes into `except`, as Node does for
///   `socket.broadcast` / `socket.to()`.
/// * A single-socket target (`sid` without `Broadcast` and without rooms, e.g. a
///   `RemoteSocket`) becomes `rooms: [sid]`: Node sockets are in their own id room, and our
///   receiver resolves socket-id rooms to sockets (see `FanoutAdapter`).
/// * `Volatile` → `flags.volatile`; `ack_timeout` → `flags.timeout` (ms).
pub fn opts_to_wire(
    opts: &BroadcastOptions,
    with_flags: bool,
    ack_timeout_ms: Option<u64>,
) -> Option<WireOpts> {
    let broadcast = opts.has_flag(BroadcastFlags::Broadcast);
    let mut rooms: Vec<String> = opts.rooms.iter().map(|r| r.to_string()).collect();
    let mut except: Vec<String> = Vec::with_capacity(opts.except.len() + 1);
    for r in &opts.except {
        if !except.iter().any(|e| e == r) {
            except.push(r.to_string());
        }
    }
    match (broadcast, opts.sid) {
        (true, Some(sid)) => {
            let sid = sid.to_string();
            if !except.contains(&sid) {
                except.push(sid);
            }
        }
        (false, Some(sid)) if rooms.is_empty() => rooms.push(sid.to_string()),
        (false, None) if rooms.is_empty() => return None,
        _ => {}
    }
    let flags = with_flags.then(|| WireFlags {
        volatile: opts.has_flag(BroadcastFlags::Volatile).then_some(true),
        timeout: ack_timeout_ms,
        ..Default::default()
    });
    Some(WireOpts {
        rooms,
        except,
        flags,
    })
}

/// Builds local broadcast options from Node `opts` (the "fast path": every target is a
/// room or the whole namespace).
pub fn wire_to_opts(opts: &WireOpts, keep_flags: bool) -> BroadcastOptions {
    let mut out = BroadcastOptions::default();
    out.add_flag(BroadcastFlags::Broadcast);
    out.rooms = opts.rooms.iter().map(|r| r.clone().into()).collect();
    out.except = opts.except.iter().map(|r| r.clone().into()).collect();
    if keep_flags && opts.flags.as_ref().and_then(|f| f.volatile) == Some(true) {
        out.add_flag(BroadcastFlags::Volatile);
    }
    out
}

/// Serializes `[event, ...args]` as a *tuple*, so the socketioxide parser expands it into
/// the packet array instead of wrapping it.
struct ArgsOut<'a>(&'a [rmpv::Value]);

impl Serialize for ArgsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.0.len())?;
        for v in self.0 {
            t.serialize_element(&Sanitized(v))?;
        }
        t.end()
    }
}

/// Serializes an [`rmpv::Value`] in a form every parser accepts: extension values
/// (e.g. a Node `Date`, ext -1) become ISO-8601 strings or nil, map keys become strings.
struct Sanitized<'a>(&'a rmpv::Value);

impl Serialize for Sanitized<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            rmpv::Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&Sanitized(v))?;
                }
                seq.end()
            }
            rmpv::Value::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(&key_string(k), &Sanitized(v))?;
                }
                map.end()
            }
            rmpv::Value::Ext(kind, data) => match ext_timestamp(*kind, data) {
                Some(date) => s.serialize_str(&date),
                None => s.serialize_unit(),
            },
            rmpv::Value::F64(f) if !f.is_finite() => s.serialize_unit(),
            rmpv::Value::F32(f) if !f.is_finite() => s.serialize_unit(),
            other => other.serialize(s),
        }
    }
}

/// JS stringifies every object key.
fn key_string(k: &rmpv::Value) -> String {
    match k {
        rmpv::Value::String(s) => s.as_str().map(str::to_owned).unwrap_or_default(),
        rmpv::Value::Integer(i) => i.to_string(),
        rmpv::Value::Boolean(b) => b.to_string(),
        rmpv::Value::Nil => "null".to_owned(),
        other => other.to_string(),
    }
}

/// Decodes a msgpack timestamp (ext -1, as notepack 3 encodes `Date`) to an ISO-8601
/// string like `JSON.stringify(date)` would produce.
fn ext_timestamp(kind: i8, data: &[u8]) -> Option<String> {
    if kind != -1 {
        return None;
    }
    let (secs, nanos): (i64, u32) = match data.len() {
        4 => (i64::from(u32::from_be_bytes(data.try_into().ok()?)), 0),
        8 => {
            let v = u64::from_be_bytes(data.try_into().ok()?);
            ((v & 0x3_ffff_ffff) as i64, (v >> 34) as u32)
        }
        12 => {
            let nanos = u32::from_be_bytes(data[0..4].try_into().ok()?);
            let secs = i64::from_be_bytes(data[4..12].try_into().ok()?);
            (secs, nanos)
        }
        _ => return None,
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        nanos / 1_000_000
    ))
}

/// Howard Hinnant's days → (year, month, day) conversion.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Deserializes a whole payload array (declared as a tuple so the parser hands over
/// every element, binary attachments included).
struct ArgsIn(Vec<rmpv::Value>);

impl<'de> Deserialize<'de> for ArgsIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ArgsIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a packet payload array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ArgsIn, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<rmpv::Value>()? {
                    out.push(v);
                }
                Ok(ArgsIn(out))
            }
        }
        d.deserialize_tuple(usize::MAX, V)
    }
}

/// First element of an ack payload.
struct FirstArg(rmpv::Value);

impl<'de> Deserialize<'de> for FirstArg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(FirstArg(rmpv::Value::deserialize(d)?))
    }
}

/// Extracts the payload value of an EVENT packet.
pub fn packet_value(packet: &Packet) -> Option<&Value> {
    match &packet.inner {
        PacketData::Event(v, _) | PacketData::BinaryEvent(v, _) => Some(v),
        _ => None,
    }
}

/// socketioxide payload → `[event, ...args]` (binary attachments inlined).
pub fn value_to_args(parser: impl Parse, value: &Value) -> Result<Vec<rmpv::Value>, ConvertError> {
    let mut value = value.clone();
    Ok(parser.decode_value::<ArgsIn>(&mut value, false)?.0)
}

/// `[event, ...args]` → socketioxide payload value (binary becomes attachments).
pub fn args_to_value(parser: impl Parse, args: &[rmpv::Value]) -> Result<Value, ConvertError> {
    Ok(parser.encode_value(&ArgsOut(args), None)?)
}

/// socketioxide packet → Node packet `{type: 2, data, nsp}`.
pub fn packet_to_wire(parser: impl Parse, packet: &Packet) -> Result<WirePacket, ConvertError> {
    let value = packet_value(packet).ok_or(ConvertError::NotAnEvent)?;
    let args = value_to_args(parser, value)?;
    Ok(WirePacket {
        kind: EVENT,
        data: rmpv::Value::Array(args),
        nsp: Some(packet.ns.to_string()),
    })
}

/// Node packet → socketioxide EVENT packet for namespace `nsp`.
pub fn wire_to_packet(
    parser: impl Parse,
    packet: &WirePacket,
    nsp: &str,
) -> Result<Packet, ConvertError> {
    if packet.kind != EVENT && packet.kind != BINARY_EVENT {
        return Err(ConvertError::PacketType(packet.kind));
    }
    let args = match &packet.data {
        rmpv::Value::Array(args) if !args.is_empty() => args,
        _ => return Err(ConvertError::EmptyData),
    };
    if !args[0].is_str() {
        return Err(ConvertError::EventName);
    }
    let value = args_to_value(parser, args)?;
    Ok(Packet::event(Str::from(nsp.to_owned()), value))
}

/// socketioxide ack payload → the first ack argument Node sends in a type-9 response.
pub fn ack_to_wire(parser: impl Parse, value: &Value) -> Result<rmpv::Value, ConvertError> {
    let mut value = value.clone();
    Ok(parser.decode_value::<FirstArg>(&mut value, false)?.0)
}

/// Node's first ack argument → socketioxide ack payload (`[arg]`).
pub fn wire_to_ack(parser: impl Parse, arg: &rmpv::Value) -> Result<Value, ConvertError> {
    Ok(parser.encode_value(&ArgsOut(std::slice::from_ref(arg)), None)?)
}

/// Converts an [`rmpv::Value`] to JSON (binary → array of numbers, like `Buffer.toJSON().data`;
/// ext dates → ISO strings). Used by [`crate::RemoteBroadcast::args_json`].
pub fn rmpv_to_json(v: &rmpv::Value) -> serde_json::Value {
    serde_json::to_value(Sanitized(v)).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use socketioxide_core::Sid;

    #[test]
    fn timestamp_ext() {
        // 2021-01-01T00:00:00Z = 1609459200
        let d = 1_609_459_200u32.to_be_bytes();
        assert_eq!(
            ext_timestamp(-1, &d).as_deref(),
            Some("2021-01-01T00:00:00.000Z")
        );
        assert_eq!(ext_timestamp(3, &d), None);
    }

    #[test]
    fn opts_mapping() {
        let mut o = BroadcastOptions::default();
        assert_eq!(opts_to_wire(&o, true, None), None);
        o.add_flag(BroadcastFlags::Broadcast);
        let w = opts_to_wire(&o, true, None).unwrap();
        assert_eq!(w.rooms, Vec::<String>::new());
        assert_eq!(w.flags, Some(WireFlags::default()));

        let sid = Sid::new();
        let mut o = BroadcastOptions::new(sid);
        o.add_flag(BroadcastFlags::Broadcast);
        o.add_flag(BroadcastFlags::Volatile);
        o.rooms.push("r1".into());
        o.except.push("r2".into());
        let w = opts_to_wire(&o, true, Some(300)).unwrap();
        assert_eq!(w.rooms, vec!["r1"]);
        assert_eq!(w.except, vec!["r2".to_string(), sid.to_string()]);
        let flags = w.flags.unwrap();
        assert_eq!(flags.volatile, Some(true));
        assert_eq!(flags.timeout, Some(300));

        // single remote socket
        let o = BroadcastOptions::new(sid);
        let w = opts_to_wire(&o, false, None).unwrap();
        assert_eq!(w.rooms, vec![sid.to_string()]);
        assert!(w.flags.is_none());

        let back = wire_to_opts(
            &WireOpts {
                rooms: vec!["a".into()],
                except: vec!["b".into()],
                flags: Some(WireFlags {
                    volatile: Some(true),
                    ..Default::default()
                }),
            },
            true,
        );
        assert!(back.has_flag(BroadcastFlags::Broadcast));
        assert!(back.has_flag(BroadcastFlags::Volatile));
        assert_eq!(back.rooms.as_slice(), ["a"]);
        assert_eq!(back.except.as_slice(), ["b"]);
    }
}
