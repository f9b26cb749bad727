//! Failure behaviour over a real redis-server: outage (local delivery continues, remote
//! requests fail fast, readiness false), recovery on restart (readiness true,
//! resubscription, cross-node delivery resumes), malformed messages on every channel,
//! inbound queue overflow.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod fixture;

use std::time::{Duration, Instant};

use fanout_adapter::{FanoutAdapterCtr, Metrics};
use fixture::{RedisServer, bounded, config, recv, recv_none, spawn_servers, spawn_servers_with};

async fn connect(io: &fixture::Io) -> tokio::sync::mpsc::Receiver<engineioxide::Packet> {
    let (tx, mut rx) = io.new_dummy_sock("/", ()).await;
    recv(&mut rx).await;
    std::mem::forget(tx);
    rx
}

async fn wait_ready(ctr: &FanoutAdapterCtr, want: bool, within: Duration) {
    let mut watch = ctr.ready_watch();
    tokio::time::timeout(within, watch.wait_for(|r| *r == want))
        .await
        .unwrap_or_else(|_| panic!("readiness did not become {want} within {within:?}"))
        .expect("watch open");
}

async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn outage_keeps_local_delivery_fails_fast_and_recovers() {
    bounded(60, async {
        let mut redis = RedisServer::start();
        let [(io1, ctr1), (io2, ctr2)] = spawn_servers(&redis).await;
        io1.ns("/", async || {}).await.unwrap();
        io2.ns("/", async || {}).await.unwrap();
        let mut rx1 = connect(&io1).await;
        let mut rx2 = connect(&io2).await;
        let mut events = ctr2
            .subscribe_channel("fanout:events".into())
            .await
            .unwrap();
        assert!(ctr1.is_ready());

        redis.stop();
        wait_ready(&ctr1, false, Duration::from_secs(3)).await;
        wait_ready(&ctr2, false, Duration::from_secs(3)).await;
        assert_eq!(ctr1.metrics().subscriptions_live.get(), 0);

        // local delivery still works; the failed publish is reported and counted
        let started = Instant::now();
        let res = io1.emit("down", &1).await;
        assert!(res.is_err(), "publish failure is reported");
        assert!(started.elapsed() < Duration::from_millis(1500));
        assert_eq!(recv(&mut rx1).await, r#"42["down",1]"#);
        assert!(ctr1.metrics().publish_errors.get() >= 1);
        io1.local().emit("local", &2).await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["local",2]"#);

        // remote requests fail fast with an error, not a hang and not a partial Ok
        let started = Instant::now();
        assert!(io1.fetch_sockets().await.is_err());
        assert!(io1.rooms().await.is_err());
        assert!(io1.emit_with_ack::<_, String>("q", &0).await.is_err());
        let lost = b"lost".to_vec();
        assert!(
            ctr1.publish_channel("fanout:events".into(), lost)
                .await
                .is_err()
        );
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        assert!(
            Metrics::get(
                &ctr1.metrics().requests_failed,
                &["remote_fetch", "not_ready"]
            ) >= 1
        );

        // back up on the same port: resubscribed, ready, cross-node delivery resumes
        redis.restart();
        wait_ready(&ctr1, true, Duration::from_secs(5)).await;
        wait_ready(&ctr2, true, Duration::from_secs(5)).await;
        assert!(ctr1.metrics().reconnects.get() >= 1);
        assert_eq!(ctr1.metrics().subscriptions_live.get(), 1);

        io1.emit("up", &3).await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["up",3]"#);
        assert_eq!(recv(&mut rx2).await, r#"42["up",3]"#);
        io2.emit("up", &4).await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["up",4]"#);
        assert_eq!(recv(&mut rx2).await, r#"42["up",4]"#);
        assert_eq!(io1.fetch_sockets().await.unwrap().len(), 2);
        assert_eq!(io2.rooms().await.unwrap().len(), 0);

        // plain channel subscriptions are restored too
        ctr1.publish_channel("fanout:events".into(), b"after".to_vec())
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"after");
    })
    .await;
}

#[tokio::test]
async fn malformed_messages_are_counted_and_skipped_on_every_channel() {
    bounded(30, async {
        let redis = RedisServer::start();
        let [(io1, ctr1), (io2, _)] = spawn_servers(&redis).await;
        io1.ns(
            "/",
            async |s: socketioxide::extract::SocketRef<fixture::Adapter>| s.join("room"),
        )
        .await
        .unwrap();
        io2.ns("/", async || {}).await.unwrap();
        let mut rx1 = connect(&io1).await;
        let uid1 = io1.config().server_id.to_string();

        let deep_msgpack = {
            let mut v = vec![0x93, 0xa1, b'x'];
            v.extend(std::iter::repeat_n(0x91u8, 10_000));
            v.push(0xc0);
            v
        };
        let deep_json = format!("{{\"type\":1,\"requestId\":{}", "[".repeat(10_000));
        let broadcast = [
            &[0xc1][..],                     // never-used msgpack byte
            b"{\"uid\":\"x\"}",              // JSON on a broadcast channel
            &[0x92, 0xa1, b'x', 0x80],       // array of 2
            &[0x93, 0xa1, b'x', 0x80, 0x80], // packet without type
            &[
                0x93, 0xa1, b'x', 0x82, 0xa4, b't', b'y', b'p', b'e', 0x02, 0xa4, b'd', b'a', b't',
                b'a', 0x90, 0x80,
            ], // empty data
            &deep_msgpack,
            &[],
        ];
        for payload in broadcast {
            redis.publish("socket.io#/#", payload).await;
        }
        redis.publish("socket.io#/#room#", [0xc1]).await;
        let requests: [&[u8]; 6] = [
            b"{bad json",
            b"{\"type\":42}",
            b"{\"type\":7,\"requestId\":\"r\"}",
            b"{\"uid\":\"x\"}",
            &[0xc1, 0x00],
            deep_json.as_bytes(),
        ];
        for payload in requests {
            redis.publish("socket.io-request#/#", payload).await;
        }
        redis.publish("socket.io-response#/#", b"{nope").await;
        redis
            .publish(&format!("socket.io-response#/#{uid1}#"), [0xc1])
            .await;

        let m = ctr1.metrics().clone();
        eventually("malformed counted", Duration::from_secs(3), || {
            Metrics::get(&m.malformed, &["broadcast"]) >= 8
                && Metrics::get(&m.malformed, &["request"]) >= 6
                && Metrics::get(&m.malformed, &["response"]) >= 2
        })
        .await;
        assert_eq!(Metrics::get(&m.malformed, &["broadcast"]), 8);
        assert_eq!(Metrics::get(&m.malformed, &["request"]), 6);
        assert_eq!(Metrics::get(&m.malformed, &["response"]), 2);

        // the receive loop is still alive
        io2.to("room").emit("still", &"alive").await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["still","alive"]"#);
        recv_none(&mut rx1, 100).await;
        assert!(ctr1.is_ready());
    })
    .await;
}

#[tokio::test]
async fn inbound_overflow_is_counted_never_unbounded() {
    bounded(30, async {
        let redis = RedisServer::start();
        let [(io1, ctr1)] = spawn_servers_with::<1>(|| config(&redis).with_inbound_buffer(2)).await;
        io1.ns("/", async || {}).await.unwrap();

        // a plain subscriber that does not read: 2 kept, the rest dropped and counted
        let mut sub = ctr1.subscribe_channel("slow".into()).await.unwrap();
        let mut conn = redis.conn().await;
        let mut pipe = redis::pipe();
        for i in 0..10 {
            pipe.cmd("PUBLISH").arg("slow").arg(i.to_string());
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
        let m = ctr1.metrics().clone();
        eventually("channel drops counted", Duration::from_secs(3), || {
            Metrics::get(&m.dropped, &["channel"]) == 8
        })
        .await;
        assert_eq!(&sub.recv().await.unwrap()[..], b"0");
        assert_eq!(&sub.recv().await.unwrap()[..], b"1");
        assert!(sub.try_recv().is_err());

        // the namespace queue: a burst bigger than the queue
        let mut pipe = redis::pipe();
        for _ in 0..2000 {
            pipe.cmd("PUBLISH")
                .arg("socket.io-request#/#")
                .arg("{\"type\":42}");
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
        eventually("burst accounted for", Duration::from_secs(5), || {
            Metrics::get(&m.dropped, &["adapter"]) + Metrics::get(&m.malformed, &["request"])
                == 2000
        })
        .await;
        assert!(
            Metrics::get(&m.dropped, &["adapter"]) > 0,
            "overflow must be counted"
        );
        assert!(ctr1.is_ready());
    })
    .await;
}

#[tokio::test]
async fn unreachable_redis_at_startup_is_an_error() {
    bounded(10, async {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = fanout_adapter::RedisAdapterConfig::new(format!("redis://127.0.0.1:{port}"))
            .with_connect_timeout(Duration::from_millis(300));
        let started = Instant::now();
        assert!(FanoutAdapterCtr::redis(cfg).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
    })
    .await;
}
