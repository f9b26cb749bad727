//! Rust values → payload (`Parse::encode_value`).
//!
//! One pass of serde_json over the data, through [`Ser`], which differs from plain
//! serde_json in two places only: at the root it writes the `[event, ...args]` array (a
//! tuple-like value spreads into arguments, anything else is one argument), and any byte
//! string (`serialize_bytes`, e.g. `bytes::Bytes`) becomes a placeholder
//! `{"_placeholder":true,"num":n}` while the bytes go to the attachment list.

use std::{cell::RefCell, collections::VecDeque};

use bytes::Bytes;
use serde::ser::{
    Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant, SerializeTuple,
    SerializeTupleStruct, SerializeTupleVariant, Serializer,
};
use socketioxide_core::{Str, Value, parser::is_ser_tuple};

type Attachments = RefCell<VecDeque<Bytes>>;

/// Serializes `data` as the arguments of a payload, after `event` if there is one.
pub(crate) fn to_value<T: ?Sized + Serialize>(
    data: &T,
    event: Option<&str>,
) -> serde_json::Result<Value> {
    let bins = Attachments::default();
    let text = serde_json::to_string(&Payload {
        data,
        event,
        bins: &bins,
    })?;
    let bins = bins.into_inner();
    Ok(Value::Str(
        Str::from(text),
        (!bins.is_empty()).then_some(bins),
    ))
}

/// The whole payload, serialized by serde_json through a root [`Ser`].
struct Payload<'a, T: ?Sized> {
    data: &'a T,
    event: Option<&'a str>,
    bins: &'a Attachments,
}

impl<T: ?Sized + Serialize> Serialize for Payload<'_, T> {
    fn serialize<S: Serializer>(&self, inner: S) -> Result<S::Ok, S::Error> {
        let root = Ser {
            inner,
            bins: self.bins,
            root: Some(self.event),
        };
        if is_ser_tuple(self.data) {
            self.data.serialize(root)
        } else {
            (self.data,).serialize(root)
        }
    }
}

/// serde_json serializer wrapper. `root` is `Some(event)` for the top-level value only.
struct Ser<'a, S> {
    inner: S,
    bins: &'a Attachments,
    root: Option<Option<&'a str>>,
}

/// A value to serialize below the root (elements, fields, map values).
struct Nested<'a, T: ?Sized> {
    value: &'a T,
    bins: &'a Attachments,
}

impl<T: ?Sized + Serialize> Serialize for Nested<'_, T> {
    fn serialize<S: Serializer>(&self, inner: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(Ser {
            inner,
            bins: self.bins,
            root: None,
        })
    }
}

/// The compound serializers of [`Ser`]: each element goes through [`Nested`].
struct Compound<'a, C> {
    inner: C,
    bins: &'a Attachments,
}

macro_rules! compound {
    ($($trait:ident :: $method:ident),*) => {$(
        impl<C: $trait> $trait for Compound<'_, C> {
            type Ok = C::Ok;
            type Error = C::Error;
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), C::Error> {
                let value = Nested { value, bins: self.bins };
                self.inner.$method(&value)
            }
            fn end(self) -> Result<C::Ok, C::Error> {
                self.inner.end()
            }
        }
    )*};
}
compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl<C: SerializeMap> SerializeMap for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), C::Error> {
        self.inner.serialize_key(key)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), C::Error> {
        let value = Nested {
            value,
            bins: self.bins,
        };
        self.inner.serialize_value(&value)
    }
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

macro_rules! compound_fields {
    ($($trait:ident),*) => {$(
        impl<C: $trait> $trait for Compound<'_, C> {
            type Ok = C::Ok;
            type Error = C::Error;
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), C::Error> {
                let value = Nested { value, bins: self.bins };
                self.inner.serialize_field(key, &value)
            }
            fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
                self.inner.skip_field(key)
            }
            fn end(self) -> Result<C::Ok, C::Error> {
                self.inner.end()
            }
        }
    )*};
}
compound_fields!(SerializeStruct, SerializeStructVariant);

