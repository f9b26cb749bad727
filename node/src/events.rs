//! The events channel (`<prefix>:events`) and the revocations channel. Any producer — this
//! node's model writes, a LoopBack `after save` hook, a cron job — publishes JSON
//! `{ "topic", "data" }` or `{ "model", "method", "id", "data" }`; every node decodes it
//! ([`decode_event`]) and delivers it to its local subscribers ([`deliver_local`]).
//! Malformed messages are counted and logged; the listener never stops on one.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::delivery::TopicMessage;
use crate::delivery::outbound::CloseReason;
use crate::error::AppError;
use crate::metrics::PublishSource;
use crate::state::AppState;
use crate::store::{TokenHash, keys};
use crate::topics::Topic;

/// Unknown fields are ignored, so producers may add their own metadata.
#[derive(Deserialize)]
struct RawEvent {
    topic: Option<String>,
    model: Option<String>,
    method: Option<String>,
    id: Option<Value>,
    #[serde(default)]
    data: Value,
}

/// Decodes an events-channel message into the topic message to deliver.
pub fn decode_event(payload: &[u8]) -> Result<TopicMessage, AppError> {
    let (topic, data) = decode_topic_and_data(payload)?;
    TopicMessage::new(topic, data)
}

fn decode_topic_and_data(payload: &[u8]) -> Result<(Topic, Value), AppError> {
    let raw: RawEvent = serde_json::from_slice(payload)
        .map_err(|err| AppError::bad_request(format!("not an event: {err}")))?;
    match (raw.topic, raw.model, raw.method) {
        (Some(topic), None, None) => Ok((Topic::parse(&topic)?, raw.data)),
        (None, Some(model), Some(method)) => {
            let id = match raw.id {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(_) => return Err(AppError::invalid("id must be a string or number")),
            };
            let method = method.to_ascii_uppercase();
            if method != "POST" && id.is_none() {
                return Err(AppError::invalid("PUT and DELETE events need an id"));
            }
            let id = if method == "POST" { None } else { id };
            Ok((Topic::for_model(&model, &method, id.as_deref())?, raw.data))
        }
        _ => Err(AppError::bad_request(
            "expected { topic, data } or { model, method, id, data }",
        )),
    }
}

/// Publishes a model event (from a REST write) on the events channel.
pub async fn publish_model_event(
    state: &AppState,
    model: &str,
    method: &str,
    id: u64,
    data: &Value,
) -> Result<(), AppError> {
    let payload = json!({ "model": model, "method": method, "id": id.to_string(), "data": data });
    let channel = keys::events_channel(&state.cfg.prefix);
    state
        .bus
        .publish(&channel, payload.to_string().into_bytes())
        .await
}

/// Delivers every message of the events channel to local subscribers, until the bus closes.
/// Anyone who can publish on the channel can send garbage: every malformed message is counted,
/// but at most one per second is logged.
pub async fn run_events_listener(state: AppState, mut rx: mpsc::Receiver<Bytes>) {
    let malformed_logs =
        governor::RateLimiter::direct(governor::Quota::per_second(std::num::NonZeroU32::MIN));
    while let Some(payload) = rx.recv().await {
        let received = Instant::now();
        match decode_event(&payload) {
            Ok(msg) => {
                state.metrics.topic_published(PublishSource::Events);
                state.delivery.deliver_local(&msg, received);
            }
            Err(err) => {
                state.metrics.bad_input("events", err.code.as_str());
                if malformed_logs.check().is_ok() {
                    tracing::warn!(%err, bytes = payload.len(), "malformed message on the events channel (further ones within 1 s: counted in fanout_bad_input_total only)");
                }
            }
        }
    }
    tracing::info!("events listener stopped");
}

/// Tells every node that a token died, so its sockets are disconnected everywhere.
pub async fn publish_revocation(state: &AppState, token: &TokenHash) -> Result<(), AppError> {
    let channel = keys::revocations_channel(&state.cfg.prefix);
    state
        .bus
        .publish(&channel, token.0.clone().into_bytes())
        .await
}

/// Ends the local sessions of every revoked token (and forgets it in the token cache), until
/// the bus closes. A lost message is healed by re-validation ([`crate::sessions`]).
pub async fn run_revocations_listener(state: AppState, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(payload) = rx.recv().await {
        let hash = match std::str::from_utf8(&payload) {
            Ok(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => h,
            _ => {
                state.metrics.bad_input("revocations", "bad_request");
                tracing::warn!(
                    bytes = payload.len(),
                    "malformed message on the revocations channel"
                );
                continue;
            }
        };
        let hash = TokenHash(hash.to_string());
        state.stores.tokens.invalidate(&hash);
        let kicked = state.connections.kick(&hash, CloseReason::Revoked);
        if kicked > 0 {
            tracing::info!(kicked, "disconnected connections of a revoked token");
        }
        state.connections.revocation_applied(&hash);
    }
    tracing::info!("revocations listener stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn decodes_both_forms() {
        let m = decode_event(br#"{"topic":"news","data":{"a":1}}"#).unwrap();
        assert_eq!((m.topic().as_str(), m.data()), ("news", &json!({"a":1})));
        let m =
            decode_event(br#"{"data":{"pr\u00e9nom":"Zo\u00e9"},"topic":"caf\u00e9"}"#).unwrap();
        assert_eq!(
            (m.topic().as_str(), m.data()),
            ("café", &json!({"prénom": "Zoé"}))
        );
        let m = decode_event(br#"{"model":"Order","method":"PUT","id":"42","data":{}}"#).unwrap();
        assert_eq!(m.topic().as_str(), "/Order/42/PUT");
        let m = decode_event(br#"{"model":"Order","method":"delete","id":42}"#).unwrap();
        assert_eq!(m.topic().as_str(), "/Order/42/DELETE");
        let m = decode_event(br#"{"model":"Order","method":"POST","id":"7","data":{}}"#).unwrap();
        assert_eq!(m.topic().as_str(), "/Order/POST");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            b"{\"topic\":\"\"}",
            b"{\"topic\":5}",
            b"{\"topic\":\"a\",\"model\":\"B\",\"method\":\"POST\"}",
            b"{\"model\":\"Order\",\"method\":\"PUT\"}",
            b"{\"model\":\"Order\",\"method\":\"GET\",\"id\":1}",
            b"{\"model\":\"9x\",\"method\":\"POST\"}",
        ] {
            let err = decode_event(bad).unwrap_err();
            assert!(
                matches!(
                    err.code,
                    Code::BadRequest | Code::ValidationFailed | Code::InvalidTopic
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
