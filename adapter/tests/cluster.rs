//! Multi-server tests over a real redis-server (socketioxide-redis's test pattern):
//! broadcast, rooms, except, acks, fetch_sockets, rooms(), join/leave, disconnect, local,
//! remote sockets, the remote-broadcast hook and plain channels.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod fixture;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use fanout_adapter::RemoteBroadcast;
use fixture::{RedisServer, bounded, recv, recv_none, spawn_servers};
use futures_util::StreamExt;
use socketioxide::extract::SocketRef;

type Sock = SocketRef<fixture::Adapter>;
/// (nsp, event, args, rooms) of a hook call.
type Seen = (String, Option<String>, Vec<serde_json::Value>, Vec<String>);

/// Parses `42<id>[...]` and returns the ack id.
fn ack_id(packet: &str) -> String {
    packet[2..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect()
}

async fn connect(io: &fixture::Io) -> tokio::sync::mpsc::Receiver<engineioxide::Packet> {
    let (tx, mut rx) = io.new_dummy_sock("/", ()).await;
    let connect = recv(&mut rx).await;
    assert!(connect.starts_with("40"), "connect packet, got {connect}");
    std::mem::forget(tx); // keep the dummy client alive for the test
    rx
}

#[tokio::test]
async fn broadcast_reaches_every_server() {
    bounded(30, async {
        let redis = RedisServer::start();
        let [(io1, _), (io2, _)] = spawn_servers(&redis).await;
        io1.ns("/", async || {}).await.unwrap();
        io2.ns("/", async || {}).await.unwrap();
        let mut rx1 = connect(&io1).await;
        let mut rx2 = connect(&io2).await;

        io1.emit("test", &2).await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["test",2]"#);
        assert_eq!(recv(&mut rx2).await, r#"42["test",2]"#);

        io2.emit("bin", &bytes::Bytes::from_static(&[1, 2, 3]))
            .await
            .unwrap();
        let expected = r#"451-["bin",{"_placeholder":true,"num":0}]"#;
        assert_eq!(recv(&mut rx1).await, expected);
        assert!(
            recv(&mut rx1).await.starts_with('b'),
            "binary attachment follows"
        );
        assert_eq!(recv(&mut rx2).await, expected);
        recv(&mut rx2).await;

        recv_none(&mut rx1, 200).await;
        recv_none(&mut rx2, 200).await;
    })
    .await;
}

#[tokio::test]
async fn socket_broadcast_excludes_sender() {
    bounded(30, async {
        let redis = RedisServer::start();
        let [(io1, _), (io2, _)] = spawn_servers(&redis).await;
        io1.ns("/", async |s: Sock| {
            s.on("go", async |s: Sock| {
                s.broadcast().emit("test", "from1").await.unwrap();
            });
        })
        .await
        .unwrap();
        io2.ns("/", async || {}).await.unwrap();
        let (tx1, mut rx1) = io1.new_dummy_sock("/", ()).await;
        recv(&mut rx1).await;
        let mut rx1b = connect(&io1).await;
        let mut rx2 = connect(&io2).await;
        tx1.try_send(engineioxide::Packet::Message(r#"2["go"]"#.into()))
            .unwrap();
        assert_eq!(recv(&mut rx2).await, r#"42["test","from1"]"#);
        assert_eq!(recv(&mut rx1b).await, r#"42["test","from1"]"#);
        recv_none(&mut rx1, 300).await;
    })
    .await;
}

#[tokio::test]
async fn rooms_and_except() {
    bounded(30, async {
        let redis = RedisServer::start();
        let [(io1, _), (io2, _), (io3, _)] = spawn_servers(&redis).await;
        let join = |room: &'static str| async move |s: Sock| s.join(room);
        io1.ns("/", join("room1")).await.unwrap();
        io2.ns("/", join("room2")).await.unwrap();
        io3.ns("/", join("room3")).await.unwrap();
        let mut rx1 = connect(&io1).await;
        let mut rx2 = connect(&io2).await;
        let mut rx3 = connect(&io3).await;

        // single room -> room channel
        io1.to("room2").emit("a", &1).await.unwrap();
        assert_eq!(recv(&mut rx2).await, r#"42["a",1]"#);
        // several rooms, delivered once each
        io3.to(["room1", "room2"])
            .to("room2")
            .emit("b", &2)
            .await
            .unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["b",2]"#);
        assert_eq!(recv(&mut rx2).await, r#"42["b",2]"#);
        // except
        io2.except("room1").emit("c", &3).await.unwrap();
        assert_eq!(recv(&mut rx2).await, r#"42["c",3]"#);
        assert_eq!(recv(&mut rx3).await, r#"42["c",3]"#);
        // to + except
        io1.to(["room1", "room3"])
            .except("room3")
            .emit("d", &4)
            .await
            .unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["d",4]"#);

        recv_none(&mut rx1, 200).await;
        recv_none(&mut rx2, 100).await;
        recv_none(&mut rx3, 100).await;
    })
    .await;
}

#[tokio::test]
async fn local_flag_stays_local() {
    bounded(30, async {
        let redis = RedisServer::start();
        let [(io1, _), (io2, _)] = spawn_servers(&redis).await;
        io1.ns("/", async || {}).await.unwrap();
        io2.ns("/", async || {}).await.unwrap();
        let mut rx1 = connect(&io1).await;
        let mut rx2 = connect(&io2).await;
        io1.local().emit("l", &1).await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["l",1]"#);
        recv_none(&mut rx2, 300).await;
        assert_eq!(io1.local().fetch_sockets().await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn broadcast_with_ack_merges_local_and_remote() {
    bounded(30, async {
        let redis = RedisServer::start();
        let [(io1, _), (io2, _)] = spawn_servers(&redis).await;
        io1.ns("/", async || {}).await.unwrap();
        io2.ns("/", async || {}).await.unwrap();
        let (tx1, mut rx1) = io1.new_dummy_sock("/", ()).await;
        let (tx2, mut rx2) = io2.new_dummy_sock("/", ()).await;
        recv(&mut rx1).await;
        recv(&mut rx2).await;

        let io = io1.clone();
        let acks = tokio::spawn(async move {
            io.timeout(std::time::Duration::from_millis(1500))
                .emit_with_ack::<_, String>("q", "bar")
                .await
                .unwrap()
                .collect::<Vec<_>>()
                .await
        });
        for (tx, rx, answer) in [(&tx1, &mut rx1, "one"), (&tx2, &mut rx2, "two")] {
            let p = recv(rx).await;
            assert!(p.ends_with(r#"["q","bar"]"#), "{p}");
            let ack = format!(r#"3{}["{answer}"]"#, ack_id(&p));
            tx.try_send(engineioxide::Packet::Message(ack.into()))
                .unwrap();
        }
        let started = std::time::Instant::now();
        let acks = acks.await.unwrap();
        let mut got: Vec<String> = acks.into_iter().map(|(_, r)| r.unwrap()).collect();
        got.sort();
        assert_eq!(got, vec!["one", "two"]);
        // the stream ends as soon as every expected ack is in, not at the timeout
        assert!(started.elapsed() < std::time::Duration::from_millis(1000));
    })
    .await;
}

#[tokio::test]
async fn broadcast_with_ack_missing_remote_ack_ends_at_timeout() {
    bounded(30, async {
        let redis = RedisServer::start();
        let [(io1, _), (io2, _)] = spawn_servers(&redis).await;
        io1.ns("/", async || {}).await.unwrap();
        io2.ns("/", async || {}).await.unwrap();
        let _rx1 = connect(&io1).await;
        let _rx2 = connect(&io2).await;
        let started = std::time::Instant::now();
        let acks: Vec<_> = io1
            .timeout(std::time::Duration::from_millis(300))
            .emit_with_ack::<_, String>("q", "bar")
            .await
            .unwrap()
            .collect()
            .await;
        // the local socket times out (error item); the remote one is just missing
        assert_eq!(acks.len(), 1);
        assert!(acks[0].1.is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    })
    .await;
}

#[tokio::test]
async fn fetch_sockets_rooms_and_remote_sockets() {
    bounded(30, async {
        let redis = RedisServer::start();
        let [(io1, _), (io2, _), (io3, _)] = spawn_servers(&redis).await;
        let join = |room: &'static str| async move |s: Sock| s.join(room);
        io1.ns("/", join("room1")).await.unwrap();
        io2.ns("/", join("room2")).await.unwrap();
        io3.ns("/", join("room3")).await.unwrap();
        let _rx1 = connect(&io1).await;
        let mut rx2 = connect(&io2).await;
        let _rx3 = connect(&io3).await;

        let sockets = io1.fetch_sockets().await.unwrap();
        let ids: HashSet<_> = sockets.iter().map(|s| s.data().id).collect();
        let expected: HashSet<_> = [&io1, &io2, &io3]
            .iter()
            .flat_map(|io| io.sockets())
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, expected);
        let uid2 = io2.config().server_id;
        let remote2 = sockets
            .iter()
            .find(|s| s.data().server_id == uid2)
            .expect("socket of io2 carries io2's server id");

        // filtered fetch
        let in_room3 = io1.to("room3").fetch_sockets().await.unwrap();
        assert_eq!(in_room3.len(), 1);

        // rooms(): all, and filtered
        let mut rooms: Vec<String> = io2
            .rooms()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.to_string())
            .collect();
        rooms.sort();
        assert_eq!(rooms, vec!["room1", "room2", "room3"]);
        let rooms: Vec<String> = io1
            .to("room2")
            .rooms()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.to_string())
            .collect();
        assert!(rooms.contains(&"room2".to_string()));
        assert!(!rooms.contains(&"room1".to_string()));

        // acting on a remote socket (socket id -> single socket on its server)
        remote2.emit("direct", &7).await.unwrap();
        assert_eq!(recv(&mut rx2).await, r#"42["direct",7]"#);
        let remote_rooms = remote2.rooms().await.unwrap();
        assert!(remote_rooms.iter().any(|r| r == "room2"));
    })
    .await;
}

#[tokio::test]
async fn join_leave_and_disconnect_across_servers() {
    bounded(30, async {
        let redis = RedisServer::start();
        let [(io1, _), (io2, _)] = spawn_servers(&redis).await;
        io1.ns("/", async || {}).await.unwrap();
        io2.ns("/", async || {}).await.unwrap();
        let mut rx1 = connect(&io1).await;
        let mut rx2 = connect(&io2).await;

        io1.clone().join("room7").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(io2.sockets()[0].rooms(), vec!["room7"]);
        io2.to("room7").emit("in7", &1).await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["in7",1]"#);
        assert_eq!(recv(&mut rx2).await, r#"42["in7",1]"#);

        io2.clone().leave("room7").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(io1.sockets()[0].rooms().is_empty());
        io1.to("room7").emit("in7", &2).await.unwrap();
        recv_none(&mut rx1, 200).await;
        recv_none(&mut rx2, 100).await;

        io1.disconnect().await.unwrap();
        assert_eq!(recv(&mut rx1).await, "41");
        assert_eq!(recv(&mut rx2).await, "41");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(io2.sockets().is_empty());
    })
    .await;
}

#[tokio::test]
async fn remote_broadcast_hook_sees_only_foreign_broadcasts() {
    bounded(30, async {
        let redis = RedisServer::start();
        let [(io1, ctr1), (io2, _)] = spawn_servers(&redis).await;
        let seen: Arc<Mutex<Vec<Seen>>> = Default::default();
        let sink = seen.clone();
        ctr1.set_remote_broadcast_hook(Arc::new(move |bc: &RemoteBroadcast| {
            sink.lock().unwrap().push((
                bc.nsp.clone(),
                bc.event().map(str::to_owned),
                bc.args_json(),
                bc.opts.rooms.iter().map(|r| r.to_string()).collect(),
            ));
            false
        }));
        io1.ns("/", async || {}).await.unwrap();
        io2.ns("/", async || {}).await.unwrap();
        io1.to("topic").emit("own", &0).await.unwrap(); // local origin: no hook
        io2.to("topic")
            .emit("topic", &serde_json::json!({"x": 1}))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, "/");
        assert_eq!(seen[0].1.as_deref(), Some("topic"));
        assert_eq!(seen[0].2, vec![serde_json::json!({"x": 1})]);
        assert_eq!(seen[0].3, vec!["topic"]);
    })
    .await;
}

#[tokio::test]
async fn claimed_broadcasts_are_not_applied_and_broadcast_remote_skips_the_sender() {
    bounded(30, async {
        let redis = RedisServer::start();
        let [(io1, ctr1), (io2, ctr2)] = spawn_servers(&redis).await;
        // Server 2's hook delivers "claimed" itself (here: not at all) and leaves the rest.
        ctr2.set_remote_broadcast_hook(Arc::new(|bc: &RemoteBroadcast| {
            bc.event() == Some("claimed")
        }));
        io1.ns("/", async |s: Sock| s.join("room")).await.unwrap();
        io2.ns("/", async |s: Sock| s.join("room")).await.unwrap();
        let mut rx1 = connect(&io1).await;
        let mut rx2 = connect(&io2).await;

        io1.to("room").emit("claimed", &1).await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["claimed",1]"#);
        io1.to("room").emit("plain", &2).await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["plain",2]"#);
        assert_eq!(
            recv(&mut rx2).await,
            r#"42["plain",2]"#,
            "not claimed: applied"
        );

        // broadcast_remote: the other servers only, as a Node-compatible room broadcast.
        ctr2.set_remote_broadcast_hook(Arc::new(|_: &RemoteBroadcast| false));
        let data = serde_json::json!({"prénom": "Zoé", "n": [1, 2.5, null]});
        ctr1.broadcast_remote("/", "room", "room", &data)
            .await
            .unwrap();
        assert_eq!(
            recv(&mut rx2).await,
            r#"42["room",{"n":[1,2.5,null],"prénom":"Zoé"}]"#
        );
        recv_none(&mut rx1, 200).await;
    })
    .await;
}

#[tokio::test]
async fn one_subscriber_connection_per_server_and_plain_channels() {
    bounded(30, async {
        let redis = RedisServer::start();
        let [(io1, ctr1), (io2, ctr2)] = spawn_servers(&redis).await;
        io1.ns("/", async || {}).await.unwrap();
        io2.ns("/", async || {}).await.unwrap();
        io1.ns("/admin", async || {}).await.unwrap();
        assert!(ctr1.is_ready() && ctr2.is_ready());

        // NUMSUB of the request channel = number of servers (what peers count)
        let mut conn = redis.conn().await;
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("socket.io-request#/#")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 2);

        let mut sub = ctr2
            .subscribe_channel("fanout:events".into())
            .await
            .unwrap();
        ctr1.publish_channel("fanout:events".into(), b"{\"topic\":\"t\"}".to_vec())
            .await
            .unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(2), sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"{\"topic\":\"t\"}");
    })
    .await;
}
