//! Requests from other nodes, decoded once into [`Request`]: every field a request type
//! needs is checked here, so the `recv_*` functions never look at an `Option`.

use crate::protocol::{RequestType, WireOpts, WirePacket, WireRequest};

/// A request read from `key-request#nsp#`.
#[derive(Debug)]
pub(crate) struct Request {
    /// Sender uid (absent in emitter join/leave/disconnect requests).
    pub uid: Option<String>,
    /// What is asked.
    pub kind: RequestKind,
}

/// Which sockets a join/leave/disconnect request targets.
#[derive(Debug)]
pub(crate) enum Selection {
    /// The 8.x form: room selection, no answer.
    Opts(WireOpts),
    /// The legacy (≤7.x) single-socket form: applied only if the socket is ours, answered
    /// with an empty `{ requestId }` when the request has an id.
    Socket {
        sid: String,
        request_id: Option<String>,
    },
}

/// One variant per request type (types 8 and 9 are responses, see [`RequestError`]).
#[derive(Debug)]
pub(crate) enum RequestKind {
    /// 0 `SOCKETS`: ids of the local sockets in `rooms`.
    Sockets {
        request_id: String,
        rooms: Vec<String>,
    },
    /// 1 `ALL_ROOMS`: every local room.
    AllRooms { request_id: String },
    /// 2 `REMOTE_JOIN` / 3 `REMOTE_LEAVE`.
    Rooms {
        join: bool,
        selection: Selection,
        rooms: Vec<String>,
    },
    /// 4 `REMOTE_DISCONNECT`.
    Disconnect { selection: Selection },
    /// 5 `REMOTE_FETCH`: details of the selected local sockets.
    Fetch { request_id: String, opts: WireOpts },
    /// 6 `SERVER_SIDE_EMIT`: answered with `null` when the sender waits for acks.
    ServerSideEmit { request_id: Option<String> },
    /// 7 `BROADCAST` with acks: answered with the client count, then one response per ack.
    BroadcastWithAck {
        request_id: String,
        packet: WirePacket,
        opts: WireOpts,
    },
}

/// Why a decoded [`WireRequest`] is not a usable request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    /// A type number Node does not define.
    #[error("unknown request type {0}")]
    UnknownType(u8),
    /// A response type (8, 9) published on the request channel.
    #[error("response type {0} on the request channel")]
    ResponseType(u8),
    /// A field the request type needs is absent.
    #[error("{kind} request without {field}")]
    Missing {
        /// The request type label.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
}

impl TryFrom<WireRequest> for Request {
    type Error = RequestError;

    fn try_from(req: WireRequest) -> Result<Self, RequestError> {
        let kind = RequestType::from_u8(req.kind).ok_or(RequestError::UnknownType(req.kind))?;
        let missing = |field| RequestError::Missing {
            kind: kind.label(),
            field,
        };
        let WireRequest {
            uid,
            request_id,
            packet,
            opts,
            rooms,
            sid,
            room,
            ..
        } = req;
        let kind = match kind {
            RequestType::Sockets => RequestKind::Sockets {
                request_id: request_id.ok_or_else(|| missing("requestId"))?,
                rooms: rooms.unwrap_or_default(),
            },
            RequestType::AllRooms => RequestKind::AllRooms {
                request_id: request_id.ok_or_else(|| missing("requestId"))?,
            },
            RequestType::RemoteJoin | RequestType::RemoteLeave => {
                let join = kind == RequestType::RemoteJoin;
                match (opts, sid, room) {
                    (Some(opts), _, _) => RequestKind::Rooms {
                        join,
                        selection: Selection::Opts(opts),
                        rooms: rooms.unwrap_or_default(),
                    },
                    (None, Some(sid), Some(room)) => RequestKind::Rooms {
                        join,
                        selection: Selection::Socket { sid, request_id },
                        rooms: vec![room],
                    },
                    _ => return Err(missing("opts")),
                }
            }
            RequestType::RemoteDisconnect => match (opts, sid) {
                (Some(opts), _) => RequestKind::Disconnect {
                    selection: Selection::Opts(opts),
                },
                (None, Some(sid)) => RequestKind::Disconnect {
                    selection: Selection::Socket { sid, request_id },
                },
                _ => return Err(missing("opts")),
            },
            RequestType::RemoteFetch => RequestKind::Fetch {
                request_id: request_id.ok_or_else(|| missing("requestId"))?,
                opts: opts.unwrap_or_default(),
            },
            RequestType::ServerSideEmit => RequestKind::ServerSideEmit { request_id },
            RequestType::Broadcast => RequestKind::BroadcastWithAck {
                request_id: request_id.ok_or_else(|| missing("requestId"))?,
                packet: packet.ok_or_else(|| missing("packet"))?,
                opts: opts.ok_or_else(|| missing("opts"))?,
            },
            RequestType::BroadcastClientCount | RequestType::BroadcastAck => {
                return Err(RequestError::ResponseType(req.kind));
            }
        };
        Ok(Request { uid, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode_sniff;

    fn parse(json: &str) -> Result<Request, RequestError> {
        Request::try_from(decode_sniff::<WireRequest>(json.as_bytes()).unwrap())
    }

    #[test]
    fn typed_requests() {
        let r = parse(r#"{"uid":"u","requestId":"1","type":1}"#).unwrap();
        assert!(matches!(r.kind, RequestKind::AllRooms { ref request_id } if request_id == "1"));
        let r = parse(r#"{"type":2,"opts":{"rooms":["a"]},"rooms":["b"]}"#).unwrap();
        assert!(r.uid.is_none());
        assert!(matches!(
            r.kind,
            RequestKind::Rooms { join: true, selection: Selection::Opts(_), ref rooms } if rooms == &["b"]
        ));
        let r = parse(r#"{"uid":"u","requestId":"9","type":3,"sid":"s","room":"r"}"#).unwrap();
        assert!(matches!(
            r.kind,
            RequestKind::Rooms { join: false, selection: Selection::Socket { .. }, ref rooms } if rooms == &["r"]
        ));
    }

    #[test]
    fn incomplete_requests_are_errors() {
        assert!(matches!(
            parse(r#"{"uid":"u","type":1}"#),
            Err(RequestError::Missing {
                field: "requestId",
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"uid":"u","type":4}"#),
            Err(RequestError::Missing { field: "opts", .. })
        ));
        assert!(matches!(
            parse(r#"{"uid":"u","requestId":"1","type":7}"#),
            Err(RequestError::Missing {
                field: "packet",
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"type":42}"#),
            Err(RequestError::UnknownType(42))
        ));
        assert!(matches!(
            parse(r#"{"requestId":"1","type":8}"#),
            Err(RequestError::ResponseType(8))
        ));
    }
}
