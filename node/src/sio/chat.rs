//! Namespace `/chat`: the classic two-person Socket.IO chat. `load` (room id) →
//! `peopleinchat`; `login` `{ user, avatar: email, id }` → `img` (Gravatar URL) to the caller,
//! `startChat` to the room once it has two people, `tooMany` when full; `msg` `{ msg }` →
//! `receive` to the others; `leave` to the others on disconnect. Seats are claimed atomically
//! in the [`ChatStore`](crate::store::ChatStore), so capacity holds cluster-wide; bad input
//! gets an `error` event and nothing else.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use socketioxide::extract::{Event, SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;

use super::{conn_key, disconnect_label};
use crate::email::validate_email;
use crate::error::AppError;
use crate::io::NodeAdapter;
use crate::state::AppState;
use crate::store::{ChatMember, SeatClaim};

/// The namespace path.
pub const NAMESPACE: &str = "/chat";
/// Longest chat message in characters.
pub const MAX_MESSAGE_CHARS: usize = 2000;

/// The seat a socket holds (socket extension).
#[derive(Debug, Clone)]
struct Seat {
    room: String,
    user: String,
    avatar: String,
}

/// The Gravatar URL of an e-mail (SHA-256 of the trimmed, lower-cased address).
pub fn gravatar_url(email: &str) -> String {
    let hash = hex::encode(Sha256::digest(email.trim().to_lowercase().as_bytes()));
    format!("https://gravatar.com/avatar/{hash}?s=140&r=x&d=mm")
}

/// A room id: a number or a string of 1–64 characters without control characters.
fn room_id(value: &Value) -> Result<String, AppError> {
    let id = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return Err(AppError::invalid("room id must be a number or a string")),
    };
    let len = id.chars().count();
    if !(1..=64).contains(&len) || id.chars().any(char::is_control) {
        return Err(AppError::invalid("room id: 1 to 64 characters"));
    }
    Ok(id)
}

fn user_name(value: Option<&Value>) -> Result<String, AppError> {
    let name = value.and_then(Value::as_str).map(str::trim).unwrap_or("");
    let len = name.chars().count();
    if !(1..=64).contains(&len) || name.chars().any(char::is_control) {
        return Err(AppError::invalid("user: 1 to 64 characters"));
    }
    Ok(name.to_string())
}

/// Broadcasts to a room (every node); counts the local recipients and the local drops (remote
/// ones are counted by their node).
async fn broadcast(
    state: &AppState,
    ops: socketioxide::operators::BroadcastOperators<NodeAdapter>,
    event: &'static str,
    body: &Value,
) {
    let recipients = ops.clone().local().sockets().len() as u64;
    let failed = match ops.emit(event, body).await {
        Ok(()) => 0,
        Err(err) => {
            tracing::warn!(%err, event, "chat broadcast incomplete");
            super::count_broadcast_drops(&state.metrics, &err)
        }
    };
    state
        .metrics
        .events_sent(NAMESPACE, recipients.saturating_sub(failed));
}

fn send_error(state: &AppState, socket: &SocketRef<NodeAdapter>, err: &AppError) {
    state.metrics.bad_input("chat", err.code.as_str());
    socket.emit("error", &err.body()["error"]).ok();
}

/// Connect middleware: registers the handlers before the CONNECT reply.
pub async fn on_connect_middleware(socket: SocketRef<NodeAdapter>) -> Result<(), AppError> {
    socket.on("load", on_load);
    socket.on("login", on_login);
    socket.on("msg", on_msg);
    socket.on_fallback(on_unknown);
    socket.on_disconnect(on_disconnect);
    Ok(())
}

/// Connect handler: counts the socket and bounds how long it may stay without a seat.
pub async fn on_connect(socket: SocketRef<NodeAdapter>, State(state): State<AppState>) {
    state.metrics.socket_connected(NAMESPACE);
    super::idle::bound(socket, state, NAMESPACE, |s| {
        s.extensions.get::<Seat>().is_some()
    });
}

async fn on_unknown(
    socket: SocketRef<NodeAdapter>,
    Event(name): Event,
    State(state): State<AppState>,
) {
    super::until_connected(&socket).await;
    state.metrics.event_received(NAMESPACE);
    send_error(
        &state,
        &socket,
        &AppError::bad_request(format!("unknown event {name:?}")),
    );
}

async fn on_load(
    socket: SocketRef<NodeAdapter>,
    TryData(data): TryData<Value>,
    State(state): State<AppState>,
) {
    super::until_connected(&socket).await;
    state.metrics.event_received(NAMESPACE);
    let room = match room_id(&data.unwrap_or(Value::Null)) {
        Ok(room) => room,
        Err(err) => return send_error(&state, &socket, &err),
    };
    let members = match state.stores.chat.members(&room).await {
        Ok(members) => members,
        Err(err) => return send_error(&state, &socket, &err.into()),
    };
    let capacity = state.cfg.chat_room_capacity as usize;
    match members.as_slice() {
        [] => socket.emit("peopleinchat", &json!({ "number": 0 })),
        _ if members.len() >= capacity => socket.emit("tooMany", &json!({ "boolean": true })),
        [first, ..] => socket.emit(
            "peopleinchat",
            &json!({ "number": members.len(), "user": first.user, "avatar": first.avatar, "id": room }),
        ),
    }
    .ok();
}

