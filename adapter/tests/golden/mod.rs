//! Golden-vector tests: the Redis traffic of socket.io 4.8.4 + @socket.io/redis-adapter
//! 8.3.0 + @socket.io/redis-emitter 5.1.0, captured on a real redis-server by
//! `capture/capture.sh` into `trace-classic.json` (see `README.md` beside this file), and
//! the worked byte-level example of a room broadcast. Decoding must accept every captured
//! message, and re-encoding what Node sent must give Node's bytes back.
//!
//! Compiled as a unit-test module of the crate (`#[path]` in `lib.rs`) because it checks
//! the crate's private conversions too; it reads nothing outside this folder.

use std::path::PathBuf;

use crate::convert::{
    args_to_value, opts_to_wire, packet_to_wire, value_to_args, wire_to_ack, wire_to_packet,
};
use crate::protocol::{
    BroadcastMessage, Channels, RequestType, SocketEntry, WireRequest, WireResponse, decode_sniff,
};
use socketioxide_core::Value;
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions};
use socketioxide_core::packet::Packet;
use socketioxide_core::parser::Parse;
use socketioxide_parser_common::CommonParser;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn load_trace(name: &str) -> Vec<serde_json::Value> {
    let path = golden_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read golden capture {}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden capture is JSON")
}

/// Every PUBLISH of the classic trace: (channel, by, raw bytes, was_json).
fn publishes() -> Vec<(String, String, Vec<u8>, bool)> {
    load_trace("trace-classic.json")
        .into_iter()
        .filter(|e| e["op"] == "PUBLISH")
        .map(|e| {
            let channel = e["channel"].as_str().unwrap().to_string();
            let by = e["by"].as_str().unwrap().to_string();
            if let Some(hex) = e["msgpack_hex"].as_str() {
                (channel, by, hex::decode(hex).unwrap(), false)
            } else {
                let json = e["json"].as_str().unwrap();
                (channel, by, json.as_bytes().to_vec(), true)
            }
        })
        .collect()
}

#[test]
fn classic_trace_subscriptions_match_our_channel_names() {
    let trace = load_trace("trace-classic.json");
    let subs: Vec<&serde_json::Value> = trace.iter().filter(|e| e["by"] == "node0-sub").collect();
    let uid = subs
        .iter()
        .find_map(|e| {
            e["channel"]
                .as_str()
                .and_then(|c| c.strip_prefix("socket.io-response#/#"))
                .filter(|rest| !rest.is_empty())
                .map(|rest| rest.trim_end_matches('#').to_string())
        })
        .expect("node0 subscribes to its own response channel");
    let ch = Channels::new("socket.io", "/", &uid);
    assert_eq!(subs[0]["op"], "PSUBSCRIBE");
    assert_eq!(subs[0]["pattern"], ch.pattern.as_str());
    let channels: Vec<&str> = subs[1..]
        .iter()
        .map(|e| e["channel"].as_str().unwrap())
        .collect();
    assert_eq!(
        channels,
        vec![
            ch.request.as_str(),
            ch.response.as_str(),
            ch.own_response.as_str()
        ]
    );
}

#[test]
fn classic_trace_broadcasts_roundtrip_byte_exact() {
    let mut checked = 0;
    for (channel, by, bytes, is_json) in publishes() {
        if !channel.starts_with("socket.io#") {
            continue;
        }
        assert!(!is_json, "broadcasts are msgpack");
        let msg =
            BroadcastMessage::decode(&bytes).unwrap_or_else(|e| panic!("decode {channel}: {e}"));
        assert_eq!(msg.1.kind, 2, "EVENT packets only");
        // the channel rule: one room -> room channel
        let ch = Channels::new("socket.io", msg.1.nsp.as_deref().unwrap_or("/"), "x");
        assert_eq!(ch.broadcast_channel(&msg.2.rooms), channel);
        if by == "emitter" {
            // The emitter orders opts keys (rooms, flags, except); semantics must match.
            assert_eq!(msg.0, "emitter");
            continue;
        }
        let again = msg.encode().unwrap();
        assert_eq!(
            hex::encode(&again),
            hex::encode(&bytes),
            "re-encode of {channel}"
        );
        checked += 1;
    }
    assert_eq!(checked, 3, "three node broadcasts in the capture");
}

