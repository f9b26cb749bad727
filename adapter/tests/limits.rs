//! Redis as a trust boundary, over a real redis-server: inbound messages over the size cap
//! are skipped undecoded and counted on every channel (adapter and node counters) while the
//! subscriber connection survives; broadcast-with-ack requests from other nodes are capped
//! in number (refused and counted over the cap) and in time (a 1 h timeout is lowered).
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod fixture;

use std::time::{Duration, Instant};

use fanout_adapter::Metrics;
use fanout_adapter::protocol::{RequestType, WireResponse, decode_sniff};
use fixture::{RedisServer, bounded, config, recv, recv_none, spawn_servers_with};
use futures_util::StreamExt;
use prometheus::{IntCounterVec, Opts};

/// Redis's default `client-output-buffer-limit pubsub` is `32mb 8mb 60`: one message over
/// 32 MB cuts every subscriber. The deployments raise it (docs/OPERATIONS.md).
const RAISED_PUBSUB_LIMIT: [&str; 2] = ["--client-output-buffer-limit", "pubsub 256mb 128mb 60"];

async fn connect(io: &fixture::Io) -> tokio::sync::mpsc::Receiver<engineioxide::Packet> {
    let (tx, mut rx) = io.new_dummy_sock("/", ()).await;
    recv(&mut rx).await;
    std::mem::forget(tx);
    rx
}

async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn node_counter() -> IntCounterVec {
    IntCounterVec::new(
        Opts::new("fanout_messages_dropped_total", "node drops"),
        &["transport", "reason"],
    )
    .unwrap()
}

#[tokio::test]
async fn oversize_messages_are_skipped_and_counted_on_every_channel() {
    bounded(60, async {
        const MAX: usize = 64 * 1024;
        let redis = RedisServer::start_with(&RAISED_PUBSUB_LIMIT);
        let dropped = node_counter();
        let [(io1, ctr1)] = spawn_servers_with::<1>(|| {
            config(&redis)
                .with_max_message_bytes(MAX)
                .with_dropped_counter(dropped.clone())
        })
        .await;
        let [(io2, _)] = spawn_servers_with::<1>(|| config(&redis)).await;
        io1.ns(
            "/",
            async |s: socketioxide::extract::SocketRef<fixture::Adapter>| s.join("room"),
        )
        .await
        .unwrap();
        io2.ns("/", async || {}).await.unwrap();
        let mut rx1 = connect(&io1).await;
        let uid1 = io1.config().server_id.to_string();
        let mut plain = Vec::new();
        for ch in ["fanout:events", "fanout:stream", "fanout:revocations"] {
            plain.push(ctr1.subscribe_channel(ch.into()).await.unwrap());
        }

        let over = vec![b'x'; MAX + 1];
        let own_response = format!("socket.io-response#/#{uid1}#");
        let channels = [
            "socket.io#/#",
            "socket.io#/#room#",
            "socket.io-request#/#",
            "socket.io-response#/#",
            own_response.as_str(),
            "fanout:events",
            "fanout:stream",
            "fanout:revocations",
        ];
        for ch in channels {
            redis.publish(ch, &over).await;
        }
        // 40 MB: over Redis's default 32 MB pub/sub hard limit, under the raised one.
        redis.publish("fanout:events", vec![b'y'; 40 << 20]).await;

        let m = ctr1.metrics().clone();
        eventually("oversize counted", Duration::from_secs(10), || {
            Metrics::sum(&m.oversize) == 9
        })
        .await;
        assert_eq!(Metrics::get(&m.oversize, &["broadcast"]), 2);
        assert_eq!(Metrics::get(&m.oversize, &["request"]), 1);
        assert_eq!(Metrics::get(&m.oversize, &["response"]), 2);
        assert_eq!(Metrics::get(&m.oversize, &["channel"]), 4);
        assert_eq!(Metrics::get(&dropped, &["redis", "too_large"]), 9);
        // skipped before decoding: nothing reached the receive loops or the queues
        assert_eq!(Metrics::sum(&m.malformed), 0);
        assert_eq!(Metrics::sum(&m.messages_received), 0);
        for rx in &mut plain {
            assert!(rx.try_recv().is_err(), "an oversize message was delivered");
        }

        // the subscriber connection survived: no reconnect, still ready, delivery goes on
        assert_eq!(m.reconnects.get(), 0);
        assert!(ctr1.is_ready());
        io2.to("room").emit("still", &"alive").await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["still","alive"]"#);
        recv_none(&mut rx1, 100).await;
        // exactly at the cap is accepted
        let at = vec![b'z'; MAX];
        redis.publish("fanout:events", &at).await;
        let got = tokio::time::timeout(Duration::from_secs(2), plain[0].recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), MAX);
        assert_eq!(Metrics::sum(&m.oversize), 9);
    })
    .await;
}

