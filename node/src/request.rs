//! The client protocol's requests, parsed once into [`Request`] whatever the transport: a
//! Socket.IO event (`name`, first argument) or a `/ws` frame (`{ type, callback_id, data }`).
//! Everything after parsing works on the typed value; nothing dispatches on strings again.

use serde_json::Value;

use crate::auth::Credentials;
use crate::error::AppError;
use crate::topics::{Topic, topic_from_request};

/// One client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `authentication` / `authenticate` with `{ token }` or `{ id, userId }`.
    Authenticate(Credentials),
    /// `subscribe` `"topic"`, `{ topic }` or `{ collectionName, method, modelId? }`.
    Subscribe(Topic),
    /// `unsubscribe`, same argument shapes.
    Unsubscribe(Topic),
    /// `unsubscribeAll`.
    UnsubscribeAll,
    /// `publish` `{ topic, data }`.
    Publish {
        /// Where to.
        topic: Topic,
        /// What (any JSON; `null` when absent).
        data: Value,
    },
    /// Any other name: a method call (RPC); `unknown_method` if there is none of that name.
    Call {
        /// The method name.
        method: String,
        /// Its argument (`null` when absent).
        args: Value,
    },
}

impl Request {
    /// Parses a request from its name and argument.
    pub fn parse(name: &str, arg: Value) -> Result<Request, AppError> {
        Ok(match name {
            "authentication" | "authenticate" => {
                Request::Authenticate(Credentials::from_value(&arg))
            }
            "subscribe" => Request::Subscribe(topic_from_request(&arg)?),
            "unsubscribe" => Request::Unsubscribe(topic_from_request(&arg)?),
            "unsubscribeAll" => Request::UnsubscribeAll,
            "publish" => {
                let (topic, data) = publish_request(arg)?;
                Request::Publish { topic, data }
            }
            _ => Request::Call {
                method: name.to_owned(),
                args: arg,
            },
        })
    }

    /// Parses a Socket.IO event from its raw JSON text `["name", arg, …]` (the first argument
    /// is the request's; later ones are ignored). Decoding the raw text here, into owned
    /// values, accepts any valid JSON: escaped keys and names (what python-socketio sends
    /// for every non-ASCII character) included.
    pub fn from_socketio_event(raw: &str) -> Result<Request, AppError> {
        let items: Vec<Value> = serde_json::from_str(raw)
            .map_err(|err| AppError::bad_request(format!("event cannot be decoded: {err}")))?;
        let mut items = items.into_iter();
        let name = match items.next() {
            Some(Value::String(name)) => name,
            _ => return Err(AppError::bad_request("event name must be a string")),
        };
        Request::parse(&name, items.next().unwrap_or(Value::Null))
    }
}

/// Reads `{ topic, data }` (client publishes and `POST /api/publish` share it).
pub fn publish_request(arg: Value) -> Result<(Topic, Value), AppError> {
    let Value::Object(mut map) = arg else {
        return Err(AppError::bad_request(format!(
            "publish expects an object {{ topic, data }}, got {}",
            json_kind(&arg)
        )));
    };
    let topic = match map.get("topic") {
        Some(Value::String(s)) => Topic::parse(s)?,
        Some(other) => {
            return Err(AppError::bad_request(format!(
                "publish: topic must be a string, got {}",
                json_kind(other)
            )));
        }
        None => return Err(AppError::bad_request("publish: missing topic")),
    };
    Ok((topic, map.remove("data").unwrap_or(Value::Null)))
}

/// A `/ws` request frame: `{ "type", "callback_id", "data" }`.
#[derive(Debug)]
pub struct WsFrame {
    /// Echoed in the reply (a number or a string; `null` when absent or of another type).
    pub callback_id: Value,
    /// The request, or why the frame is not one.
    pub request: Result<Request, AppError>,
}

