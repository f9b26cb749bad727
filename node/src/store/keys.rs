//! Every Redis key and channel name fanout uses, built in one place (prefix `FANOUT_PREFIX`).

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

/// `<prefix>:users:by-username` → hash username → id.
pub fn users_by_username(prefix: &str) -> String {
    format!("{prefix}:users:by-username")
}

/// `<prefix>:users:by-email` → hash e-mail → id.
pub fn users_by_email(prefix: &str) -> String {
    format!("{prefix}:users:by-email")
}

/// `<prefix>:users:next-id` → user id counter.
pub fn users_next_id(prefix: &str) -> String {
    format!("{prefix}:users:next-id")
}

/// `<prefix>:model:<Model>` → hash id → record JSON.
pub fn model(prefix: &str, model: &str) -> String {
    format!("{prefix}:model:{model}")
}

/// `<prefix>:model-ids:<Model>` → id counter of a model.
pub fn model_next_id(prefix: &str, model: &str) -> String {
    format!("{prefix}:model-ids:{model}")
}

/// `<prefix>:model-owners:<Model>` → hash id → owner user id (beside the record, never in it).
pub fn model_owners(prefix: &str, model: &str) -> String {
    format!("{prefix}:model-owners:{model}")
}

/// `<prefix>:model-owned:<Model>` → hash user id → number of that user's records.
pub fn model_owned(prefix: &str, model: &str) -> String {
    format!("{prefix}:model-owned:{model}")
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

/// `<prefix>:chat:<room>` → hash connection key → member JSON (`/chat` seats).
pub fn chat_room(prefix: &str, room: &str) -> String {
    format!("{prefix}:chat:{room}")
}

/// `<prefix>:chat-order:<room>` → counter ordering the seats of a room.
pub fn chat_order(prefix: &str, room: &str) -> String {
    format!("{prefix}:chat-order:{room}")
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
        assert_eq!(model("fanout", "Order"), "fanout:model:Order");
        assert_eq!(model_owners("fanout", "Order"), "fanout:model-owners:Order");
        assert_eq!(model_owned("fanout", "Order"), "fanout:model-owned:Order");
        assert_eq!(models("fanout"), "fanout:models");
        assert_eq!(events_channel("p"), "p:events");
    }
}
