//! Sharded mode on a real Redis Cluster (3 masters + 3 replicas, `deploy/local/redis-cluster`):
//! per-room channels reach only the nodes hosting the room, requests across nodes, the
//! ensure_room / sweep contract, a master SIGKILLed (readiness false then true, delivery
//! back) and a slot migration (the subscription follows). Heavy: the tests of this binary run
//! one at a time (`.config/nextest.toml`, group `redis-cluster`).
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod fixture;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fanout_adapter::{FanoutAdapterCtr, Metrics, RedisAdapterConfig};
use fixture::cluster::RedisCluster;
use fixture::{Io, bounded, recv, recv_none, spawn_servers_with};
use futures_util::StreamExt;

type Rx = tokio::sync::mpsc::Receiver<engineioxide::Packet>;
type Tx = tokio::sync::mpsc::Sender<engineioxide::Packet>;

fn cfg(cluster: &RedisCluster) -> RedisAdapterConfig {
    RedisAdapterConfig::new(cluster.url())
        .with_key("t")
        .with_request_timeout(Duration::from_secs(2))
        .with_command_timeout(Duration::from_millis(1000))
        .with_connect_timeout(Duration::from_secs(2))
        .with_health_check_interval(Duration::from_millis(300))
        // The tests sweep by hand.
        .with_room_sweep_interval(Duration::from_secs(3600))
}

async fn connect(io: &Io) -> (Tx, Rx) {
    let (tx, mut rx) = io.new_dummy_sock("/", ()).await;
    let p = recv(&mut rx).await;
    assert!(p.starts_with("40"), "connect packet, got {p}");
    (tx, rx)
}