/// A type-7 request as a peer (or anyone who can PUBLISH) sends it.
fn ack_request(id: &str, timeout_ms: u64) -> String {
    format!(
        r#"{{"uid":"peer","requestId":"{id}","type":7,"packet":{{"type":2,"data":["ping"],"nsp":"/"}},"opts":{{"rooms":[],"except":[],"flags":{{"timeout":{timeout_ms}}}}}}}"#
    )
}

/// Reads client-count answers (type 8) from the response channel for `within`.
async fn counts(stream: &mut redis::aio::PubSubStream, within: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, stream.next()).await {
        let res: WireResponse = decode_sniff(msg.get_payload_bytes()).unwrap();
        if res.kind == Some(RequestType::BroadcastClientCount as u8) {
            assert_eq!(res.client_count, Some(1));
            ids.push(res.request_id);
        }
    }
    ids
}

#[tokio::test]
async fn remote_ack_requests_are_capped_in_number_and_time() {
    bounded(30, async {
        let redis = RedisServer::start();
        let dropped = node_counter();
        let [(io1, ctr1)] = spawn_servers_with::<1>(|| {
            config(&redis)
                .with_remote_ack_requests_max(2)
                .with_remote_ack_timeout_max(Duration::from_millis(300))
                .with_dropped_counter(dropped.clone())
        })
        .await;
        io1.ns("/", async || {}).await.unwrap();
        // a client that never acks: every request waits for its full timeout
        let mut rx1 = connect(&io1).await;
        let client = redis::Client::open(redis.url()).unwrap();
        let (mut sink, mut responses) = client.get_async_pubsub().await.unwrap().split();
        sink.subscribe("socket.io-response#/#").await.unwrap();

        // five requests asking for one hour each: two served, three refused
        let mut conn = redis.conn().await;
        let mut pipe = redis::pipe();
        for i in 0..5 {
            pipe.cmd("PUBLISH")
                .arg("socket.io-request#/#")
                .arg(ack_request(&format!("r{i}"), 3_600_000));
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
        let m = ctr1.metrics().clone();
        eventually("refusals counted", Duration::from_secs(3), || {
            Metrics::get(&m.remote_requests_refused, &["broadcast_ack"]) == 3
        })
        .await;
        assert_eq!(
            counts(&mut responses, Duration::from_millis(200)).await,
            ["r0", "r1"]
        );
        assert_eq!(m.remote_ack_timeouts_capped.get(), 2);
        assert!(recv(&mut rx1).await.starts_with(r#"42"#));
        assert!(recv(&mut rx1).await.starts_with(r#"42"#));
        recv_none(&mut rx1, 50).await;

        // the hour was lowered to 300 ms: the two permits are free again well within 1 s
        tokio::time::sleep(Duration::from_millis(700)).await;
        redis
            .publish("socket.io-request#/#", ack_request("r5", 3_600_000))
            .await;
        // a short timeout is kept as asked (not counted as capped)
        redis
            .publish("socket.io-request#/#", ack_request("r6", 100))
            .await;
        assert_eq!(
            counts(&mut responses, Duration::from_millis(500)).await,
            ["r5", "r6"]
        );
        assert_eq!(
            Metrics::get(&m.remote_requests_refused, &["broadcast_ack"]),
            3
        );
        assert_eq!(m.remote_ack_timeouts_capped.get(), 3);
        // refusals are not message drops
        assert_eq!(Metrics::sum(&dropped), 0);
        assert!(ctr1.is_ready());
    })
    .await;
}
