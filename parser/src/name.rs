//! Event names: finding the first element of an event payload `["name", ...args]`, decoding
//! it when it holds JSON escapes, and carrying such a decoded name in front of the payload.
//!
//! `Parse::read_event` must hand out the name as a `&str` borrowed from the packet's
//! [`Value`](socketioxide_core::Value). A name written with escapes (`"caf\u00e9"`,
//! `"a\"b"`) is not a substring of the JSON text, so when a packet is decoded such a name is
//! unescaped once and stored before the JSON as `\0<byte length>\0<name><json>`. A JSON text
//! can neither start with nor contain a raw NUL, so the mark is unambiguous; every reader of
//! the payload text in this crate goes through [`json_of`], which skips it.

/// First character of a payload that carries its decoded event name in front of the JSON.
const MARK: char = '\0';

/// Byte range of the event name inside a payload (between the quotes) and whether it holds
/// at least one escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
    pub escaped: bool,
}

const fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).copied().is_some_and(is_ws) {
        i += 1;
    }
    i
}

/// Locates the string literal that opens a JSON array. `None` when the text does not start
/// with `[` followed by a well-formed-looking string (raw control characters are invalid
/// JSON and refused here too).
pub(crate) fn locate(json: &str) -> Option<Span> {
    let b = json.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let mut escaped = false;
    let mut j = start;
    while let Some(&c) = b.get(j) {
        match c {
            b'"' => {
                return Some(Span {
                    start,
                    end: j,
                    escaped,
                });
            }
            // The escaped byte is skipped; its validity is checked by `unescape`.
            b'\\' => {
                escaped = true;
                j += 2;
            }
            0..=0x1f => return None,
            _ => j += 1,
        }
    }
    None
}

/// Decodes the contents of a JSON string literal (without its quotes). `None` on an invalid
/// escape. A lone UTF-16 surrogate (`\ud800`), which no Rust string can hold, becomes
/// U+FFFD: the name only routes the event, and such a name matches no handler.
pub(crate) fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let esc = &rest[pos + 1..];
        let (ch, used) = match esc.as_bytes().first()? {
            b'"' => ('"', 1),
            b'\\' => ('\\', 1),
            b'/' => ('/', 1),
            b'b' => ('\u{8}', 1),
            b'f' => ('\u{c}', 1),
            b'n' => ('\n', 1),
            b'r' => ('\r', 1),
            b't' => ('\t', 1),
            b'u' => {
                let hi = hex4(esc.get(1..5)?)?;
                let low = esc
                    .get(5..7)
                    .filter(|p| *p == "\\u")
                    .and_then(|_| esc.get(7..11))
                    .and_then(hex4)
                    .filter(|lo| (0xDC00..0xE000).contains(lo));
                match (hi, low) {
                    (0xD800..0xDC00, Some(lo)) => {
                        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        (char::from_u32(c)?, 11)
                    }
                    _ => (char::from_u32(hi).unwrap_or(char::REPLACEMENT_CHARACTER), 5),
                }
            }
            _ => return None,
        };
        out.push(ch);
        rest = &esc[used..];
    }
    out.push_str(rest);
    Some(out)
}