#[test]
fn classic_trace_emitter_messages_decode() {
    let pubs: Vec<_> = publishes()
        .into_iter()
        .filter(|p| p.1 == "emitter")
        .collect();
    assert_eq!(pubs.len(), 6);
    // emitter.of('/admin').except('r3').volatile.emit('e')
    let admin = pubs.iter().find(|p| p.0 == "socket.io#/admin#").unwrap();
    let msg = BroadcastMessage::decode(&admin.2).unwrap();
    assert_eq!(msg.1.nsp.as_deref(), Some("/admin"));
    assert_eq!(msg.2.except, vec!["r3"]);
    assert_eq!(msg.2.flags.as_ref().unwrap().volatile, Some(true));
    // join / leave / disconnect requests from the emitter carry no uid
    let reqs: Vec<WireRequest> = pubs
        .iter()
        .filter(|p| p.0 == "socket.io-request#/#")
        .map(|p| decode_sniff(&p.2).unwrap())
        .collect();
    let kinds: Vec<u8> = reqs.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, vec![2, 3, 4, 6]);
    assert!(reqs[0].uid.is_none());
    assert_eq!(reqs[0].opts.as_ref().unwrap().rooms, vec!["r1"]);
    assert_eq!(reqs[0].rooms.as_deref(), Some(&["r9".to_string()][..]));
    assert_eq!(reqs[2].close, Some(true));
    assert_eq!(reqs[3].uid.as_deref(), Some("emitter"));
}

#[test]
fn classic_trace_requests_and_responses_roundtrip_byte_exact() {
    let mut requests = 0;
    let mut responses = 0;
    for (channel, _by, bytes, is_json) in publishes() {
        if channel == "socket.io-request#/#" {
            let req: WireRequest = decode_sniff(&bytes).unwrap_or_else(|e| panic!("{e}"));
            assert!(RequestType::from_u8(req.kind).is_some());
            assert_eq!(is_json, req.kind != 7, "only type 7 is msgpack");
            assert_eq!(req.encode().unwrap(), bytes, "re-encode request {:?}", req);
            requests += 1;
        } else if channel.starts_with("socket.io-response#/#") {
            let res: WireResponse = decode_sniff(&bytes).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(is_json, res.kind != Some(9), "only type 9 is msgpack");
            assert_eq!(
                String::from_utf8_lossy(&res.encode().unwrap()),
                String::from_utf8_lossy(&bytes)
            );
            responses += 1;
        }
    }
    assert_eq!(requests, 11);
    assert_eq!(responses, 5);
}

