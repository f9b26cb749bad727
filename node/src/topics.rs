//! Topics: validation ([`Topic::parse`]), the three request shapes clients use to name one
//! ([`topic_from_request`]), and the access rules ([`authorize_subscribe`],
//! [`authorize_publish`]). A [`Topic`] that exists is valid; later code does not re-check.
//!
//! A topic is also the Socket.IO room name and the event name delivered to subscribers.

use serde_json::Value;

use crate::auth::Session;
use crate::error::{AppError, Code};

/// Longest topic in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;

/// Event names the Socket.IO client reserves for itself; delivering a topic under one of these
/// names would confuse it, so they are not valid topics.
const RESERVED_EVENT_NAMES: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Methods of LoopBack model events.
const MODEL_METHODS: &[&str] = &["POST", "PUT", "DELETE"];

/// A valid topic: 1–256 bytes, no control characters, not a reserved event name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

/// The topics one connection is subscribed to, in order. A sorted vector: most connections
/// hold one topic or a few, where a `BTreeSet` allocates an 11-slot node (~300 bytes) for
/// the first one; lookups are binary searches over at most `MAX_TOPICS_PER_CONNECTION`.
#[derive(Debug, Default)]
pub struct TopicSet(Vec<Topic>);

impl TopicSet {
    /// Whether `topic` is in the set.
    pub fn contains(&self, topic: &Topic) -> bool {
        self.0.binary_search(topic).is_ok()
    }

    /// Adds `topic`; false when it was there already.
    pub fn insert(&mut self, topic: Topic) -> bool {
        match self.0.binary_search(&topic) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, topic);
                true
            }
        }
    }

    /// Removes `topic`; false when it was not there. An emptied set lets go of its storage.
    pub fn remove(&mut self, topic: &Topic) -> bool {
        let Ok(at) = self.0.binary_search(topic) else {
            return false;
        };
        self.0.remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        true
    }

    /// How many topics.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The topics, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Topic> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a TopicSet {
    type Item = &'a Topic;
    type IntoIter = std::slice::Iter<'a, Topic>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Topic {
    /// Validates a topic string.
    pub fn parse(raw: &str) -> Result<Topic, AppError> {
        if raw.is_empty() || raw.len() > MAX_TOPIC_BYTES {
            return Err(AppError::new(
                Code::InvalidTopic,
                format!("a topic has 1 to {MAX_TOPIC_BYTES} bytes"),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(AppError::new(
                Code::InvalidTopic,
                "a topic has no control characters",
            ));
        }
        if RESERVED_EVENT_NAMES.contains(&raw) {
            return Err(AppError::new(
                Code::InvalidTopic,
                "reserved Socket.IO event name",
            ));
        }
        Ok(Topic(raw.to_string()))
    }

    /// The topic string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The LoopBack model topic for a model event: `/Model/POST`, `/Model/<id>/PUT`,
    /// `/Model/<id>/DELETE`.
    pub fn for_model(model: &str, method: &str, id: Option<&str>) -> Result<Topic, AppError> {
        if !is_model_name(model) {
            return Err(AppError::invalid("invalid model name"));
        }
        let method = method.to_ascii_uppercase();
        if !MODEL_METHODS.contains(&method.as_str()) {
            return Err(AppError::invalid("method must be POST, PUT or DELETE"));
        }
        match id {
            Some(id) if !id.is_empty() => Topic::parse(&format!("/{model}/{id}/{method}")),
            _ => Topic::parse(&format!("/{model}/{method}")),
        }
    }

    /// The user a private topic `/users/<userId>/…` (or `/users/<userId>`) belongs to.
    pub fn private_owner(&self) -> Option<&str> {
        let rest = self.0.strip_prefix("/users/")?;
        let owner = rest.split('/').next().unwrap_or(rest);
        Some(owner)
    }

    /// True for server-authoritative model topics: `/` followed by a model name segment.
    pub fn is_model_topic(&self) -> bool {
        let Some(rest) = self.0.strip_prefix('/') else {
            return false;
        };
        let first = rest.split('/').next().unwrap_or(rest);
        is_model_name(first)
    }
}

// Lookups by `&str` (the adapter's room keeper asks by room name); a `Topic` hashes and
// compares exactly as its string.
impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A model name: a letter, then up to 63 letters, digits or `_`; `users` is reserved for the
/// private `/users/<id>/…` topics.
pub fn is_model_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    first_ok
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name != "users"
}

/// Reads a topic from a request argument: `"topic"`, `{ topic }` or LoopBack's
/// `{ collectionName, method, modelId? }`.
pub fn topic_from_request(arg: &Value) -> Result<Topic, AppError> {
    match arg {
        Value::String(s) => Topic::parse(s),
        Value::Object(map) => {
            if let Some(topic) = map.get("topic") {
                return match topic {
                    Value::String(s) => Topic::parse(s),
                    _ => Err(AppError::new(Code::InvalidTopic, "topic must be a string")),
                };
            }
            let collection = map.get("collectionName").and_then(Value::as_str);
            let method = map.get("method").and_then(Value::as_str);
            match (collection, method) {
                (Some(collection), Some(method)) => {
                    let id = match map.get("modelId") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(Value::Number(n)) => Some(n.to_string()),
                        Some(_) => {
                            return Err(AppError::invalid("modelId must be a string or number"));
                        }
                    };
                    Topic::for_model(collection, method, id.as_deref())
                }
                _ => Err(AppError::bad_request(
                    "expected \"topic\", { topic } or { collectionName, method, modelId? }",
                )),
            }
        }
        _ => Err(AppError::bad_request(
            "expected \"topic\", { topic } or { collectionName, method, modelId? }",
        )),
    }
}