async fn on_login(
    socket: SocketRef<NodeAdapter>,
    TryData(data): TryData<Value>,
    State(state): State<AppState>,
) {
    super::until_connected(&socket).await;
    state.metrics.event_received(NAMESPACE);
    let data = data.unwrap_or(Value::Null);
    if socket.extensions.get::<Seat>().is_some() {
        return send_error(&state, &socket, &AppError::invalid("already in a room"));
    }
    let parsed = (|| {
        let user = user_name(data.get("user"))?;
        let email = data
            .get("avatar")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_lowercase();
        validate_email(&email)?;
        let room = room_id(data.get("id").unwrap_or(&Value::Null))?;
        Ok::<_, AppError>((user, email, room))
    })();
    let (user, email, room) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return send_error(&state, &socket, &err),
    };
    let avatar = gravatar_url(&email);
    let member = ChatMember {
        conn: conn_key(&state, &socket),
        user: user.clone(),
        avatar: avatar.clone(),
    };
    let members = match state
        .stores
        .chat
        .claim_seat(&room, &member, state.cfg.chat_room_capacity)
        .await
    {
        Ok(SeatClaim::Claimed(members)) => members,
        Ok(SeatClaim::Full) => {
            socket.emit("tooMany", &json!({ "boolean": true })).ok();
            return;
        }
        Err(err) => return send_error(&state, &socket, &err.into()),
    };
    socket.extensions.insert(Seat {
        room: room.clone(),
        user,
        avatar: avatar.clone(),
    });
    socket.join(room.clone());
    // The seat counts only once this node receives the room's broadcasts from the others.
    if let Err(err) = state.delivery.ensure_room(NAMESPACE, &room).await {
        socket.leave(room.clone());
        socket.extensions.remove::<Seat>();
        if let Err(release) = state.stores.chat.release_seat(&room, &member.conn).await {
            tracing::warn!(%release, %room, "seat of a failed login left until its node dies");
        }
        return send_error(&state, &socket, &err);
    }
    socket.emit("img", &avatar).ok();
    if members.len() >= 2 {
        let users: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
        let avatars: Vec<&str> = members.iter().map(|m| m.avatar.as_str()).collect();
        let start = json!({ "boolean": true, "id": room, "users": users, "avatars": avatars });
        broadcast(&state, socket.within(room), "startChat", &start).await;
    }
}

async fn on_msg(
    socket: SocketRef<NodeAdapter>,
    TryData(data): TryData<Value>,
    State(state): State<AppState>,
) {
    super::until_connected(&socket).await;
    state.metrics.event_received(NAMESPACE);
    let data = data.unwrap_or(Value::Null);
    let Some(seat) = socket.extensions.get::<Seat>() else {
        return send_error(&state, &socket, &AppError::invalid("login to a room first"));
    };
    let text = data.get("msg").and_then(Value::as_str).unwrap_or("");
    let len = text.chars().count();
    if !(1..=MAX_MESSAGE_CHARS).contains(&len) {
        return send_error(
            &state,
            &socket,
            &AppError::invalid(format!("msg: 1 to {MAX_MESSAGE_CHARS} characters")),
        );
    }
    // The sender's name and picture come from its seat, not from the message: no spoofing.
    let body = json!({ "msg": text, "user": seat.user, "img": seat.avatar });
    broadcast(&state, socket.to(seat.room), "receive", &body).await;
}

async fn on_disconnect(
    socket: SocketRef<NodeAdapter>,
    reason: DisconnectReason,
    State(state): State<AppState>,
) {
    state
        .metrics
        .socket_disconnected(NAMESPACE, disconnect_label(reason));
    let Some(seat) = socket.extensions.get::<Seat>() else {
        return;
    };
    if let Err(err) = state
        .stores
        .chat
        .release_seat(&seat.room, &conn_key(&state, &socket))
        .await
    {
        tracing::warn!(%err, "chat seat release failed (it expires with the node heartbeat)");
    }
    let body =
        json!({ "boolean": true, "room": seat.room, "user": seat.user, "avatar": seat.avatar });
    broadcast(&state, socket.to(seat.room), "leave", &body).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gravatar_is_sha256_of_normalized_email() {
        let url = gravatar_url("  Alice@Example.com ");
        assert_eq!(url, gravatar_url("alice@example.com"));
        assert!(url.starts_with("https://gravatar.com/avatar/"));
        assert_eq!(
            url.split('/')
                .nth(4)
                .unwrap()
                .split('?')
                .next()
                .unwrap()
                .len(),
            64
        );
    }

    #[test]
    fn room_ids() {
        assert_eq!(room_id(&json!(42)).unwrap(), "42");
        assert_eq!(room_id(&json!("abc")).unwrap(), "abc");
        assert!(room_id(&json!("")).is_err());
        assert!(room_id(&json!(null)).is_err());
        assert!(room_id(&json!("a\u{0}")).is_err());
        assert!(room_id(&json!("x".repeat(65))).is_err());
    }
}
