//! An application method registered through the library API, called over `/ws` with several
//! requests in flight: replies come back as each call completes (out of order), each with its
//! own `callback_id`.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::time::Duration;

use fanout_node::config::Config;
use fanout_node::methods::MethodRegistry;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn start_node() -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut methods = MethodRegistry::with_builtins();
    methods.define("sleep", |_ctx, args| async move {
        let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(json!({ "slept": ms }))
    });
    let node = fanout_node::build(Config::for_tests(), methods)
        .await
        .unwrap();
    let state = node.state.clone();
    // A user and a token straight through the stores (the REST API is tested elsewhere).
    let token = fanout_node::auth::new_token();
    let record = fanout_node::store::TokenRecord {
        user_id: fanout_node::store::UserId::new("1"),
        ttl: 60,
        created: fanout_node::auth::now_rfc3339(),
        scopes: vec![],
    };
    state
        .stores
        .tokens
        .insert(&fanout_node::auth::hash_token(&token), &record)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(fanout_node::serve(node, listener, async move {
        stopped.await.ok();
    }));
    (format!("ws://{addr}/ws|{token}"), stop)
}

#[tokio::test]
async fn replies_come_back_out_of_order_with_their_callback_ids() {
    let (target, stop) = start_node().await;
    let (url, token) = target.split_once('|').unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let send = |v: Value| Message::text(v.to_string());
    ws.send(send(
        json!({ "type": "authenticate", "callback_id": 0, "data": { "token": token } }),
    ))
    .await
    .unwrap();
    ws.send(send(
        json!({ "type": "sleep", "callback_id": "slow", "data": { "ms": 400 } }),
    ))
    .await
    .unwrap();
    ws.send(send(
        json!({ "type": "sleep", "callback_id": 2, "data": { "ms": 10 } }),
    ))
    .await
    .unwrap();
    ws.send(send(json!({ "type": "nope", "callback_id": 3 })))
        .await
        .unwrap();

    let mut order = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while order.len() < 4 {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(text) = frame else { continue };
        let reply: Value = serde_json::from_str(text.as_str()).unwrap();
        order.push(reply);
    }
    assert_eq!(
        order[0],
        json!({ "callback_id": 0, "result": true, "data": { "userId": 1 } })
    );
    let ids: Vec<&Value> = order.iter().map(|r| &r["callback_id"]).collect();
    // The slow call was sent first and answered last.
    assert_eq!(ids.last(), Some(&&json!("slow")));
    assert_eq!(order[3]["data"], json!({ "slept": 400 }));
    let unknown = order.iter().find(|r| r["callback_id"] == 3).unwrap();
    assert_eq!(unknown["error"]["code"], "unknown_method");
    let quick = order.iter().find(|r| r["callback_id"] == 2).unwrap();
    assert_eq!(quick["data"], json!({ "slept": 10 }));
    stop.send(()).ok();
}