macro_rules! forward_scalars {
    ($($method:ident: $ty:ty)*) => {$(
        fn $method(self, v: $ty) -> Result<S::Ok, S::Error> {
            self.inner.$method(v)
        }
    )*};
}

impl<'a, S: Serializer> Ser<'a, S> {
    fn compound<C>(
        bins: &'a Attachments,
        inner: Result<C, S::Error>,
    ) -> Result<Compound<'a, C>, S::Error> {
        inner.map(|inner| Compound { inner, bins })
    }
}

impl<'a, S: Serializer> Serializer for Ser<'a, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Compound<'a, S::SerializeSeq>;
    type SerializeTuple = Compound<'a, S::SerializeTuple>;
    type SerializeTupleStruct = Compound<'a, S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<'a, S::SerializeTupleVariant>;
    type SerializeMap = Compound<'a, S::SerializeMap>;
    type SerializeStruct = Compound<'a, S::SerializeStruct>;
    type SerializeStructVariant = Compound<'a, S::SerializeStructVariant>;

    forward_scalars! {
        serialize_bool: bool serialize_i8: i8 serialize_i16: i16 serialize_i32: i32
        serialize_i64: i64 serialize_i128: i128 serialize_u8: u8 serialize_u16: u16
        serialize_u32: u32 serialize_u64: u64 serialize_u128: u128 serialize_f32: f32
        serialize_f64: f64 serialize_char: char serialize_str: &str
        serialize_unit_struct: &'static str
    }

    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit()
    }

    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_none()
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<S::Ok, S::Error> {
        let num = {
            let mut bins = self.bins.borrow_mut();
            bins.push_back(Bytes::copy_from_slice(v));
            bins.len() - 1
        };
        let mut map = self.inner.serialize_map(Some(2))?;
        map.serialize_entry("_placeholder", &true)?;
        map.serialize_entry("num", &num)?;
        map.end()
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.inner.serialize_some(&Nested {
            value,
            bins: self.bins,
        })
    }

    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit_variant(name, index, variant)
    }

    /// At the root a newtype struct is one argument: `[event, inner]`.
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let value = Nested {
            value,
            bins: self.bins,
        };
        match self.root {
            Some(event) => {
                let mut seq = self
                    .inner
                    .serialize_tuple(1 + usize::from(event.is_some()))?;
                if let Some(event) = event {
                    seq.serialize_element(event)?;
                }
                seq.serialize_element(&value)?;
                seq.end()
            }
            None => self.inner.serialize_newtype_struct(name, &value),
        }
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let value = Nested {
            value,
            bins: self.bins,
        };
        self.inner
            .serialize_newtype_variant(name, index, variant, &value)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        Self::compound(self.bins, self.inner.serialize_seq(len))
    }

    /// At the root a tuple is the argument list: `[event, ...tuple]`.
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        let event = self.root.flatten();
        let mut seq = self
            .inner
            .serialize_tuple(len + usize::from(event.is_some()))?;
        if let Some(event) = event {
            seq.serialize_element(event)?;
        }
        Self::compound(self.bins, Ok(seq))
    }

    /// At the root a tuple struct is the argument list: `[event, ...fields]`.
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        let event = self.root.flatten();
        let mut seq = self
            .inner
            .serialize_tuple_struct(name, len + usize::from(event.is_some()))?;
        if let Some(event) = event {
            seq.serialize_field(event)?;
        }
        Self::compound(self.bins, Ok(seq))
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        Self::compound(
            self.bins,
            self.inner
                .serialize_tuple_variant(name, index, variant, len),
        )
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        Self::compound(self.bins, self.inner.serialize_map(len))
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        Self::compound(self.bins, self.inner.serialize_struct(name, len))
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        Self::compound(
            self.bins,
            self.inner
                .serialize_struct_variant(name, index, variant, len),
        )
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}
