//! Packet framing: `<type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]`.

use std::collections::VecDeque;

use bytes::Bytes;
use socketioxide_core::{
    Str, Value,
    packet::{Packet, PacketData},
    parser::ParseError,
};

use crate::name;

/// Payload sent for a [`Value::Bytes`] given to the text encoder (never produced by this
/// crate): the bytes travel as the packet's single attachment.
const BYTES_PAYLOAD: &str = r#"[{"_placeholder":true,"num":0}]"#;

/// Encodes a packet. The JSON payload is copied once, after the header.
pub(crate) fn encode(packet: Packet) -> Value {
    let Packet { inner, ns } = packet;
    let mut kind = inner.index();
    let (payload, ack) = match inner {
        PacketData::Connect(v) => (v, None),
        PacketData::Disconnect => (None, None),
        PacketData::ConnectError(message) => {
            let json = serde_json::json!({ "message": message }).to_string();
            (Some(Value::Str(Str::from(json), None)), None)
        }
        PacketData::Event(v, ack) | PacketData::BinaryEvent(v, ack) => (Some(v), ack),
        PacketData::EventAck(v, ack) | PacketData::BinaryAck(v, ack) => (Some(v), Some(ack)),
    };
    let (text, bins) = match payload {
        Some(Value::Str(text, bins)) => (Some(text), bins),
        Some(Value::Bytes(b)) => (Some(Str::from(BYTES_PAYLOAD)), Some(VecDeque::from([b]))),
        None => (None, None),
    };
    let json = text.as_deref().map_or("", name::json_of);
    let attachments = bins.as_ref().map_or(0, VecDeque::len);
    // EVENT / ACK carrying attachments go out as BINARY_EVENT / BINARY_ACK.
    if attachments > 0 && (kind == 2 || kind == 3) {
        kind += 3;
    }

    let mut out = String::with_capacity(1 + 21 + ns.len() + 2 + 20 + json.len());
    out.push(char::from(b'0' + kind as u8));
    let mut num = itoa::Buffer::new();
    if kind == 5 || kind == 6 {
        out.push_str(num.format(attachments));
        out.push('-');
    }
    if !ns.is_empty() && &*ns != "/" {
        if !ns.starts_with('/') {
            out.push('/');
        }
        out.push_str(&ns);
        out.push(',');
    }
    if let Some(ack) = ack {
        out.push_str(num.format(ack));
    }
    out.push_str(json);
    Value::Str(Str::from(out), bins)
}

fn digits(b: &[u8], from: usize) -> usize {
    b.get(from..)
        .map_or(0, |s| s.iter().take_while(|c| c.is_ascii_digit()).count())
}

/// Decodes a text packet. Returns the packet and the number of binary attachments it
/// announces (0 for non-binary packets). Every slice taken here starts and ends next to an
/// ASCII byte, so it is on a char boundary.
pub(crate) fn decode(data: Str) -> Result<(Packet, usize), ParseError> {
    let b = data.as_bytes();
    let kind = match b.first() {
        Some(&k @ b'0'..=b'6') => k,
        _ => return Err(ParseError::InvalidPacketType),
    };
    let mut pos = 1;
    let binary = kind == b'5' || kind == b'6';

    let mut attachments = 0;
    if binary {
        let n = digits(b, pos);
        if n == 0 || b.get(pos + n) != Some(&b'-') {
            return Err(ParseError::InvalidAttachments);
        }
        attachments = data[pos..pos + n]
            .parse()
            .map_err(|_| ParseError::InvalidAttachments)?;
        pos += n + 1;
    }

    let ns = if b.get(pos) == Some(&b'/') {
        // The namespace runs to the next ',' (or, for e.g. `1/admin`, to the end).
        let end = b[pos..]
            .iter()
            .position(|&c| c == b',')
            .map_or(b.len(), |i| pos + i);
        let ns = data.slice(pos..end);
        pos = b.len().min(end + 1);
        ns
    } else {
        Str::from("/")
    };

    let mut ack = None;
    if matches!(kind, b'2' | b'3' | b'5' | b'6') {
        let n = digits(b, pos);
        if n > 0 {
            let id = data[pos..pos + n]
                .parse::<i64>()
                .map_err(|_| ParseError::InvalidAckId)?;
            ack = Some(id);
            pos += n;
        }
    }

    let payload = data.slice(pos..);
    let inner = match kind {
        b'0' => PacketData::Connect((!payload.is_empty()).then(|| Value::Str(payload, None))),
        b'1' => PacketData::Disconnect,
        b'2' => PacketData::Event(event_payload(payload)?, ack),
        b'3' => PacketData::EventAck(
            Value::Str(payload, None),
            ack.ok_or(ParseError::InvalidAckId)?,
        ),
        b'4' => PacketData::ConnectError(connect_error(&payload)?),
        b'5' => PacketData::BinaryEvent(event_payload(payload)?, ack),
        _ => PacketData::BinaryAck(
            Value::Str(payload, None),
            ack.ok_or(ParseError::InvalidAckId)?,
        ),
    };
    Ok((Packet { inner, ns }, attachments))
}

/// An event payload must open with its name; a name with escapes is decoded here, once.
fn event_payload(payload: Str) -> Result<Value, ParseError> {
    let text = match name::prepare(&payload).ok_or(ParseError::InvalidEventName)? {
        None => payload,
        Some(with_name) => Str::from(with_name),
    };
    Ok(Value::Str(text, None))
}

/// CONNECT_ERROR payload: `{"message": "..."}` (v5) or a bare JSON string (v4).
fn connect_error(payload: &str) -> Result<String, ParseError> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Payload {
        Object { message: String },
        Text(String),
    }
    match serde_json::from_str(payload) {
        Ok(Payload::Object { message } | Payload::Text(message)) => Ok(message),
        Err(_) => Err(ParseError::InvalidData),
    }
}

/// The attachment list of a (partial) binary packet.
pub(crate) fn attachments_mut(packet: &mut Packet) -> Option<&mut VecDeque<Bytes>> {
    match &mut packet.inner {
        PacketData::BinaryEvent(Value::Str(_, bins), _)
        | PacketData::BinaryAck(Value::Str(_, bins), _) => {
            Some(bins.get_or_insert_with(VecDeque::new))
        }
        _ => None,
    }
}