impl WsFrame {
    /// Parses a text frame. A frame that is not JSON still yields a frame (with a `null`
    /// callback id) so the client gets an error reply.
    pub fn parse(text: &str) -> WsFrame {
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(err) => {
                return WsFrame {
                    callback_id: Value::Null,
                    request: Err(AppError::bad_request(format!("not JSON: {err}"))),
                };
            }
        };
        let Value::Object(mut map) = value else {
            return WsFrame {
                callback_id: Value::Null,
                request: Err(AppError::bad_request(
                    "expected an object { type, callback_id, data }",
                )),
            };
        };
        let callback_id = match map.remove("callback_id") {
            Some(id @ (Value::Number(_) | Value::String(_))) => id,
            _ => Value::Null,
        };
        let request = match map.remove("type") {
            Some(Value::String(kind)) => {
                Request::parse(&kind, map.remove("data").unwrap_or(Value::Null))
            }
            _ => Err(AppError::bad_request(
                "expected { type, callback_id, data } with a string type",
            )),
        };
        WsFrame {
            callback_id,
            request,
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Claim;
    use crate::error::Code;
    use crate::store::UserId;
    use serde_json::json;

    fn topic(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    #[test]
    fn parses_every_request_kind() {
        assert_eq!(
            Request::parse("subscribe", json!("news")).unwrap(),
            Request::Subscribe(topic("news"))
        );
        assert_eq!(
            Request::parse("subscribe", json!({"topic": "café"})).unwrap(),
            Request::Subscribe(topic("café"))
        );
        assert_eq!(
            Request::parse(
                "unsubscribe",
                json!({"collectionName": "Order", "method": "PUT", "modelId": 4})
            )
            .unwrap(),
            Request::Unsubscribe(topic("/Order/4/PUT"))
        );
        assert_eq!(
            Request::parse("unsubscribeAll", Value::Null).unwrap(),
            Request::UnsubscribeAll
        );
        assert_eq!(
            Request::parse(
                "publish",
                json!({"topic": "news", "data": {"prénom": "Zoé"}})
            )
            .unwrap(),
            Request::Publish {
                topic: topic("news"),
                data: json!({"prénom": "Zoé"})
            }
        );
        assert_eq!(
            Request::parse("publish", json!({"topic": "news"})).unwrap(),
            Request::Publish {
                topic: topic("news"),
                data: Value::Null
            }
        );
        let Request::Authenticate(creds) =
            Request::parse("authentication", json!({"id": "tok", "userId": 7})).unwrap()
        else {
            panic!("not authenticate")
        };
        assert_eq!(creds.token.as_deref(), Some("tok"));
        assert_eq!(creds.claim, Claim::User(UserId::new("7")));
        assert!(matches!(
            Request::parse("authenticate", json!({"token": "t"})).unwrap(),
            Request::Authenticate(_)
        ));
        assert_eq!(
            Request::parse("a\"b", json!([1])).unwrap(),
            Request::Call {
                method: "a\"b".into(),
                args: json!([1])
            }
        );
    }

    #[test]
    fn socketio_events_accept_any_valid_json() {
        assert_eq!(
            Request::from_socketio_event(
                r#"["publish",{"topic":"caf\u00e9","data":{"pr\u00e9nom":"Zo\u00e9"}}]"#
            )
            .unwrap(),
            Request::Publish {
                topic: topic("café"),
                data: json!({"prénom": "Zoé"})
            }
        );
        assert_eq!(
            Request::from_socketio_event(r#"["a\"b\\c"]"#).unwrap(),
            Request::Call {
                method: "a\"b\\c".into(),
                args: Value::Null
            }
        );
        assert_eq!(
            Request::from_socketio_event(r#"["whoami"]"#).unwrap(),
            Request::Call {
                method: "whoami".into(),
                args: Value::Null
            }
        );
        assert_eq!(
            Request::from_socketio_event(r#"["subscribe","t",{"extra":1}]"#).unwrap(),
            Request::Subscribe(topic("t"))
        );
        for bad in ["", "{}", "[]", "[1]", r#"["x""#] {
            assert_eq!(
                Request::from_socketio_event(bad).unwrap_err().code,
                Code::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_arguments_get_precise_errors() {
        let err = Request::parse("publish", json!("news")).unwrap_err();
        assert_eq!(err.code, Code::BadRequest);
        assert!(err.message.contains("got a string"), "{}", err.message);
        let err = Request::parse("publish", json!({"topic": 5})).unwrap_err();
        assert!(err.message.contains("got a number"), "{}", err.message);
        let err = Request::parse("publish", json!({"data": 1})).unwrap_err();
        assert!(err.message.contains("missing topic"), "{}", err.message);
        assert_eq!(
            Request::parse("subscribe", json!({"topic": ""}))
                .unwrap_err()
                .code,
            Code::InvalidTopic
        );
        assert_eq!(
            Request::parse("subscribe", json!(3)).unwrap_err().code,
            Code::BadRequest
        );
    }

    #[test]
    fn ws_frames() {
        let frame = WsFrame::parse(r#"{"type":"subscribe","callback_id":3,"data":{"topic":"t"}}"#);
        assert_eq!(frame.callback_id, json!(3));
        assert_eq!(frame.request.unwrap(), Request::Subscribe(topic("t")));
        let frame = WsFrame::parse(r#"{"type":"caf\u00e9","callback_id":"x"}"#);
        assert_eq!(frame.callback_id, json!("x"));
        assert_eq!(
            frame.request.unwrap(),
            Request::Call {
                method: "café".into(),
                args: Value::Null
            }
        );
        let frame = WsFrame::parse("nope");
        assert_eq!(frame.callback_id, Value::Null);
        assert_eq!(frame.request.unwrap_err().code, Code::BadRequest);
        let frame = WsFrame::parse(r#"{"callback_id":{"a":1},"type":7}"#);
        assert_eq!(frame.callback_id, Value::Null);
        assert_eq!(frame.request.unwrap_err().code, Code::BadRequest);
        assert!(WsFrame::parse("[1]").request.is_err());
    }
}