fn hex4(s: &str) -> Option<u32> {
    if s.len() != 4 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// `\0<len>\0<name><json>`: a payload carrying its decoded event name.
pub(crate) fn with_name(name: &str, json: &str) -> String {
    let mut len = itoa::Buffer::new();
    let len = len.format(name.len());
    let mut out = String::with_capacity(2 + len.len() + name.len() + json.len());
    out.push(MARK);
    out.push_str(len);
    out.push(MARK);
    out.push_str(name);
    out.push_str(json);
    out
}

/// Splits a payload made by [`with_name`] into `(name, json)`.
pub(crate) fn split(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(MARK)?;
    let (len, rest) = rest.split_once(MARK)?;
    rest.split_at_checked(len.parse().ok()?)
}

/// The JSON text of a payload, without a name carried in front of it.
pub(crate) fn json_of(text: &str) -> &str {
    split(text).map_or(text, |(_, json)| json)
}

/// The event name of a payload: the carried name, or the first array element when it needs
/// no unescaping. `None` if the payload has no string first element, or one with escapes
/// but no carried name (a payload that did not come through `decode_str`).
pub(crate) fn read(text: &str) -> Option<&str> {
    if let Some((name, _)) = split(text) {
        return Some(name);
    }
    let span = locate(text)?;
    (!span.escaped).then(|| &text[span.start..span.end])
}

/// Prepares the payload of an incoming EVENT / BINARY_EVENT packet: checks that it starts
/// with an event name and, when that name has escapes, returns the text with the decoded
/// name in front (`None` for an invalid payload; `Some(None)` when it is fine as it is).
pub(crate) fn prepare(json: &str) -> Option<Option<String>> {
    let span = locate(json)?;
    if !span.escaped {
        return Some(None);
    }
    let name = unescape(&json[span.start..span.end])?;
    Some(Some(with_name(&name, json)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_plain_and_escaped() {
        assert_eq!(
            locate(r#"["event",1]"#),
            Some(Span {
                start: 2,
                end: 7,
                escaped: false
            })
        );
        assert_eq!(
            locate(" [ \"a\\\"b\" ]"),
            Some(Span {
                start: 4,
                end: 8,
                escaped: true
            })
        );
        assert_eq!(locate(r#"["é"]"#).map(|s| s.escaped), Some(false));
        for bad in [
            "",
            "[",
            "[]",
            "[1]",
            "{\"a\":1}",
            "[\"open",
            "[\"a\\",
            "[\"a\nb\"]",
            "\0[\"a\"]",
        ] {
            assert_eq!(locate(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn unescape_all_escapes() {
        assert_eq!(unescape(r"caf\u00e9").as_deref(), Some("café"));
        assert_eq!(unescape(r#"a\"b"#).as_deref(), Some("a\"b"));
        assert_eq!(unescape(r"a\\b").as_deref(), Some("a\\b"));
        assert_eq!(
            unescape(r"\/\b\f\n\r\t").as_deref(),
            Some("/\u{8}\u{c}\n\r\t")
        );
        assert_eq!(unescape(r"\ud83d\ude00!").as_deref(), Some("😀!"));
        assert_eq!(unescape(r"a\u0000b").as_deref(), Some("a\0b"));
        assert_eq!(unescape(r"\ud800").as_deref(), Some("\u{fffd}"));
        assert_eq!(unescape(r"\udc00x").as_deref(), Some("\u{fffd}x"));
        assert_eq!(unescape(r"\ud800\u0041").as_deref(), Some("\u{fffd}A"));
        assert_eq!(unescape("plain é").as_deref(), Some("plain é"));
        for bad in [r"\", r"\x", r"\u12", r"\u12g4", r"\ué123"] {
            assert_eq!(unescape(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn carried_name_round_trip() {
        for name in ["a\"b", "", "\0", "\0\0x", "5\0", "é"] {
            let text = with_name(name, r#"["x",1]"#);
            assert_eq!(split(&text), Some((name, r#"["x",1]"#)));
            assert_eq!(json_of(&text), r#"["x",1]"#);
            assert_eq!(read(&text), Some(name));
        }
        assert_eq!(json_of(r#"["x"]"#), r#"["x"]"#);
        assert_eq!(split("\0zz\0abc"), None);
        assert_eq!(split("\u{0}9\u{0}abc"), None);
        assert_eq!(split("\u{0}1\u{0}é"), None, "length inside a character");
    }

    #[test]
    fn prepare_payloads() {
        assert_eq!(prepare(r#"["plain",{}]"#), Some(None));
        let text = prepare(r#"["caf\u00e9",{}]"#).flatten();
        assert_eq!(text.as_deref().and_then(read), Some("café"));
        assert_eq!(prepare("[1]"), None);
        assert_eq!(prepare(r#"["bad\q"]"#), None);
        assert_eq!(
            read(r#"["a\"b"]"#),
            None,
            "escaped name without a carried copy"
        );
    }
}