/// Subscribing: private `/users/<id>/…` topics only by that user.
pub fn authorize_subscribe(session: &Session, topic: &Topic) -> Result<(), AppError> {
    match topic.private_owner() {
        Some(owner) if owner != session.user_id.as_str() => {
            Err(AppError::forbidden("private topic of another user"))
        }
        _ => Ok(()),
    }
}

/// Publishing: model topics are server-only; private topics only by their owner.
pub fn authorize_publish(session: &Session, topic: &Topic) -> Result<(), AppError> {
    if topic.is_model_topic() {
        return Err(AppError::forbidden(
            "model topics are published by model writes only",
        ));
    }
    authorize_subscribe(session, topic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{TokenHash, UserId};
    use serde_json::json;

    fn session(user: &str) -> Session {
        Session {
            user_id: UserId::new(user),
            token_hash: TokenHash("h".into()),
            expires: None,
        }
    }

    #[test]
    fn parse_validates_length_and_characters() {
        assert!(Topic::parse("news").is_ok());
        assert!(Topic::parse(&"a".repeat(256)).is_ok());
        assert_eq!(
            Topic::parse(&"a".repeat(257)).unwrap_err().code,
            Code::InvalidTopic
        );
        assert_eq!(Topic::parse("").unwrap_err().code, Code::InvalidTopic);
        assert_eq!(Topic::parse("a\nb").unwrap_err().code, Code::InvalidTopic);
        assert_eq!(
            Topic::parse("a\u{7f}").unwrap_err().code,
            Code::InvalidTopic
        );
        assert_eq!(
            Topic::parse("disconnect").unwrap_err().code,
            Code::InvalidTopic
        );
        // multi-byte characters count in bytes
        assert!(Topic::parse(&"é".repeat(128)).is_ok());
        assert!(Topic::parse(&"é".repeat(129)).is_err());
    }

    #[test]
    fn request_shapes() {
        assert_eq!(topic_from_request(&json!("a/b")).unwrap().as_str(), "a/b");
        assert_eq!(
            topic_from_request(&json!({"topic": "x"})).unwrap().as_str(),
            "x"
        );
        let lb = json!({"collectionName": "Order", "method": "post"});
        assert_eq!(topic_from_request(&lb).unwrap().as_str(), "/Order/POST");
        let lb = json!({"collectionName": "Order", "method": "PUT", "modelId": 42});
        assert_eq!(topic_from_request(&lb).unwrap().as_str(), "/Order/42/PUT");
        let lb = json!({"collectionName": "Order", "method": "GET"});
        assert_eq!(
            topic_from_request(&lb).unwrap_err().code,
            Code::ValidationFailed
        );
        assert_eq!(
            topic_from_request(&json!({"topic": 5})).unwrap_err().code,
            Code::InvalidTopic
        );
        assert_eq!(
            topic_from_request(&json!(null)).unwrap_err().code,
            Code::BadRequest
        );
        assert_eq!(
            topic_from_request(&json!([1])).unwrap_err().code,
            Code::BadRequest
        );
    }

    #[test]
    fn model_topics_are_server_only() {
        let alice = session("1");
        for t in ["/Order/POST", "/Order/42/PUT", "/Order/anything"] {
            let topic = Topic::parse(t).unwrap();
            assert!(topic.is_model_topic(), "{t}");
            assert_eq!(
                authorize_publish(&alice, &topic).unwrap_err().code,
                Code::Forbidden
            );
            assert!(authorize_subscribe(&alice, &topic).is_ok());
        }
        for t in ["news", "chat/room1", "/", "/9lives", "/users/1/inbox"] {
            assert!(!Topic::parse(t).unwrap().is_model_topic(), "{t}");
        }
    }

    #[test]
    fn private_topics_belong_to_their_user() {
        let alice = session("1");
        let own = Topic::parse("/users/1/inbox").unwrap();
        let other = Topic::parse("/users/2/inbox").unwrap();
        let bare_other = Topic::parse("/users/2").unwrap();
        assert!(authorize_subscribe(&alice, &own).is_ok());
        assert!(authorize_publish(&alice, &own).is_ok());
        assert_eq!(
            authorize_subscribe(&alice, &other).unwrap_err().code,
            Code::Forbidden
        );
        assert_eq!(
            authorize_publish(&alice, &other).unwrap_err().code,
            Code::Forbidden
        );
        assert_eq!(
            authorize_subscribe(&alice, &bare_other).unwrap_err().code,
            Code::Forbidden
        );
        // "/users1/x" is not private
        assert!(authorize_subscribe(&alice, &Topic::parse("/users1/x").unwrap()).is_ok());
    }

    #[test]
    fn a_topic_set_is_a_sorted_set() {
        let t = |name: &str| Topic::parse(name).expect("topic");
        let mut set = TopicSet::default();
        assert!(set.is_empty());
        assert!(set.insert(t("b")));
        assert!(set.insert(t("a")));
        assert!(set.insert(t("c")));
        assert!(!set.insert(t("a")), "no duplicates");
        assert!(set.contains(&t("b")));
        let names: Vec<&str> = set.iter().map(Topic::as_str).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(set.remove(&t("b")));
        assert!(!set.remove(&t("b")));
        assert_eq!(set.len(), 2);
        assert!(set.remove(&t("a")) && set.remove(&t("c")));
        assert!(set.is_empty());
        assert_eq!(set.0.capacity(), 0, "an emptied set holds no storage");
    }
}
