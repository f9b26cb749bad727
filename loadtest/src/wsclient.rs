//! A lean client for fanout's plain-WebSocket endpoint `/ws` (docs/PROTOCOL.md): requests
//! `{ "type", "callback_id", "data" }` answered by `{ "callback_id", "result", "data" | "error" }`,
//! pushes `{ "type": "event", "topic", "data" }`. It does what the `connect` workload needs:
//! authenticate, send a request and wait for its reply, then sit idle reading.

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{ClientError, ConnectOptions, Timings, WsStream, open_websocket, with_timeout};

/// An authenticated `/ws` connection.
pub struct WsConnection {
    ws: WsStream,
    next_id: u64,
}

/// Opens `/ws` on `opts.url` and authenticates with the token of `opts.auth`
/// (`{ "token": … }`); a refused token is [`ClientError::Unauthorized`]. The timings have no
/// Engine.IO step: `eio_open` is the upgrade.
pub async fn connect_ws(opts: &ConnectOptions) -> Result<(WsConnection, Timings), ClientError> {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let (ws, tcp) = open_websocket(opts, "/ws", deadline).await?;
    let websocket = start.elapsed();
    let mut conn = WsConnection { ws, next_id: 1 };
    let token = opts
        .auth
        .as_ref()
        .and_then(|a| a.get("token"))
        .cloned()
        .unwrap_or(Value::Null);
    with_timeout(
        deadline,
        "authenticate",
        conn.request("authenticate", json!({ "token": token })),
    )
    .await
    .map_err(|e| match e {
        ClientError::Protocol(msg) => ClientError::Unauthorized(msg),
        other => other,
    })?;
    let total = start.elapsed();
    Ok((
        conn,
        Timings {
            tcp,
            websocket,
            eio_open: websocket,
            total,
        },
    ))
}

impl WsConnection {
    /// Sends request `kind` with `data` and waits for its reply (pushes in between are
    /// skipped); `result: false` is [`ClientError::Protocol`] with the error's text.
    pub async fn request(&mut self, kind: &str, data: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = json!({ "type": kind, "callback_id": id, "data": data }).to_string();
        self.ws.send(Message::text(frame)).await?;
        loop {
            let text = self.next_text().await?;
            let Ok(reply) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            if reply.get("callback_id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            return if reply.get("result").and_then(Value::as_bool) == Some(true) {
                Ok(reply.get("data").cloned().unwrap_or(Value::Null))
            } else {
                Err(ClientError::Protocol(
                    reply
                        .get("error")
                        .map_or_else(|| text.to_string(), Value::to_string),
                ))
            };
        }
    }

    /// Reads (and drops) frames until the connection ends; answers WebSocket pings.
    pub async fn idle(&mut self) -> ClientError {
        loop {
            if let Err(e) = self.next_text().await {
                return e;
            }
        }
    }

    /// Sends a WebSocket close frame.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        self.ws.send(Message::Close(None)).await?;
        Ok(())
    }

    async fn next_text(
        &mut self,
    ) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes, ClientError> {
        loop {
            match self.ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Err(ClientError::Closed),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(_)) => continue,
            }
        }
    }
}