fn broadcasts(ctr: &FanoutAdapterCtr) -> u64 {
    Metrics::get(&ctr.metrics().messages_received, &["broadcast"])
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_requests_and_sweep() {
    bounded(120, async {
        let cluster = RedisCluster::start();
        let [(io1, c1), (io2, c2), (io3, c3)] = spawn_servers_with::<3>(|| cfg(&cluster)).await;
        for io in [&io1, &io2, &io3] {
            io.ns("/", async || {}).await.unwrap();
        }
        assert!(c1.is_sharded() && c1.is_cluster());
        let (tx1, mut rx1) = connect(&io1).await;
        let (_tx2, mut rx2) = connect(&io2).await;
        let (_tx3, mut rx3) = connect(&io3).await;

        // Every node reads the main channel: one SSUBSCRIBEd connection each.
        assert_eq!(cluster.shard_numsub("t#/#"), 3);

        // Rooms: node 1 hosts room-a, node 2 room-b, node 3 nothing.
        io1.local().join("room-a").await.unwrap();
        c1.ensure_room("/", "room-a").await.unwrap();
        io2.local().join("room-b").await.unwrap();
        c2.ensure_room("/", "room-b").await.unwrap();
        assert_eq!(cluster.shard_numsub("t#/#room-a#"), 1);
        assert_eq!(cluster.shard_numsub("t#/#room-b#"), 1);
        assert_eq!(c3.room_channels(), 0);

        // A room broadcast reaches only the node hosting the room: node 2 never reads it.
        let before2 = broadcasts(&c2);
        io3.to("room-a").emit("a", &1).await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["a",1]"#);
        recv_none(&mut rx2, 300).await;
        recv_none(&mut rx3, 0).await;
        assert_eq!(broadcasts(&c2), before2, "node 2 received room-a traffic");

        // Many rooms over every shard: each broadcast is read by exactly the hosting node.
        let nodes = [(&io1, &c1), (&io2, &c2), (&io3, &c3)];
        for j in 0..30 {
            let (io, c) = nodes[j % 3];
            let room = format!("many-{j}");
            io.local().join(room.clone()).await.unwrap();
            c.ensure_room("/", &room).await.unwrap();
        }
        let before: Vec<u64> = nodes.iter().map(|(_, c)| broadcasts(c)).collect();
        for j in 0..30 {
            // from a node that does not host the room
            let (io, _) = nodes[(j + 1) % 3];
            io.to(format!("many-{j}")).emit("m", &j).await.unwrap();
        }
        for (i, rx) in [&mut rx1, &mut rx2, &mut rx3].into_iter().enumerate() {
            for j in (i..30).step_by(3) {
                assert_eq!(recv(rx).await, format!(r#"42["m",{j}]"#));
            }
        }
        recv_none(&mut rx1, 300).await;
        recv_none(&mut rx2, 0).await;
        recv_none(&mut rx3, 0).await;
        for (i, (_, c)) in nodes.iter().enumerate() {
            assert_eq!(
                broadcasts(c) - before[i],
                10,
                "node {} read other rooms",
                i + 1
            );
        }
        for j in 0..30 {
            let (io, _) = nodes[j % 3];
            io.local().leave(format!("many-{j}")).await.unwrap();
        }
        for (_, c) in nodes {
            c.sweep_rooms().await;
        }

        // Everyone, and several rooms (main channel).
        io3.emit("all", &2).await.unwrap();
        for rx in [&mut rx1, &mut rx2, &mut rx3] {
            assert_eq!(recv(rx).await, r#"42["all",2]"#);
        }
        io3.to(["room-a", "room-b"]).emit("ab", &3).await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["ab",3]"#);
        assert_eq!(recv(&mut rx2).await, r#"42["ab",3]"#);
        recv_none(&mut rx3, 200).await;

        // Requests: fetchSockets (all, filtered) and rooms().
        assert_eq!(io3.fetch_sockets().await.unwrap().len(), 3);
        assert_eq!(io3.to("room-b").fetch_sockets().await.unwrap().len(), 1);
        let rooms = io3.rooms().await.unwrap();
        assert!(rooms.iter().any(|r| r == "room-a") && rooms.iter().any(|r| r == "room-b"));

        // A remote socketsJoin makes the hosting node subscribe the new room by itself.
        io3.to("room-b").join("room-c").await.unwrap();
        wait_for("room-c subscribed on node 2", 5, || {
            cluster.shard_numsub("t#/#room-c#") == 1
        })
        .await;

        // Broadcast with acks across nodes (main channel, answers on node 3's channel).
        let io = io3.clone();
        let acks = tokio::spawn(async move {
            io.to("room-a")
                .timeout(Duration::from_millis(1500))
                .emit_with_ack::<_, String>("q", "x")
                .await
                .unwrap()
                .collect::<Vec<_>>()
                .await
        });
        let p = recv(&mut rx1).await;
        assert!(p.ends_with(r#"["q","x"]"#), "{p}");
        let id: String = p[2..].chars().take_while(|c| c.is_ascii_digit()).collect();
        tx1.try_send(engineioxide::Packet::Message(
            format!(r#"3{id}["one"]"#).into(),
        ))
        .unwrap();
        let acks = acks.await.unwrap();
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].1.as_ref().unwrap(), "one");

        // broadcast_remote (the node's topic path) goes out on the room channel.
        c3.broadcast_remote("/", "room-b", "topic", &serde_json::json!({"n": 1}))
            .await
            .unwrap();
        assert_eq!(recv(&mut rx2).await, r#"42["topic",{"n":1}]"#);

        // An oversize message is skipped before decoding and counted; the connection survives.
        cluster.spublish("t#/#room-b#", &"x".repeat(4 * 1024 * 1024 + 1));
        wait_for("oversize counted", 5, || {
            Metrics::get(&c2.metrics().oversize, &["message"]) == 1
        })
        .await;
        io3.to("room-b").emit("still", &1).await.unwrap();
        assert_eq!(recv(&mut rx2).await, r#"42["still",1]"#);

        // Plain channels use SSUBSCRIBE/SPUBLISH.
        let mut sub = c1.subscribe_channel("t:events".into()).await.unwrap();
        assert_eq!(cluster.shard_numsub("t:events"), 1);
        c2.publish_channel("t:events".into(), b"e1".to_vec())
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), sub.recv()).await;
        assert_eq!(&got.unwrap().unwrap()[..], b"e1");

        // Sweep: a room whose last local socket left is dropped; a kept one stays.
        io1.local().leave("room-a").await.unwrap();
        assert_eq!(c1.sweep_rooms().await, (0, 1));
        assert_eq!(cluster.shard_numsub("t#/#room-a#"), 0);
        let keep = Arc::new(AtomicBool::new(true));
        let k = keep.clone();
        c3.set_room_keeper(Arc::new(move |nsp, room| {
            nsp == "/" && room == "kept" && k.load(Ordering::SeqCst)
        }));
        c3.ensure_room("/", "kept").await.unwrap();
        assert_eq!(c3.sweep_rooms().await, (0, 0));
        assert_eq!(cluster.shard_numsub("t#/#kept#"), 1);
        keep.store(false, Ordering::SeqCst);
        assert_eq!(c3.sweep_rooms().await, (0, 1));
        assert_eq!(cluster.shard_numsub("t#/#kept#"), 0);
        // A joined room nobody ensured is picked up by the sweep.
        io3.local().join("late").await.unwrap();
        wait_for("late subscribed", 5, || {
            cluster.shard_numsub("t#/#late#") == 1
        })
        .await;
        // Private (20-char) rooms never get a channel.
        c3.ensure_room("/", "KZIwqrVp75cAhUSIAAAB").await.unwrap();
        assert_eq!(cluster.shard_numsub("t#/#KZIwqrVp75cAhUSIAAAB#"), 0);
        // Unknown namespace: an error, not a panic.
        assert!(c3.ensure_room("/nope", "r").await.is_err());

        // ensure_room racing sweeps: a room the keeper wants when ensure_room returns is
        // never dropped by a sweep that started before.
        let wanted = Arc::new(std::sync::Mutex::new(
            std::collections::HashSet::<String>::new(),
        ));
        let w = wanted.clone();
        c2.set_room_keeper(Arc::new(move |_, room| w.lock().unwrap().contains(room)));
        for i in 0..40 {
            let room = format!("race-{i}");
            let sweeper = {
                let c2 = c2.clone();
                tokio::spawn(async move {
                    for _ in 0..3 {
                        c2.sweep_rooms().await;
                    }
                })
            };
            wanted.lock().unwrap().insert(room.clone());
            c2.ensure_room("/", &room).await.unwrap();
            sweeper.await.unwrap();
            c2.sweep_rooms().await;
            assert_eq!(
                cluster.shard_numsub(&format!("t#/#{room}#")),
                1,
                "{room} dropped"
            );
            wanted.lock().unwrap().remove(&room);
        }
        c2.sweep_rooms().await;
        assert_eq!(cluster.shard_numsub("t#/#race-0#"), 0);

        // Gauges and readiness.
        for c in [&c1, &c2, &c3] {
            assert!(c.is_ready());
            let g = &c.metrics().subscription_channels;
            assert_eq!(
                g.with_label_values(&["expected"]).get(),
                g.with_label_values(&["live"]).get()
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_subscriptions_recover() {
    bounded(120, async {
        let cluster = RedisCluster::start();
        let [(io1, c1), (io2, c2)] = spawn_servers_with::<2>(|| cfg(&cluster)).await;
        io1.ns("/", async || {}).await.unwrap();
        io2.ns("/", async || {}).await.unwrap();
        let (_tx1, mut rx1) = connect(&io1).await;
        let (_tx2, _rx2) = connect(&io2).await;
        io1.local().join("hot").await.unwrap();
        c1.ensure_room("/", "hot").await.unwrap();
        let channel = "t#/#hot#";
        let slot = cluster.slot(channel);
        let (_, port) = cluster.owner(slot);

        let mut ready = c1.ready_watch();
        let saw_not_ready = tokio::spawn(async move { ready.wait_for(|r| !*r).await.is_ok() });
        cluster.kill_master(port, slot);
        assert!(
            tokio::time::timeout(Duration::from_secs(10), saw_not_ready)
                .await
                .unwrap()
                .unwrap(),
            "readiness never went false"
        );
        wait_for("node 1 ready again", 30, || c1.is_ready()).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while cluster.shard_numsub(channel) != 1 {
            if Instant::now() > deadline {
                let per_node: Vec<String> = cluster
                    .ports
                    .iter()
                    .map(|p| cluster.cli(*p, &["PUBSUB", "SHARDNUMSUB", channel]).replace('\n', " "))
                    .collect();
                panic!(
                    "hot not subscribed on the new master: per node {per_node:?}, nodes {:?}, slot {slot}",
                    cluster.nodes()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(Metrics::sum(&c1.metrics().subscription_gaps) >= 1);

        // Published after recovery: delivered.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match io2.to("hot").emit("after", &1).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "publish never recovered: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        assert_eq!(recv(&mut rx1).await, r#"42["after",1]"#);
        // exactly once: never subscribed on a replica as well as on the master
        recv_none(&mut rx1, 500).await;
        // Requests work again within seconds (the server count sums SHARDNUMSUB over the new
        // masters; a subscription redis-rs lost silently while it replaced connections is
        // found by the reconcile's CLIENT INFO check and re-issued).
        wait_for("node 2 ready", 30, || c2.is_ready()).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = io2.fetch_sockets().await.map(|s| s.len());
            if matches!(n, Ok(2)) {
                break;
            }
            if Instant::now() > deadline {
                let per_node: Vec<String> = cluster
                    .ports
                    .iter()
                    .map(|p| cluster.cli(*p, &["PUBSUB", "SHARDNUMSUB", "t#/#"]).replace('\n', " "))
                    .collect();
                panic!("fetch_sockets {n:?}; main channel subscribers per node: {per_node:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(cluster.shard_numsub("t#/#"), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_migration_subscription_follows() {
    bounded(120, async {
        let cluster = RedisCluster::start();
        let [(io1, c1), (io2, _c2)] = spawn_servers_with::<2>(|| cfg(&cluster)).await;
        io1.ns("/", async || {}).await.unwrap();
        io2.ns("/", async || {}).await.unwrap();
        let (_tx1, mut rx1) = connect(&io1).await;
        io1.local().join("busy").await.unwrap();
        c1.ensure_room("/", "busy").await.unwrap();
        let channel = "t#/#busy#";
        let slot = cluster.slot(channel);
        let src = cluster.owner(slot);
        let dst = cluster
            .masters()
            .into_iter()
            .find(|m| m.1 != src.1)
            .unwrap();

        io2.to("busy").emit("before", &1).await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["before",1]"#);

        cluster.migrate_slot(slot, &dst);
        assert_eq!(cluster.owner(slot).1, dst.1);
        wait_for("busy subscribed on the new owner", 10, || {
            cluster
                .cli(dst.1, &["PUBSUB", "SHARDNUMSUB", channel])
                .ends_with('1')
        })
        .await;
        wait_for("ready", 10, || c1.is_ready()).await;
        assert_eq!(
            Metrics::get(&c1.metrics().subscription_gaps, &["moved"]),
            1,
            "the server-pushed sunsubscribe is one gap"
        );

        // Later messages arrive (the publisher follows MOVED too).
        io2.to("busy").emit("after", &2).await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["after",2]"#);
        recv_none(&mut rx1, 300).await;
        cluster.spublish(channel, "not-a-message");
        recv_none(&mut rx1, 300).await;
        assert!(Metrics::sum(&c1.metrics().malformed) >= 1);
    })
    .await;
}

#[tokio::test]
async fn unreachable_or_unsupported_cluster_is_an_error_not_a_hang() {
    bounded(30, async {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = |url: String| {
            RedisAdapterConfig::new(url)
                .with_connect_timeout(Duration::from_millis(500))
                .with_command_timeout(Duration::from_millis(500))
        };
        let started = Instant::now();
        let err = FanoutAdapterCtr::redis(cfg(format!("redis+cluster://127.0.0.1:{port}")))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
        // TLS needs a redis-rs TLS feature this build does not enable: refused, no panic.
        assert!(
            FanoutAdapterCtr::redis(cfg(format!("rediss+cluster://127.0.0.1:{port}")))
                .await
                .is_err()
        );
        // A malformed URL is a configuration error naming no password.
        let err = FanoutAdapterCtr::redis(cfg("redis+cluster://u:hunter2@h:1/3".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, fanout_adapter::Error::Config(_)), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    })
    .await;
}
