//! Payload → Rust values (`Parse::decode_value`).
//!
//! The payload is a JSON array `[event?, ...args]`. The root visitor skips the event name,
//! then hands the remaining elements to `T` (a tuple-like `T` takes them in order, any other
//! `T` takes the first one; surplus arguments are ignored, as Socket.IO does). When the
//! packet has binary attachments, every element is read through [`Attached`], which swaps a
//! placeholder object `{"_placeholder":true,"num":n}` for attachment `n`. Without
//! attachments nothing is wrapped: serde_json deserializes straight into `T`.
//!
//! Object keys are always read as "borrowed or owned" strings, so a key written with JSON
//! escapes (`"pr\u00e9nom"`) is fine anywhere, including first in an object.

use std::{collections::VecDeque, fmt, marker::PhantomData};

use bytes::Bytes;
use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, Error as _, IgnoredAny, IntoDeserializer,
    MapAccess, SeqAccess, Visitor,
    value::{BorrowedStrDeserializer, SeqAccessDeserializer},
};
use socketioxide_core::{Value, parser::is_de_tuple};

use crate::name;

type Bins<'b> = Option<&'b VecDeque<Bytes>>;

/// Deserializes `T` from a common-parser payload (see the module docs).
pub(crate) fn from_value<'de, T: Deserialize<'de>>(
    value: &'de Value,
    with_event: bool,
) -> serde_json::Result<T> {
    let Value::Str(text, bins) = value else {
        return Err(serde_json::Error::custom(
            "the common parser only handles text payloads",
        ));
    };
    let root = Root::<T> {
        skip_event: with_event,
        spread: is_de_tuple::<T>(),
        bins: bins.as_ref().filter(|b| !b.is_empty()),
        _t: PhantomData,
    };
    let mut de = serde_json::Deserializer::from_str(name::json_of(text));
    let out = de.deserialize_seq(root)?;
    de.end()?;
    Ok(out)
}

struct Root<'b, T> {
    skip_event: bool,
    spread: bool,
    bins: Bins<'b>,
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Root<'_, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of event arguments")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        let mut args = Args {
            seq,
            bins: self.bins,
        };
        if self.skip_event {
            args.seq.next_element::<IgnoredAny>()?;
        }
        let out = if self.spread {
            T::deserialize(SeqAccessDeserializer::new(&mut args))?
        } else {
            args.next_element::<T>()?
                .ok_or_else(|| A::Error::custom("missing event argument"))?
        };
        while args.seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(out)
    }
}

/// The root array's elements, each read through [`Attached`].
struct Args<'b, A> {
    seq: A,
    bins: Bins<'b>,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Args<'_, A> {
    type Error = A::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        self.seq.next_element_seed(Attached {
            seed,
            bins: self.bins,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

/// A seed whose deserializer resolves placeholders when there are attachments.
struct Attached<'b, S> {
    seed: S,
    bins: Bins<'b>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Attached<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, inner: D) -> Result<S::Value, D::Error> {
        match self.bins {
            Some(bins) => self.seed.deserialize(BinDe { inner, bins }),
            None => self.seed.deserialize(inner),
        }
    }
}

/// A deserializer that resolves placeholders anywhere below it.
struct BinDe<'b, D> {
    inner: D,
    bins: &'b VecDeque<Bytes>,
}

impl<'b, D> BinDe<'b, D> {
    fn wrap<V>(&self, inner: V, want_bytes: bool) -> Wrap<'b, V> {
        Wrap {
            inner,
            bins: self.bins,
            want_bytes,
        }
    }
}

macro_rules! forward_plain {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method(visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for BinDe<'_, D> {
    type Error = D::Error;

    forward_plain! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_unit deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, false);
        self.inner.deserialize_any(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, true);
        self.inner.deserialize_any(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, false);
        self.inner.deserialize_option(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, false);
        self.inner.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, false);
        self.inner.deserialize_seq(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, false);
        self.inner.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, false);
        self.inner.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, false);
        self.inner.deserialize_map(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor, false);
        self.inner.deserialize_struct(name, fields, visitor)
    }

    /// Enum payloads are not searched for placeholders (neither does upstream); untagged
    /// enums go through `deserialize_any` and are.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_enum(name, variants, visitor)
    }
}

/// Visitor wrapper: nested sequences, maps and options stay wrapped; a placeholder object
/// becomes the attachment's bytes. With `want_bytes` (the target asked for bytes) every
/// object must be a placeholder; otherwise only one whose first key is `_placeholder` is.
struct Wrap<'b, V> {
    inner: V,
    bins: &'b VecDeque<Bytes>,
    want_bytes: bool,
}

macro_rules! forward_visit {
    ($($method:ident: $ty:ty)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool: bool visit_i8: i8 visit_i16: i16 visit_i32: i32 visit_i64: i64
        visit_i128: i128 visit_u8: u8 visit_u16: u16 visit_u32: u32 visit_u64: u64
        visit_u128: u128 visit_f32: f32 visit_f64: f64 visit_char: char visit_str: &str
        visit_borrowed_str: &'de str visit_string: String visit_bytes: &[u8]
        visit_borrowed_bytes: &'de [u8] visit_byte_buf: Vec<u8>
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(BinDe {
            inner,
            bins: self.bins,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(BinDe {
            inner,
            bins: self.bins,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(Args {
            seq,
            bins: Some(self.bins),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<V::Value, A::Error> {
        let first = if self.want_bytes {
            None
        } else {
            match map.next_key::<Key<'de>>()? {
                Some(key) if key.as_str() != "_placeholder" => {
                    return self.inner.visit_map(Entries {
                        first: Some(key),
                        map,
                        bins: self.bins,
                    });
                }
                None => {
                    return self.inner.visit_map(Entries {
                        first: None,
                        map,
                        bins: self.bins,
                    });
                }
                key => key,
            }
        };
        let num = placeholder(&mut map, first)?;
        let bytes = self
            .bins
            .get(num)
            .ok_or_else(|| A::Error::custom(format!("binary attachment {num} is missing")))?;
        self.inner.visit_bytes(bytes)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(data)
    }
}

/// Reads the rest of a placeholder object (its first key may already be read) and returns
/// its attachment index.
fn placeholder<'de, A: MapAccess<'de>>(
    map: &mut A,
    mut key: Option<Key<'de>>,
) -> Result<usize, A::Error> {
    if key.is_none() {
        key = map.next_key()?;
    }
    let (mut flag, mut num) = (false, None);
    while let Some(k) = key {
        match k.as_str() {
            "_placeholder" => flag = map.next_value()?,
            "num" => num = Some(map.next_value()?),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        key = map.next_key()?;
    }
    match (flag, num) {
        (true, Some(num)) => Ok(num),
        _ => Err(A::Error::custom(
            r#"expected a binary placeholder {"_placeholder":true,"num":<n>}"#,
        )),
    }
}

/// An object key, borrowed from the input when it has no escapes, owned otherwise.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// An object's entries with its first key (already read) put back in front; values are
/// read through [`Attached`].
struct Entries<'b, 'de, A> {
    first: Option<Key<'de>>,
    map: A,
    bins: &'b VecDeque<Bytes>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Entries<'_, 'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.first.take() {
            Some(Key::Borrowed(k)) => seed.deserialize(BorrowedStrDeserializer::new(k)).map(Some),
            Some(Key::Owned(k)) => seed.deserialize(k.into_deserializer()).map(Some),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.map.next_value_seed(Attached {
            seed,
            bins: Some(self.bins),
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.map
            .size_hint()
            .map(|n| n + usize::from(self.first.is_some()))
    }
}
