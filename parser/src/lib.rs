//! fanout's own implementation of the `socketioxide-parser-common` API: the Socket.IO v5
//! "common" packet format, which socketioxide uses by default.
//!
//! ```text
//! <packet type>[<# of binary attachments>-][<namespace>,][<ack id>][JSON payload]
//! + one binary frame per attachment, referenced in the JSON by {"_placeholder":true,"num":n}
//! ```
//!
//! # Why this crate exists
//!
//! The workspace swaps it in for the published crate with `[patch.crates-io]`. Version
//! 0.17.3 of the published crate (the newest one compatible with socketioxide 0.18.9) reads
//! two things as `&str` borrowed from the JSON text, which serde_json cannot do for a string
//! written with escapes — and python-socketio escapes every non-ASCII character:
//!
//! * the first key of every object reached through `deserialize_any` while looking for
//!   binary placeholders, so `{"pr\u00e9nom": "Zo\u00e9"}` failed to decode into a
//!   `serde_json::Value` (also nested in a struct) or an untagged enum;
//! * the event name in `read_event`, so an event named `café` (`"caf\u00e9"`) or `a"b`
//!   (`"a\"b"`) made socketioxide close the whole connection.
//!
//! Here object keys are read borrowed-or-owned, and an event name with escapes is decoded
//! once when the packet is decoded and kept in front of the payload (see `name.rs`), so
//! `read_event` can still lend it out.
//!
//! The public API is the published crate's: [`CommonParser`], which implements
//! [`Parse`]. Write-ups of the format:
//! <https://socket.io/docs/v4/socket-io-protocol/>.

use std::sync::{Mutex, MutexGuard, PoisonError, atomic::Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::Error as _};
use socketioxide_core::{
    Str, Value,
    packet::Packet,
    parser::{Parse, ParseConfig, ParseError, ParserError, ParserState, PartialBinPacket},
};

mod de;
mod name;
mod packet;
mod ser;
#[cfg(test)]
mod tests;

/// The JSON text `["name", …args]` of a decoded EVENT / BINARY_EVENT payload, exactly as the
/// client sent it (without the unescaped event name this parser may carry in front of it).
/// For an application that decodes events itself: fanout's namespace `/` turns it into owned
/// values in one pass. Not part of upstream's API.
pub fn event_json(payload: &str) -> &str {
    name::json_of(payload)
}

/// Parses and serializes the Socket.IO "common" packet format (JSON text packets plus
/// binary attachment frames). Stateless: per-connection state lives in [`ParserState`].
#[derive(Debug, Default, Clone, Copy)]
pub struct CommonParser;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn text_of(value: &Value) -> Result<&str, ParserError> {
    value.as_str().map(|s| &**s).ok_or_else(|| {
        ParserError::new(serde_json::Error::custom(
            "the common parser only handles text payloads",
        ))
    })
}

impl Parse for CommonParser {
    fn encode(self, packet: Packet) -> Value {
        packet::encode(packet)
    }

    fn decode_str(
        self,
        config: &ParseConfig,
        state: &ParserState,
        data: Str,
    ) -> Result<Packet, ParseError> {
        let mut partial = lock(&state.partial_bin_packet);
        // The attachments of a binary packet must follow it directly.
        if partial.is_some() {
            return Err(ParseError::UnexpectedStringPacket);
        }
        let (mut packet, expected) = packet::decode(data)?;
        if !packet.inner.is_binary() || expected == 0 {
            return Ok(packet);
        }
        if expected > config.max_incoming_binaries {
            return Err(ParseError::TooManyAttachments {
                got: expected,
                max: config.max_incoming_binaries,
            });
        }
        if let Some(bins) = packet::attachments_mut(&mut packet) {
            // The count comes from the client: no big allocation before the data arrives.
            bins.reserve(expected.min(16));
        }
        state.incoming_binary_cnt.store(expected, Ordering::Release);
        *partial = Some(PartialBinPacket::new(packet));
        Err(ParseError::NeedsMoreBinaryData)
    }

    fn decode_bin(
        self,
        config: &ParseConfig,
        state: &ParserState,
        data: Bytes,
    ) -> Result<Packet, ParseError> {
        let mut slot = lock(&state.partial_bin_packet);
        let Some(partial) = slot.as_mut() else {
            return Err(ParseError::UnexpectedBinaryPacket);
        };
        if partial.initial_packet_recv.elapsed() > config.packet_completion_timeout {
            *slot = None;
            return Err(ParseError::TimeoutWhileWaitingAttachments);
        }
        let Some(bins) = packet::attachments_mut(&mut partial.packet) else {
            *slot = None;
            return Err(ParseError::UnexpectedBinaryPacket);
        };
        let current = bins.iter().map(Bytes::len).sum::<usize>() + data.len();
        if current > config.max_incoming_binary_buf_size {
            *slot = None;
            return Err(ParseError::AttachmentsTooHeavy {
                current,
                max: config.max_incoming_binary_buf_size,
            });
        }
        // A copy, so the packet does not pin the transport's (larger) read buffer.
        bins.push_back(Bytes::copy_from_slice(&data));
        if bins.len() < state.incoming_binary_cnt.load(Ordering::Acquire) {
            return Err(ParseError::NeedsMoreBinaryData);
        }
        slot.take()
            .map(|p| p.packet)
            .ok_or(ParseError::UnexpectedBinaryPacket)
    }

    fn encode_value<T: ?Sized + Serialize>(
        self,
        data: &T,
        event: Option<&str>,
    ) -> Result<Value, ParserError> {
        ser::to_value(data, event).map_err(ParserError::new)
    }

    fn decode_value<'de, T: Deserialize<'de>>(
        self,
        value: &'de mut Value,
        with_event: bool,
    ) -> Result<T, ParserError> {
        de::from_value(value, with_event).map_err(ParserError::new)
    }

    /// Without a payload (a CONNECT with no auth) this decodes `{}`, as the JS server does.
    fn decode_default<'de, T: Deserialize<'de>>(
        self,
        value: Option<&'de Value>,
    ) -> Result<T, ParserError> {
        let text = match value {
            Some(value) => text_of(value)?,
            None => "{}",
        };
        serde_json::from_str(name::json_of(text)).map_err(ParserError::new)
    }

    fn encode_default<T: ?Sized + Serialize>(self, data: &T) -> Result<Value, ParserError> {
        let json = serde_json::to_string(data).map_err(ParserError::new)?;
        Ok(Value::Str(Str::from(json), None))
    }

    fn read_event(self, value: &Value) -> Result<&str, ParserError> {
        name::read(text_of(value)?).ok_or_else(|| {
            ParserError::new(serde_json::Error::custom(
                "the payload does not start with an event name",
            ))
        })
    }
}
