//! Embedded mode (`FanoutAdapterCtr::local()`): behaves like socketioxide's LocalAdapter,
//! init completes immediately, plain channels are an in-process loopback.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod fixture;

use std::time::Duration;

use fanout_adapter::{FanoutAdapterCtr, Metrics};
use fixture::{Adapter, Io, bounded, recv, recv_none};
use futures_util::StreamExt;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;

fn local_io() -> (Io, FanoutAdapterCtr) {
    let ctr = FanoutAdapterCtr::local();
    let (_svc, io) = SocketIo::builder()
        .with_adapter::<Adapter>(ctr.clone())
        .build_svc();
    (io, ctr)
}

#[tokio::test]
async fn local_mode_is_a_local_adapter() {
    bounded(20, async {
        let (io, ctr) = local_io();
        assert!(ctr.is_ready() && !ctr.is_cluster());
        // init resolves at once; the namespace is usable even before awaiting it
        let init = io.ns("/", async |s: SocketRef<Adapter>| s.join("r1"));
        init.await.unwrap();
        let (tx1, mut rx1) = io.new_dummy_sock("/", ()).await;
        let (_tx2, mut rx2) = io.new_dummy_sock("/", ()).await;
        recv(&mut rx1).await;
        recv(&mut rx2).await;

        io.emit("all", &1).await.unwrap();
        assert_eq!(recv(&mut rx1).await, r#"42["all",1]"#);
        assert_eq!(recv(&mut rx2).await, r#"42["all",1]"#);

        let first = io.sockets()[0].id;
        io.except(first).emit("ex", &2).await.unwrap(); // sid room not joined: no effect, like LocalAdapter
        recv(&mut rx1).await;
        recv(&mut rx2).await;

        assert_eq!(io.fetch_sockets().await.unwrap().len(), 2);
        assert_eq!(io.rooms().await.unwrap(), vec!["r1"]);
        io.clone().join("r2").await.unwrap();
        let mut rooms: Vec<String> = io
            .rooms()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.to_string())
            .collect();
        rooms.sort();
        assert_eq!(rooms, vec!["r1", "r2"]);

        let io2 = io.clone();
        let acks = tokio::spawn(async move {
            io2.timeout(Duration::from_millis(500))
                .emit_with_ack::<_, String>("q", &0)
                .await
                .unwrap()
                .collect::<Vec<_>>()
                .await
        });
        let p = recv(&mut rx1).await;
        let id: String = p[2..].chars().take_while(|c| c.is_ascii_digit()).collect();
        tx1.try_send(engineioxide::Packet::Message(
            format!(r#"3{id}["a"]"#).into(),
        ))
        .unwrap();
        let acks = acks.await.unwrap();
        assert_eq!(acks.len(), 2);
        assert_eq!(acks.iter().filter(|(_, r)| r.is_ok()).count(), 1);
        recv(&mut rx2).await; // its copy of "q"

        io.disconnect().await.unwrap();
        assert_eq!(recv(&mut rx1).await, "41");
        assert_eq!(recv(&mut rx2).await, "41");
        recv_none(&mut rx1, 50).await;
    })
    .await;
}

#[tokio::test]
async fn local_channels_loop_back() {
    bounded(10, async {
        let ctr = FanoutAdapterCtr::local();
        let mut a = ctr.subscribe_channel("fanout:events".into()).await.unwrap();
        let mut b = ctr.subscribe_channel("fanout:events".into()).await.unwrap();
        ctr.publish_channel("fanout:events".into(), b"x".to_vec())
            .await
            .unwrap();
        ctr.publish_channel("other".into(), b"y".to_vec())
            .await
            .unwrap();
        assert_eq!(&a.recv().await.unwrap()[..], b"x");
        assert_eq!(&b.recv().await.unwrap()[..], b"x");
        assert!(a.try_recv().is_err());
        assert_eq!(Metrics::sum(&ctr.metrics().dropped), 0);
        assert!(*ctr.ready_watch().borrow());
    })
    .await;
}
