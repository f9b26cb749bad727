//! [`Wire`]: which protocol a namespace speaks — classic (`PUBLISH`/`PSUBSCRIBE`, one
//! Redis) or sharded (`SPUBLISH`/`SSUBSCRIBE`, Redis Cluster). It decides the channels a
//! message goes to and encodes/decodes it; the adapter's sending side and the receive loop
//! work on the classic wire types only and never look at the protocol themselves.

use crate::driver::{Inbound, SubKey};
use crate::protocol::sharded::{self, ShardedChannels, ShardedMessage};
use crate::protocol::{
    BroadcastMessage, Channels, DecodeError, EncodeError, WireRequest, WireResponse, decode_sniff,
};

/// The protocol of one namespace, with its channel names.
#[derive(Debug, Clone)]
pub(crate) enum Wire {
    /// The classic protocol of `@socket.io/redis-adapter` (see `adapter/README.md`).
    Classic(Channels),
    /// The sharded protocol of `createShardedAdapter` (see `adapter/docs/SHARDED.md`).
    Sharded {
        channels: ShardedChannels,
        /// The namespace, carried in every envelope.
        nsp: String,
        /// Our uid, carried in every envelope.
        uid: String,
    },
}

/// A message read from one of the namespace's channels.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A broadcast without acks.
    Broadcast(BroadcastMessage),
    /// A request (classic types 0–7).
    Request(WireRequest),
    /// A response to one of our requests.
    Response(WireResponse),
    /// Nothing to do (our own message, another namespace, a type nobody sends).
    Skip,
}

/// Why an inbound message was not decoded, with the kind label it is counted under.
pub(crate) struct IncomingError {
    /// `broadcast`, `request` or `response` (classic: by channel; sharded: `message`).
    pub kind: &'static str,
    /// The cause.
    pub err: Box<dyn std::error::Error + Send + Sync>,
}

impl Wire {
    /// The protocol for namespace `nsp` of node `uid` with channel prefix `key`.
    pub(crate) fn new(sharded: bool, key: &str, nsp: &str, uid: &str) -> Self {
        if sharded {
            Wire::Sharded {
                channels: ShardedChannels::new(key, nsp, uid),
                nsp: nsp.to_owned(),
                uid: uid.to_owned(),
            }
        } else {
            Wire::Classic(Channels::new(key, nsp, uid))
        }
    }

    /// What a namespace subscribes at init.
    pub(crate) fn subscriptions(&self) -> Vec<SubKey> {
        match self {
            Wire::Classic(ch) => vec![
                SubKey::Pattern(ch.pattern.clone()),
                SubKey::Channel(ch.request.clone()),
                SubKey::Channel(ch.response.clone()),
                SubKey::Channel(ch.own_response.clone()),
            ],
            Wire::Sharded { channels, .. } => vec![
                SubKey::Channel(channels.main.clone()),
                SubKey::Channel(channels.own_response.clone()),
            ],
        }
    }

    /// The channel requests go to; its subscriber count is the server count.
    pub(crate) fn request_channel(&self) -> &str {
        match self {
            Wire::Classic(ch) => &ch.request,
            Wire::Sharded { channels, .. } => &channels.main,
        }
    }

    /// Encodes a request.
    pub(crate) fn encode_request(&self, req: &WireRequest) -> Result<Vec<u8>, EncodeError> {
        match self {
            Wire::Classic(_) => req.encode(),
            Wire::Sharded { nsp, .. } => sharded::encode_request(req, nsp),
        }
    }

    /// The channel and bytes of a broadcast without acks.
    pub(crate) fn broadcast(
        &self,
        msg: &BroadcastMessage,
    ) -> Result<(String, Vec<u8>), EncodeError> {
        match self {
            Wire::Classic(ch) => Ok((ch.broadcast_channel(&msg.2.rooms), msg.encode()?)),
            Wire::Sharded { channels, nsp, .. } => Ok((
                channels.broadcast_channel(&msg.2.rooms),
                sharded::encode_broadcast(msg, nsp)?,
            )),
        }
    }

    /// The channel and bytes of a response to a request from `to` (None: an emitter).
    /// Classic: the shared response channel unless `specific` (Node's
    /// `publishOnSpecificResponseChannel`) or `shared_only` (Node answers
    /// server-side-emit on the shared channel); sharded: always the requester's channel.
    pub(crate) fn response(
        &self,
        res: &WireResponse,
        to: Option<&str>,
        specific: bool,
    ) -> Result<(String, Vec<u8>), EncodeError> {
        match self {
            Wire::Classic(ch) => {
                let channel = match to {
                    Some(uid) if specific => ch.response_for(uid),
                    _ => ch.response.clone(),
                };
                Ok((channel, res.encode()?))
            }
            Wire::Sharded { channels, nsp, uid } => Ok((
                channels.response_for(to.unwrap_or_default()),
                sharded::encode_response(res, uid, nsp)?,
            )),
        }
    }

    /// Decodes a message read on `msg.channel`, skipping our own (`uid`) and, in sharded
    /// mode, other namespaces' (Node does the same).
    pub(crate) fn decode(&self, msg: &Inbound, uid: &str) -> Result<Incoming, IncomingError> {
        let fail = |kind, err: DecodeError| IncomingError {
            kind,
            err: Box::new(err),
        };
        match self {
            Wire::Classic(ch) => {
                if msg.channel == ch.request {
                    decode_sniff::<WireRequest>(&msg.payload)
                        .map(Incoming::Request)
                        .map_err(|e| fail("request", e))
                } else if msg.channel == ch.response || msg.channel == ch.own_response {
                    decode_sniff::<WireResponse>(&msg.payload)
                        .map(Incoming::Response)
                        .map_err(|e| fail("response", e))
                } else if ch.is_broadcast(&msg.channel) {
                    BroadcastMessage::decode(&msg.payload)
                        .map(Incoming::Broadcast)
                        .map_err(|e| fail("broadcast", e))
                } else {
                    Ok(Incoming::Skip)
                }
            }
            Wire::Sharded { nsp, .. } => {
                let env = sharded::decode(&msg.payload).map_err(|e| IncomingError {
                    kind: "message",
                    err: Box::new(e),
                })?;
                if env.uid == uid {
                    return Ok(Incoming::Skip);
                }
                Ok(match env.message {
                    ShardedMessage::Response(res) => Incoming::Response(res),
                    _ if env.nsp.as_deref() != Some(nsp.as_str()) => Incoming::Skip,
                    ShardedMessage::Broadcast(b) => Incoming::Broadcast(b),
                    ShardedMessage::Request(r) => Incoming::Request(r),
                    ShardedMessage::Ignored(_) => Incoming::Skip,
                })
            }
        }
    }

    /// True in sharded mode.
    pub(crate) fn is_sharded(&self) -> bool {
        matches!(self, Wire::Sharded { .. })
    }
}
