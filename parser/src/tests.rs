//! End-to-end tests of the `Parse` API against byte strings written by hand from the
//! Socket.IO protocol description.

use std::{collections::VecDeque, time::Duration};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use socketioxide_core::{
    Str, Value,
    packet::{Packet, PacketData},
    parser::{Parse, ParseConfig, ParseError, ParserState},
};

use crate::CommonParser;

const P: CommonParser = CommonParser;

fn decode(state: &ParserState, text: &str) -> Result<Packet, ParseError> {
    P.decode_str(&ParseConfig::default(), state, Str::from(text.to_owned()))
}

fn decode_one(text: &str) -> Packet {
    decode(&ParserState::default(), text).unwrap()
}

fn bin(state: &ParserState, data: &'static [u8]) -> Result<Packet, ParseError> {
    P.decode_bin(&ParseConfig::default(), state, Bytes::from_static(data))
}

fn encode(packet: Packet) -> (String, Option<VecDeque<Bytes>>) {
    match P.encode(packet) {
        Value::Str(s, bins) => (s.to_string(), bins),
        Value::Bytes(_) => panic!("the common parser encodes text"),
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap()
}

fn event_value(packet: &mut Packet) -> &mut Value {
    match &mut packet.inner {
        PacketData::Event(v, _) | PacketData::BinaryEvent(v, _) => v,
        PacketData::EventAck(v, _) | PacketData::BinaryAck(v, _) => v,
        other => panic!("not an event: {other:?}"),
    }
}

fn bins(v: &[&'static [u8]]) -> Option<VecDeque<Bytes>> {
    Some(v.iter().map(|b| Bytes::from_static(b)).collect())
}

// ---------------------------------------------------------------- packet types, both ways

#[test]
fn connect() {
    let p = decode_one("0");
    assert_eq!(p, Packet::connect("/", None));
    let p = decode_one(r#"0/admin,{"token":"abc"}"#);
    assert_eq!(p.ns, "/admin");
    assert!(matches!(&p.inner, PacketData::Connect(Some(v)) if text(v) == r#"{"token":"abc"}"#));
    let auth: Json = P
        .decode_default(match &p.inner {
            PacketData::Connect(v) => v.as_ref(),
            _ => None,
        })
        .unwrap();
    assert_eq!(auth, json!({"token": "abc"}));

    let sid = P.encode_default(&json!({"sid": "xyz"})).unwrap();
    assert_eq!(
        encode(Packet::connect("/", Some(sid.clone()))).0,
        r#"0{"sid":"xyz"}"#
    );
    assert_eq!(
        encode(Packet::connect("/admin", Some(sid))).0,
        r#"0/admin,{"sid":"xyz"}"#
    );
    assert_eq!(encode(Packet::connect("admin", None)).0, "0/admin,");
    // a namespace without the trailing comma at the end of the packet
    assert_eq!(decode_one("0/custom").ns, "/custom");
    assert_eq!(decode_one("0/tést™,").ns, "/tést™");
}

#[test]
fn disconnect() {
    assert_eq!(decode_one("1"), Packet::disconnect("/"));
    assert_eq!(decode_one("1/admin,"), Packet::disconnect("/admin"));
    assert_eq!(encode(Packet::disconnect("/")).0, "1");
    assert_eq!(encode(Packet::disconnect("/admin")).0, "1/admin,");
}

#[test]
fn event() {
    let mut p = decode_one(r#"2["hello",1]"#);
    assert_eq!(p.ns, "/");
    assert!(matches!(p.inner, PacketData::Event(_, None)));
    assert_eq!(P.read_event(event_value(&mut p)).unwrap(), "hello");
    assert_eq!(P.decode_value::<u8>(event_value(&mut p), true).unwrap(), 1);

    let mut p = decode_one(r#"2/admin,13["project:delete",123]"#);
    assert_eq!(p.ns, "/admin");
    assert!(matches!(p.inner, PacketData::Event(_, Some(13))));
    assert_eq!(P.read_event(event_value(&mut p)).unwrap(), "project:delete");

    let v = P.encode_value(&json!({"a": 1}), Some("hello")).unwrap();
    assert_eq!(text(&v), r#"["hello",{"a":1}]"#);
    assert_eq!(
        encode(Packet::event("/", v.clone())).0,
        r#"2["hello",{"a":1}]"#
    );
    let mut p = Packet::event("/admin", v);
    p.inner.set_ack_id(13);
    assert_eq!(encode(p).0, r#"2/admin,13["hello",{"a":1}]"#);
}

#[test]
fn ack() {
    let mut p = decode_one(r#"3/admin,13[{"a":1}]"#);
    assert_eq!(p.ns, "/admin");
    assert!(matches!(p.inner, PacketData::EventAck(_, 13)));
    let got: Json = P.decode_value(event_value(&mut p), false).unwrap();
    assert_eq!(got, json!({"a": 1}));

    let v = P.encode_value(&json!({"a": 1}), None).unwrap();
    assert_eq!(text(&v), r#"[{"a":1}]"#);
    assert_eq!(
        encode(Packet::ack("/admin", v.clone(), 13)).0,
        r#"3/admin,13[{"a":1}]"#
    );
    assert_eq!(encode(Packet::ack("/", v, 7)).0, r#"37[{"a":1}]"#);
    // an ACK must carry its id
    assert!(matches!(
        decode(&ParserState::default(), r#"3["x"]"#),
        Err(ParseError::InvalidAckId)
    ));
}

#[test]
fn connect_error() {
    assert_eq!(
        encode(Packet::connect_error("/", "Invalid namespace")).0,
        r#"4{"message":"Invalid namespace"}"#
    );
    assert_eq!(
        encode(Packet::connect_error("/admin", "say \"no\"")).0,
        r#"4/admin,{"message":"say \"no\""}"#
    );
    assert_eq!(
        decode_one(r#"4/admin,{"message":"Not authorized"}"#),
        Packet::connect_error("/admin", "Not authorized")
    );
    assert_eq!(
        decode_one(r#"4"v4 text""#),
        Packet::connect_error("/", "v4 text")
    );
    assert!(matches!(
        decode(&ParserState::default(), "4{oops"),
        Err(ParseError::InvalidData)
    ));
}

#[test]
fn binary_event_both_ways() {
    // encode: bytes become placeholders and attachments, in order
    let v = P
        .encode_value(
            &(Bytes::from_static(b"\x01\x02"), json!({"x": 1})),
            Some("bin"),
        )
        .unwrap();
    assert_eq!(text(&v), r#"["bin",{"_placeholder":true,"num":0},{"x":1}]"#);
    let mut p = Packet::event("/", v);
    assert!(p.inner.is_binary());
    p.inner.set_ack_id(1);
    let (wire, attachments) = encode(p);
    assert_eq!(wire, r#"51-1["bin",{"_placeholder":true,"num":0},{"x":1}]"#);
    assert_eq!(attachments, bins(&[b"\x01\x02"]));

    // decode: 451-["bin",{"_placeholder":true,"num":0}] then one binary frame
    let state = ParserState::default();
    assert!(matches!(
        decode(&state, r#"51-["bin",{"_placeholder":true,"num":0}]"#),
        Err(ParseError::NeedsMoreBinaryData)
    ));
    let mut p = bin(&state, b"\xde\xad").unwrap();
    assert!(matches!(p.inner, PacketData::BinaryEvent(_, None)));
    assert_eq!(P.read_event(event_value(&mut p)).unwrap(), "bin");
    let got: Bytes = P.decode_value(event_value(&mut p), true).unwrap();
    assert_eq!(got, Bytes::from_static(b"\xde\xad"));

    // with a namespace, an ack id and two attachments
    let state = ParserState::default();
    let wire =
        r#"52-/admin,456["up",{"_placeholder":true,"num":0},{"n":{"_placeholder":true,"num":1}}]"#;
    assert!(matches!(
        decode(&state, wire),
        Err(ParseError::NeedsMoreBinaryData)
    ));
    assert!(matches!(
        bin(&state, b"a"),
        Err(ParseError::NeedsMoreBinaryData)
    ));
    let mut p = bin(&state, b"bc").unwrap();
    assert_eq!(p.ns, "/admin");
    assert!(matches!(p.inner, PacketData::BinaryEvent(_, Some(456))));
    #[derive(Deserialize, Debug, PartialEq)]
    struct N {
        n: Bytes,
    }
    let got: (Bytes, N) = P.decode_value(event_value(&mut p), true).unwrap();
    assert_eq!(
        got,
        (
            Bytes::from_static(b"a"),
            N {
                n: Bytes::from_static(b"bc")
            }
        )
    );
    // re-encoding the decoded packet gives the same frames back
    let (wire2, att) = encode(p);
    assert_eq!(wire2, wire);
    assert_eq!(att, bins(&[b"a", b"bc"]));
}

#[test]
fn binary_ack_both_ways() {
    let v = P.encode_value(&Bytes::from_static(b"\x00"), None).unwrap();
    let (wire, att) = encode(Packet::ack("/admin", v, 54));
    assert_eq!(wire, r#"61-/admin,54[{"_placeholder":true,"num":0}]"#);
    assert_eq!(att, bins(&[b"\x00"]));

    let state = ParserState::default();
    assert!(matches!(
        decode(&state, &wire),
        Err(ParseError::NeedsMoreBinaryData)
    ));
    let mut p = bin(&state, b"\x00").unwrap();
    assert!(matches!(p.inner, PacketData::BinaryAck(_, 54)));
    let got: Bytes = P.decode_value(event_value(&mut p), false).unwrap();
    assert_eq!(got, Bytes::from_static(b"\x00"));
    assert!(matches!(
        decode(&ParserState::default(), r#"61-["x"]"#),
        Err(ParseError::InvalidAckId)
    ));
}

#[test]
fn binary_with_zero_attachments_is_complete() {
    let p = decode_one(r#"50-["x"]"#);
    assert!(matches!(p.inner, PacketData::BinaryEvent(_, None)));
}

// ---------------------------------------------------------------- escapes and non-ASCII

#[test]
fn escaped_first_keys_decode_into_owned_types() {
    // python-socketio: emit("publish", {"topic": "news", "data": {"prénom": "Zoé"}})
    let mut p = decode_one(r#"27["publish",{"topic":"news","data":{"pr\u00e9nom":"Zo\u00e9"}}]"#);
    assert!(matches!(p.inner, PacketData::Event(_, Some(7))));
    let got: Json = P.decode_value(event_value(&mut p), true).unwrap();
    assert_eq!(got, json!({"topic": "news", "data": {"prénom": "Zoé"}}));

    #[derive(Deserialize, Debug, PartialEq)]
    struct Person {
        #[serde(rename = "prénom")]
        prenom: String,
        r#loop: Option<String>,
    }
    let mut v = Value::Str(
        r#"["p",{"pr\u00e9nom":"Zo\u00e9","\u006coop":"a\"b"}]"#.into(),
        None,
    );
    let got: Person = P.decode_value(&mut v, true).unwrap();
    assert_eq!(
        got,
        Person {
            prenom: "Zoé".into(),
            r#loop: Some("a\"b".into())
        }
    );

    #[derive(Deserialize, Debug, PartialEq)]
    struct Publish {
        topic: String,
        data: Json,
    }
    let mut v = Value::Str(
        r#"["publish",{"\u0074opic":"caf\u00e9","data":{"\u00e9":{"\u00fc":[{"\"":1}]}}}]"#.into(),
        None,
    );
    let got: Publish = P.decode_value(&mut v, true).unwrap();
    assert_eq!(got.topic, "café");
    assert_eq!(got.data, json!({"é": {"ü": [{"\"": 1}]}}));
    let got: std::collections::BTreeMap<String, Json> = P.decode_value(&mut v, true).unwrap();
    assert_eq!(got["topic"], json!("café"));

    // the same with binary attachments present (the placeholder-aware path)
    let state = ParserState::default();
    let wire = r#"51-["p",{"pr\u00e9nom":"Zo\u00e9","b":{"_placeholder":true,"num":0}}]"#;
    assert!(matches!(
        decode(&state, wire),
        Err(ParseError::NeedsMoreBinaryData)
    ));
    let mut p = bin(&state, b"z").unwrap();
    let got: rmpv::Value = P.decode_value(event_value(&mut p), true).unwrap();
    assert_eq!(
        got,
        rmpv::Value::Map(vec![
            ("prénom".into(), "Zoé".into()),
            ("b".into(), rmpv::Value::Binary(b"z".to_vec())),
        ])
    );
    #[derive(Deserialize, Debug, PartialEq)]
    struct WithBin {
        #[serde(rename = "prénom")]
        prenom: String,
        b: Bytes,
    }
    let got: WithBin = P.decode_value(event_value(&mut p), true).unwrap();
    assert_eq!(
        got,
        WithBin {
            prenom: "Zoé".into(),
            b: Bytes::from_static(b"z")
        }
    );
    // an escaped "_placeholder" key is recognised too
    let state = ParserState::default();
    let wire = r#"51-["p",{"\u005fplaceholder":true,"num":0}]"#;
    assert!(matches!(
        decode(&state, wire),
        Err(ParseError::NeedsMoreBinaryData)
    ));
    let mut p = bin(&state, b"k").unwrap();
    let got: rmpv::Value = P.decode_value(event_value(&mut p), true).unwrap();
    assert_eq!(got, rmpv::Value::Binary(b"k".to_vec()));
}

#[test]
fn escaped_event_names() {
    for (wire, name) in [
        (r#"2["caf\u00e9",{"pr\u00e9nom":"Zo\u00e9"}]"#, "café"),
        (r#"2["a\"b",{}]"#, "a\"b"),
        (r#"2["a\\b"]"#, "a\\b"),
        (r#"2["caf\u00e9-x"]"#, "café-x"),
        (r#"2["line\nbreak\t"]"#, "line\nbreak\t"),
        (r#"2["a\u0000b"]"#, "a\0b"),
        (r#"2["\ud83d\ude00"]"#, "😀"),
        (r#"2["\ud800"]"#, "\u{fffd}"),
        (r#"2["café"]"#, "café"),
        (r#"2 [ "spaced" , 1 ]"#, "spaced"),
    ] {
        let mut p = decode_one(wire);
        assert_eq!(P.read_event(event_value(&mut p)).unwrap(), name, "{wire}");
    }

    let mut p = decode_one(r#"2["caf\u00e9",{"pr\u00e9nom":"Zo\u00e9"}]"#);
    let got: Json = P.decode_value(event_value(&mut p), true).unwrap();
    assert_eq!(got, json!({"prénom": "Zoé"}));
    // without skipping the event the name is the first argument
    let got: (String, Json) = P.decode_value(event_value(&mut p), false).unwrap();
    assert_eq!(got.0, "café");
    // re-encoding sends the original JSON, not the carried name
    let mut p = decode_one(r#"2/n,5["a\"b",1]"#);
    assert_eq!(P.read_event(event_value(&mut p)).unwrap(), "a\"b");
    assert_eq!(encode(p).0, r#"2/n,5["a\"b",1]"#);

    // escaped names on binary events
    let state = ParserState::default();
    assert!(matches!(
        decode(&state, r#"51-["caf\u00e9",{"_placeholder":true,"num":0}]"#),
        Err(ParseError::NeedsMoreBinaryData)
    ));
    let mut p = bin(&state, b"1").unwrap();
    assert_eq!(P.read_event(event_value(&mut p)).unwrap(), "café");
    let got: Bytes = P.decode_value(event_value(&mut p), true).unwrap();
    assert_eq!(got, Bytes::from_static(b"1"));
}

#[test]
fn non_ascii_encodes_raw_and_round_trips() {
    let v = P
        .encode_value(&json!({"prénom": "Zoé"}), Some("café"))
        .unwrap();
    assert_eq!(text(&v), r#"["café",{"prénom":"Zoé"}]"#);
    let (wire, _) = encode(Packet::event("/", v));
    let mut p = decode_one(&wire);
    assert_eq!(P.read_event(event_value(&mut p)).unwrap(), "café");
    let got: Json = P.decode_value(event_value(&mut p), true).unwrap();
    assert_eq!(got, json!({"prénom": "Zoé"}));

    // names that need escapes on the way out
    let v = P.encode_value(&1, Some("a\"b\\c")).unwrap();
    assert_eq!(text(&v), r#"["a\"b\\c",1]"#);
    let (wire, _) = encode(Packet::event("/", v));
    let mut p = decode_one(&wire);
    assert_eq!(P.read_event(event_value(&mut p)).unwrap(), "a\"b\\c");
}

// ---------------------------------------------------------------- values

#[test]
fn encode_value_shapes() {
    let t = |v: Value| text(&v).to_owned();
    assert_eq!(
        t(P.encode_value(&"hi", Some("e")).unwrap()),
        r#"["e","hi"]"#
    );
    assert_eq!(
        t(P.encode_value(&("hi", 1, 2), Some("e")).unwrap()),
        r#"["e","hi",1,2]"#
    );
    assert_eq!(
        t(P.encode_value(&vec![1, 2], Some("e")).unwrap()),
        r#"["e",[1,2]]"#
    );
    assert_eq!(t(P.encode_value(&(), Some("e")).unwrap()), r#"["e",null]"#);
    assert_eq!(t(P.encode_value(&[1u8; 0], Some("e")).unwrap()), r#"["e"]"#);
    assert_eq!(t(P.encode_value(&("hi", 1), None).unwrap()), r#"["hi",1]"#);
    assert_eq!(t(P.encode_value(&json!(null), None).unwrap()), "[null]");
    #[derive(Serialize)]
    struct Pair(u8, &'static str);
    assert_eq!(
        t(P.encode_value(&Pair(1, "x"), Some("e")).unwrap()),
        r#"["e",1,"x"]"#
    );
    #[derive(Serialize)]
    struct Wrapper(Vec<u8>);
    assert_eq!(
        t(P.encode_value(&Wrapper(vec![1]), Some("e")).unwrap()),
        r#"["e",[1]]"#
    );
    assert!(P.encode_value(&json!(1), None).unwrap().as_str().is_some());
    // map keys must be strings, as in serde_json
    let bad: std::collections::HashMap<Vec<u8>, u8> = [(vec![1], 1)].into();
    assert!(P.encode_value(&bad, None).is_err());
}

#[test]
fn decode_value_shapes() {
    let mut v = Value::Str(r#"["e","hello",1,2,3]"#.into(), None);
    assert_eq!(P.decode_value::<String>(&mut v, true).unwrap(), "hello");
    let got: (String, u8, u8) = P.decode_value(&mut v, true).unwrap();
    assert_eq!(got, ("hello".into(), 1, 2), "surplus arguments are ignored");
    assert!(
        P.decode_value::<(String, u8, u8, u8, u8)>(&mut v, true)
            .is_err()
    );
    #[derive(Deserialize, Debug, PartialEq)]
    struct Pair(String, u8);
    assert_eq!(
        P.decode_value::<Pair>(&mut v, true).unwrap(),
        Pair("hello".into(), 1)
    );
    #[derive(Deserialize, Debug, PartialEq)]
    struct Wrapper(String);
    assert_eq!(
        P.decode_value::<Wrapper>(&mut v, true).unwrap(),
        Wrapper("hello".into())
    );
    // borrowed strings work where there is nothing to unescape
    let mut v = Value::Str(r#"["e","plain"]"#.into(), None);
    assert_eq!(P.decode_value::<&str>(&mut v, true).unwrap(), "plain");
    let mut v = Value::Str(r#"["e"]"#.into(), None);
    assert!(P.decode_value::<Json>(&mut v, true).is_err(), "no argument");
    assert_eq!(
        P.decode_value::<Option<u8>>(&mut Value::Str(r#"["e",null]"#.into(), None), true)
            .unwrap(),
        None
    );
}

#[test]
fn binary_values_round_trip() {
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Doc {
        name: String,
        files: Vec<Bytes>,
        maybe: Option<Bytes>,
    }
    let doc = Doc {
        name: "Zoé".into(),
        files: vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")],
        maybe: Some(Bytes::from_static(b"three")),
    };
    let mut v = P
        .encode_value(&(doc.clone(), Bytes::from_static(b"four")), Some("docs"))
        .unwrap();
    assert_eq!(
        text(&v),
        concat!(
            r#"["docs",{"name":"Zoé","files":[{"_placeholder":true,"num":0},"#,
            r#"{"_placeholder":true,"num":1}],"maybe":{"_placeholder":true,"num":2}},"#,
            r#"{"_placeholder":true,"num":3}]"#
        )
    );
    let got: (Doc, Bytes) = P.decode_value(&mut v, true).unwrap();
    assert_eq!(got, (doc.clone(), Bytes::from_static(b"four")));
    // decoding does not consume the attachments: a second extractor sees them too
    let again: (Doc, Bytes) = P.decode_value(&mut v, true).unwrap();
    assert_eq!(again.0, doc);
    // placeholder keys in the other order, when bytes are expected
    let mut v = Value::Str(
        r#"["e",{"num":0,"_placeholder":true}]"#.into(),
        bins(&[b"x"]),
    );
    assert_eq!(
        P.decode_value::<Bytes>(&mut v, true).unwrap(),
        Bytes::from_static(b"x")
    );
}

#[test]
fn placeholders_without_attachments_are_plain_objects() {
    let mut v = Value::Str(r#"["e",{"_placeholder":true,"num":0}]"#.into(), None);
    let got: Json = P.decode_value(&mut v, true).unwrap();
    assert_eq!(got, json!({"_placeholder": true, "num": 0}));
    assert!(P.decode_value::<Bytes>(&mut v, true).is_err());
}

#[test]
fn bad_placeholders_are_errors() {
    for payload in [
        r#"["e",{"_placeholder":true,"num":5}]"#,
        r#"["e",{"_placeholder":false,"num":0}]"#,
        r#"["e",{"_placeholder":true}]"#,
        r#"["e",{"_placeholder":"yes","num":0}]"#,
        r#"["e",{"_placeholder":true,"num":-1}]"#,
    ] {
        let mut v = Value::Str(Str::from(payload.to_owned()), bins(&[b"x"]));
        assert!(
            P.decode_value::<rmpv::Value>(&mut v, true).is_err(),
            "{payload}"
        );
        assert!(P.decode_value::<Bytes>(&mut v, true).is_err(), "{payload}");
    }
}

#[test]
fn defaults() {
    let got: std::collections::HashMap<String, ()> = P.decode_default(None).unwrap();
    assert!(got.is_empty(), "no CONNECT payload decodes as {{}}");
    let got: String = P
        .decode_default(Some(&Value::Str("\"Zo\\u00e9\"".into(), None)))
        .unwrap();
    assert_eq!(got, "Zoé");
    assert!(
        P.decode_default::<Json>(Some(&Value::Bytes(Bytes::new())))
            .is_err()
    );
    assert!(matches!(P.encode_default(&20), Ok(Value::Str(s, None)) if s == "20"));
}

// ---------------------------------------------------------------- errors, never panics

#[test]
fn malformed_packets_are_errors() {
    use ParseError as E;
    type Check = fn(&ParseError) -> bool;
    let cases: &[(&str, Check)] = &[
        ("", |e| matches!(e, E::InvalidPacketType)),
        ("7", |e| matches!(e, E::InvalidPacketType)),
        ("é", |e| matches!(e, E::InvalidPacketType)),
        ("5", |e| matches!(e, E::InvalidAttachments)),
        ("5invalid", |e| matches!(e, E::InvalidAttachments)),
        ("5-[\"x\"]", |e| matches!(e, E::InvalidAttachments)),
        ("599999999999999999999999-[\"x\"]", |e| {
            matches!(e, E::InvalidAttachments)
        }),
        ("2", |e| matches!(e, E::InvalidEventName)),
        ("2[]", |e| matches!(e, E::InvalidEventName)),
        ("2[1,2]", |e| matches!(e, E::InvalidEventName)),
        ("2{\"a\":1}", |e| matches!(e, E::InvalidEventName)),
        ("2-1[\"x\"]", |e| matches!(e, E::InvalidEventName)),
        ("2[\"unterminated", |e| matches!(e, E::InvalidEventName)),
        ("2[\"bad\\q\"]", |e| matches!(e, E::InvalidEventName)),
        ("2[\"bad\\u12\"]", |e| matches!(e, E::InvalidEventName)),
        ("2[\"raw\ncontrol\"]", |e| matches!(e, E::InvalidEventName)),
        ("2\0[\"x\"]", |e| matches!(e, E::InvalidEventName)),
        ("2\u{0}1\u{0}x[\"x\"]", |e| matches!(e, E::InvalidEventName)),
        ("299999999999999999999999[\"x\"]", |e| {
            matches!(e, E::InvalidAckId)
        }),
        ("3", |e| matches!(e, E::InvalidAckId)),
    ];
    for (wire, expected) in cases {
        match decode(&ParserState::default(), wire) {
            Err(e) if expected(&e) => {}
            other => panic!("{wire:?}: unexpected {other:?}"),
        }
    }
    // deep nesting and truncation are found when the arguments are decoded
    let mut p = decode_one(&format!("2[\"x\",{}]", "[".repeat(100_000)));
    assert!(P.decode_value::<Json>(event_value(&mut p), true).is_err());
    let mut p = decode_one(r#"2["publish",{"topic":"#);
    assert_eq!(P.read_event(event_value(&mut p)).unwrap(), "publish");
    assert!(P.decode_value::<Json>(event_value(&mut p), true).is_err());
    let mut v = Value::Str(r#"["e",1] trailing"#.into(), None);
    assert!(P.decode_value::<Json>(&mut v, true).is_err());
    let mut v = Value::Bytes(Bytes::new());
    assert!(P.decode_value::<Json>(&mut v, true).is_err());
    assert!(P.read_event(&v).is_err());
    assert!(
        P.read_event(&Value::Str(r#"["a\"b"]"#.into(), None))
            .is_err()
    );
}

#[test]
fn arbitrary_input_never_panics() {
    let alphabet: Vec<char> = "0123456-/,[]{}\"\\:u0e9aé™ \0".chars().collect();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..20_000 {
        let len = (seed % 24) as usize;
        let mut s = String::new();
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            s.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        let state = ParserState::default();
        if let Ok(mut p) = decode(&state, &s) {
            if let PacketData::Event(v, _) | PacketData::BinaryEvent(v, _) = &mut p.inner {
                let _ = P.read_event(v);
                let _ = P.decode_value::<Json>(v, true);
                let _ = P.decode_value::<rmpv::Value>(v, false);
            }
            let _ = P.encode(p);
        }
        let _ = bin(&state, b"x");
    }
}

// ---------------------------------------------------------------- attachment state machine

#[test]
fn attachments_must_follow_their_packet() {
    let state = ParserState::default();
    let header = r#"51-["e",{"_placeholder":true,"num":0}]"#;
    assert!(matches!(
        bin(&state, b"x"),
        Err(ParseError::UnexpectedBinaryPacket)
    ));
    assert!(matches!(
        decode(&state, header),
        Err(ParseError::NeedsMoreBinaryData)
    ));
    assert!(matches!(
        decode(&state, r#"2["other"]"#),
        Err(ParseError::UnexpectedStringPacket)
    ));
    assert!(matches!(
        decode(&state, header),
        Err(ParseError::UnexpectedStringPacket)
    ));
    bin(&state, b"x").unwrap();
    decode(&state, r#"2["other"]"#).unwrap();
}

#[test]
fn attachment_limits() {
    let header = r#"52-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#;
    let state = ParserState::default();
    let config = ParseConfig {
        max_incoming_binaries: 1,
        ..ParseConfig::default()
    };
    assert!(matches!(
        P.decode_str(&config, &state, header.into()),
        Err(ParseError::TooManyAttachments { got: 2, max: 1 })
    ));

    let config = ParseConfig {
        max_incoming_binary_buf_size: 2,
        ..ParseConfig::default()
    };
    let state = ParserState::default();
    assert!(matches!(
        P.decode_str(&config, &state, header.into()),
        Err(ParseError::NeedsMoreBinaryData)
    ));
    assert!(matches!(
        P.decode_bin(&config, &state, Bytes::from_static(b"1")),
        Err(ParseError::NeedsMoreBinaryData)
    ));
    assert!(matches!(
        P.decode_bin(&config, &state, Bytes::from_static(b"12")),
        Err(ParseError::AttachmentsTooHeavy { current: 3, max: 2 })
    ));

    let config = ParseConfig {
        packet_completion_timeout: Duration::from_millis(10),
        ..ParseConfig::default()
    };
    let state = ParserState::default();
    assert!(matches!(
        P.decode_str(&config, &state, header.into()),
        Err(ParseError::NeedsMoreBinaryData)
    ));
    std::thread::sleep(Duration::from_millis(20));
    assert!(matches!(
        P.decode_bin(&config, &state, Bytes::from_static(b"1")),
        Err(ParseError::TimeoutWhileWaitingAttachments)
    ));
}

#[test]
fn bytes_value_is_sent_as_an_attachment() {
    let (wire, att) = encode(Packet {
        inner: PacketData::Event(Value::Bytes(Bytes::from_static(b"raw")), None),
        ns: "/".into(),
    });
    assert_eq!(wire, r#"51-[{"_placeholder":true,"num":0}]"#);
    assert_eq!(att, bins(&[b"raw"]));
}
