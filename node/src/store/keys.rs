//! Every Redis key and channel name fanout uses, built in one place (prefix `FANOUT_PREFIX`).
//!
//! On a Redis Cluster a multi-key command or Lua script must touch keys of one hash slot, so
//! the keys a script writes together share a hash tag (`{…}`: Redis hashes only that part):
//! a model's four keys carry `{<Model>}`, a chat room's two keys `{chat:<room>}`, the user indexes
//! and counter `{users}`. Keys only ever used alone (tokens, token indexes, user records,
//! presence, heartbeats) carry no tag, so they spread over all slots by their whole name — and
//! tokens keep the `<prefix>:token:<sha256>` shape external producers write. The prefix may
//! not contain braces (it would become the tag of every key). Layout: docs/REDIS.md.

use super::{TokenHash, UserId};

/// `<prefix>:token:<sha256 hex>` → token record JSON, with EXPIRE ttl.
pub fn token(prefix: &str, hash: &TokenHash) -> String {
    format!("{prefix}:token:{}", hash.0)
}

/// `<prefix>:user-tokens:<userId>` → set of the user's token hashes.
pub fn user_tokens(prefix: &str, user: &UserId) -> String {
    format!("{prefix}:user-tokens:{user}")
}

/// `<prefix>:user:<id>` → user JSON.
pub fn user(prefix: &str, id: &UserId) -> String {
    format!("{prefix}:user:{id}")
}

/// `<prefix>:{users}:by-username` → hash username → id (one slot with the other user indexes:
/// the uniqueness check is one script).
pub fn users_by_username(prefix: &str) -> String {
    format!("{prefix}:{{users}}:by-username")
}

/// `<prefix>:{users}:by-email` → hash e-mail → id.
pub fn users_by_email(prefix: &str) -> String {
    format!("{prefix}:{{users}}:by-email")
}

/// `<prefix>:{users}:next-id` → user id counter.
pub fn users_next_id(prefix: &str) -> String {
    format!("{prefix}:{{users}}:next-id")
}

/// `<prefix>:model:{<Model>}` → hash id → record JSON.
pub fn model(prefix: &str, model: &str) -> String {
    format!("{prefix}:model:{{{model}}}")
}

/// `<prefix>:model-ids:{<Model>}` → id counter of a model.
pub fn model_next_id(prefix: &str, model: &str) -> String {
    format!("{prefix}:model-ids:{{{model}}}")
}

/// `<prefix>:model-owners:{<Model>}` → hash id → owner user id (beside the record, never in it).
pub fn model_owners(prefix: &str, model: &str) -> String {
    format!("{prefix}:model-owners:{{{model}}}")
}

/// `<prefix>:model-owned:{<Model>}` → hash user id → number of that user's records.
pub fn model_owned(prefix: &str, model: &str) -> String {
    format!("{prefix}:model-owned:{{{model}}}")
}

/// `<prefix>:models` → set of the model names that hold or held records
/// (`FANOUT_MODEL_MAX_MODELS`).
pub fn models(prefix: &str) -> String {
    format!("{prefix}:models")
}

/// `<prefix>:presence:<topic>` → hash connection key → user id.
pub fn presence(prefix: &str, topic: &str) -> String {
    format!("{prefix}:presence:{topic}")
}

/// `<prefix>:node:<nodeId>` → heartbeat key (expires when the node stops refreshing it).
pub fn node_alive(prefix: &str, node_id: &str) -> String {
    format!("{prefix}:node:{node_id}")
}

/// `<prefix>:{chat:<room>}` → hash connection key → member JSON (`/chat` seats). The tag
/// starts with `chat:` so it is never empty, whatever the room id holds (`}` included).
pub fn chat_room(prefix: &str, room: &str) -> String {
    format!("{prefix}:{{chat:{room}}}")
}

/// `<prefix>:{chat:<room>}:order` → counter ordering the seats of a room.
pub fn chat_order(prefix: &str, room: &str) -> String {
    format!("{prefix}:{{chat:{room}}}:order")
}

/// `<prefix>:stream`: the stream items channel (`/stream` namespace).
pub fn stream_channel(prefix: &str) -> String {
    format!("{prefix}:stream")
}

/// `<prefix>:events`: the events channel (topic and model events from any producer).
pub fn events_channel(prefix: &str) -> String {
    format!("{prefix}:events")
}

/// `<prefix>:revocations`: token hashes whose sockets must be disconnected (logout).
pub fn revocations_channel(prefix: &str) -> String {
    format!("{prefix}:revocations")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_design() {
        let hash = TokenHash("ab12".into());
        assert_eq!(token("fanout", &hash), "fanout:token:ab12");
        assert_eq!(
            user_tokens("fanout", &UserId::new("7")),
            "fanout:user-tokens:7"
        );
        assert_eq!(model("fanout", "Order"), "fanout:model:{Order}");
        assert_eq!(
            model_owners("fanout", "Order"),
            "fanout:model-owners:{Order}"
        );
        assert_eq!(model_owned("fanout", "Order"), "fanout:model-owned:{Order}");
        assert_eq!(models("fanout"), "fanout:models");
        assert_eq!(users_by_email("fanout"), "fanout:{users}:by-email");
        assert_eq!(chat_room("fanout", "42"), "fanout:{chat:42}");
        assert_eq!(chat_order("fanout", "42"), "fanout:{chat:42}:order");
        assert_eq!(events_channel("p"), "p:events");
    }

    /// The hash tag Redis Cluster hashes: the text between the first `{` and the next `}`,
    /// when not empty; else the whole key.
    fn hash_tag(key: &str) -> &str {
        key.find('{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                rest.find('}')
                    .filter(|close| *close > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(key)
    }

    #[test]
    fn keys_written_together_share_a_slot() {
        // Room ids may hold any non-control character, braces included: the tag still matches
        // because it starts at the `{` the key builder wrote.
        for room in ["7", "a}b", "{x}", "}", "}}", "é é"] {
            assert_eq!(
                hash_tag(&chat_room("fanout", room)),
                hash_tag(&chat_order("fanout", room)),
                "{room}"
            );
        }
        let tags: Vec<String> = [model, model_next_id, model_owners, model_owned]
            .iter()
            .map(|key| hash_tag(&key("fanout", "Order")).to_string())
            .collect();
        assert!(tags.iter().all(|tag| tag == "Order"), "{tags:?}");
        let users = [users_by_username, users_by_email, users_next_id];
        assert!(users.iter().all(|key| hash_tag(&key("fanout")) == "users"));
        // Two models, two rooms: different tags (spread over the shards).
        assert_ne!(hash_tag(&model("p", "A")), hash_tag(&model("p", "B")));
    }
}