#[test]
fn classic_trace_fetch_response_sockets() {
    let fetch = publishes()
        .into_iter()
        .find(|p| {
            p.0 == "socket.io-response#/#"
                && p.2.starts_with(br#"{"requestId""#)
                && p.2.windows(9).any(|w| w == b"\"sockets\"")
        })
        .unwrap();
    let res: WireResponse = decode_sniff(&fetch.2).unwrap();
    let sockets = res.sockets.unwrap();
    let SocketEntry::Full(s) = &sockets[0] else {
        panic!("full socket expected")
    };
    assert_eq!(s.id.len(), 20, "Node socket ids are 20 chars");
    assert_eq!(s.rooms, vec![s.id.clone(), "r1".to_string()]);
    // a Node id is not a socketioxide Sid: the adapter skips it (counted as unmappable)
    assert!(s.id.parse::<socketioxide_core::Sid>().is_err());
}

#[test]
fn ack_broadcast_request_and_ack_response_decode() {
    let pubs = publishes();
    let req = pubs
        .iter()
        .find(|p| p.0 == "socket.io-request#/#" && !p.3)
        .unwrap();
    let req: WireRequest = decode_sniff(&req.2).unwrap();
    assert_eq!(req.kind, 7);
    assert_eq!(
        req.opts.as_ref().unwrap().flags.as_ref().unwrap().timeout,
        Some(300)
    );
    let packet = wire_to_packet(CommonParser, req.packet.as_ref().unwrap(), "/").unwrap();
    assert_eq!(common_str(&packet), r#"["hello"]"#);

    let ack = pubs
        .iter()
        .find(|p| p.0 == "socket.io-response#/#" && !p.3)
        .unwrap();
    let res: WireResponse = decode_sniff(&ack.2).unwrap();
    assert_eq!(res.kind, Some(9));
    let value = wire_to_ack(CommonParser, res.packet.as_ref().unwrap()).unwrap();
    assert_eq!(value, Value::Str(r#"["ack-from-client1"]"#.into(), None));
}

fn common_str(packet: &Packet) -> String {
    match crate::convert::packet_value(packet).unwrap() {
        Value::Str(s, _) => s.to_string(),
        Value::Bytes(_) => panic!("common parser gives strings"),
    }
}

/// `io.to("r1").emit("hello", {a: 1})` from uid `Xy12ab` → exactly these 63 bytes (the
/// bytes of the first broadcast of the capture with its uid replaced).
#[test]
fn room_broadcast_byte_exact() {
    let expected = hex::decode(concat!(
        "93",
        "a6587931326162",
        "83",
        "a474797065",
        "02",
        "a464617461",
        "92",
        "a568656c6c6f",
        "81a16101",
        "a36e7370",
        "a12f",
        "83",
        "a5726f6f6d73",
        "91a27231",
        "a6657863657074",
        "90",
        "a5666c616773",
        "80",
    ))
    .unwrap();
    assert_eq!(expected.len(), 63);
    // the capture's first broadcast is the same message from another uid
    let (_, _, captured, _) = publishes()
        .into_iter()
        .find(|p| p.0 == "socket.io#/#r1#" && p.1 == "node0-pub")
        .unwrap();
    let mut msg = BroadcastMessage::decode(&captured).unwrap();
    msg.0 = "Xy12ab".into();
    assert_eq!(hex::encode(msg.encode().unwrap()), hex::encode(&expected));

    let value = CommonParser
        .encode_value(&serde_json::json!({"a": 1}), Some("hello"))
        .unwrap();
    let packet = Packet::event("/", value);
    let mut opts = BroadcastOptions::default();
    opts.add_flag(BroadcastFlags::Broadcast);
    opts.rooms.push("r1".into());

    let wire_opts = opts_to_wire(&opts, true, None).unwrap();
    let ch = Channels::new("socket.io", "/", "Xy12ab");
    assert_eq!(ch.broadcast_channel(&wire_opts.rooms), "socket.io#/#r1#");
    let wire_packet = packet_to_wire(CommonParser, &packet).unwrap();
    let bytes = BroadcastMessage("Xy12ab".into(), wire_packet, wire_opts)
        .encode()
        .unwrap();
    assert_eq!(hex::encode(bytes), hex::encode(&expected));

    // and back: the receiver rebuilds the same socket.io payload
    let msg = BroadcastMessage::decode(&expected).unwrap();
    let back = wire_to_packet(CommonParser, &msg.1, "/").unwrap();
    assert_eq!(common_str(&back), r#"["hello",{"a":1}]"#);
}

/// Binary stays inline (msgpack `bin`), type 2, never placeholders.
#[test]
fn binary_is_inline_and_roundtrips() {
    let trace = publishes();
    let (_, _, bytes, _) = trace
        .iter()
        .find(|p| p.0 == "socket.io#/#" && p.1 == "node0-pub")
        .unwrap();
    let msg = BroadcastMessage::decode(bytes).unwrap();
    let packet = wire_to_packet(CommonParser, &msg.1, "/").unwrap();
    match crate::convert::packet_value(&packet).unwrap() {
        Value::Str(s, Some(bins)) => {
            assert_eq!(s.as_str(), r#"["hello",{"_placeholder":true,"num":0}]"#);
            assert_eq!(bins[0].as_ref(), &[1u8, 2]);
        }
        other => panic!("expected a binary event, got {other:?}"),
    }
    // back to the wire: identical bytes
    let again = packet_to_wire(CommonParser, &packet).unwrap();
    assert_eq!(again, msg.1);
    let args = value_to_args(CommonParser, crate::convert::packet_value(&packet).unwrap()).unwrap();
    assert_eq!(args[1], rmpv::Value::Binary(vec![1, 2]));
    let value = args_to_value(CommonParser, &args).unwrap();
    assert!(matches!(value, Value::Str(_, Some(_))));
}

/// The ack-broadcast request we send (type 7) has Node's exact layout.
#[test]
fn ack_request_encoding_matches_node() {
    let (_, _, node_bytes, _) = publishes()
        .into_iter()
        .find(|p| p.0 == "socket.io-request#/#" && !p.3)
        .unwrap();
    let node: WireRequest = decode_sniff(&node_bytes).unwrap();
    let value = CommonParser.encode_value(&[0u8; 0], Some("hello")).unwrap();
    let packet = Packet::event("/", value);
    let mut opts = BroadcastOptions::default();
    opts.add_flag(BroadcastFlags::Broadcast);
    let ours = WireRequest {
        uid: node.uid.clone(),
        request_id: node.request_id.clone(),
        kind: 7,
        packet: Some(packet_to_wire(CommonParser, &packet).unwrap()),
        opts: opts_to_wire(&opts, true, Some(300)),
        ..Default::default()
    };
    assert_eq!(
        hex::encode(ours.encode().unwrap()),
        hex::encode(&node_bytes)
    );
}

/// Every SPUBLISH of the sharded trace: (channel, raw bytes).
fn spublishes() -> Vec<(String, Vec<u8>)> {
    load_trace("trace-sharded-dynamic.json")
        .into_iter()
        .filter(|e| e["op"] == "SPUBLISH")
        .map(|e| {
            let channel = e["channel"].as_str().unwrap().to_string();
            match e["msgpack_hex"].as_str() {
                Some(hex) => (channel, hex::decode(hex).unwrap()),
                None => (channel, e["json"].as_str().unwrap().as_bytes().to_vec()),
            }
        })
        .collect()
}

#[test]
fn sharded_trace_decodes_and_reencodes_to_nodes_bytes() {
    use crate::protocol::sharded::{self, ShardedChannels, ShardedMessage};
    let all = spublishes();
    assert!(all.len() >= 15, "trace has {} SPUBLISH", all.len());
    let mut kinds = std::collections::BTreeSet::new();
    for (channel, bytes) in all {
        let env = sharded::decode(&bytes)
            .unwrap_or_else(|e| panic!("{channel}: {e} ({})", String::from_utf8_lossy(&bytes)));
        let nsp = env.nsp.clone().expect("Node always sends nsp");
        let ch = ShardedChannels::new("socket.io", &nsp, &env.uid);
        let again = match &env.message {
            ShardedMessage::Broadcast(msg) => {
                kinds.insert("broadcast");
                // Node's channel choice is ours too.
                assert_eq!(ch.broadcast_channel(&msg.2.rooms), channel);
                sharded::encode_broadcast(msg, &nsp).unwrap()
            }
            ShardedMessage::Request(req) => {
                kinds.insert("request");
                assert_eq!(channel, ch.main);
                sharded::encode_request(req, &nsp).unwrap()
            }
            ShardedMessage::Response(res) => {
                kinds.insert("response");
                assert!(channel.starts_with(&ch.main) && channel != ch.main);
                sharded::encode_response(res, &env.uid, &nsp).unwrap()
            }
            ShardedMessage::Ignored(t) => panic!("Node sent ignored type {t}"),
        };
        assert_eq!(
            String::from_utf8_lossy(&again),
            String::from_utf8_lossy(&bytes),
            "re-encoding differs on {channel}"
        );
    }
    assert_eq!(kinds.len(), 3);
}

#[test]
fn sharded_trace_subscriptions_match_our_channel_names() {
    use crate::protocol::sharded::ShardedChannels;
    let trace = load_trace("trace-sharded-dynamic.json");
    let subs: Vec<&str> = trace
        .iter()
        .filter(|e| e["op"] == "SSUBSCRIBE" && e["by"] == "node0-sub")
        .map(|e| e["channel"].as_str().unwrap())
        .collect();
    let uid = subs[1]
        .strip_prefix("socket.io#/#")
        .unwrap()
        .trim_end_matches('#');
    let ch = ShardedChannels::new("socket.io", "/", uid);
    assert_eq!(subs[0], ch.main);
    assert_eq!(subs[1], ch.own_response);
    assert!(subs.contains(&ch.room("r2").as_str()));
}
