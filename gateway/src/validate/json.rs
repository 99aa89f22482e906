//! Borrowed JSON building blocks for [`super`]: any scalar value with strings kept as slices of
//! the body, object keys, and the check of the flat `props` object.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{MAX_PROP_KEY_BYTES, MAX_PROP_VALUE_BYTES, MAX_PROPS_KEYS, RejectCode};

/// Any JSON value, keeping strings borrowed; containers are skipped.
pub(super) enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Null,
    Container,
}

impl Scalar<'_> {
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "a string",
            Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_) => "a number",
            Scalar::Bool(_) => "a boolean",
            Scalar::Null => "null",
            Scalar::Container => "an object or array",
        }
    }
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Container)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Container)
    }
}

/// Object keys, borrowed unless escaped.
pub(super) struct Key<'a>(pub(super) Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Str(s) => Ok(Key(s)),
            _ => Err(de::Error::custom("object key must be a string")),
        }
    }
}

/// `props` must be a flat object of string, number or boolean values.
pub(super) fn check_props(raw: &str) -> Result<&str, (RejectCode, String)> {
    let bad = |msg: String| (RejectCode::InvalidProps, msg);
    match serde_json::from_str::<PropsCheck>(raw) {
        Ok(PropsCheck(Ok(()))) => Ok(raw),
        Ok(PropsCheck(Err(msg))) => Err(bad(msg)),
        Err(e) => Err(bad(format!("props: {e}"))),
    }
}

struct PropsCheck(Result<(), String>);

impl<'de> de::Deserialize<'de> for PropsCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PropsVisitor)
    }
}

struct PropsVisitor;

impl<'de> Visitor<'de> for PropsVisitor {
    type Value = PropsCheck;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a flat object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PropsCheck, A::Error> {
        let mut result = Ok(());
        let mut keys = 0usize;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let v = map.next_value::<Scalar<'de>>()?;
            keys += 1;
            if result.is_err() {
                continue;
            }
            if keys > MAX_PROPS_KEYS {
                result = Err(format!("props has more than {MAX_PROPS_KEYS} keys"));
            } else if key.len() > MAX_PROP_KEY_BYTES {
                result = Err(format!(
                    "a props key is longer than {MAX_PROP_KEY_BYTES} bytes"
                ));
            } else if matches!(&v, Scalar::Str(s) if s.len() > MAX_PROP_VALUE_BYTES) {
                result = Err(format!(
                    "props.{key} is longer than {MAX_PROP_VALUE_BYTES} bytes"
                ));
            } else if matches!(v, Scalar::Null | Scalar::Container) {
                result = Err(format!(
                    "props.{key} must be a string, number or boolean, got {}",
                    v.type_name()
                ));
            }
        }
        Ok(PropsCheck(result))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PropsCheck, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(PropsCheck(Err(
            "props must be an object, got an array".into()
        )))
    }
    fn visit_str<E>(self, _: &str) -> Result<PropsCheck, E> {
        Ok(PropsCheck(Err(
            "props must be an object, got a string".into()
        )))
    }
    fn visit_i64<E>(self, _: i64) -> Result<PropsCheck, E> {
        Ok(PropsCheck(Err(
            "props must be an object, got a number".into()
        )))
    }
    fn visit_u64<E>(self, _: u64) -> Result<PropsCheck, E> {
        Ok(PropsCheck(Err(
            "props must be an object, got a number".into()
        )))
    }
    fn visit_f64<E>(self, _: f64) -> Result<PropsCheck, E> {
        Ok(PropsCheck(Err(
            "props must be an object, got a number".into()
        )))
    }
    fn visit_bool<E>(self, _: bool) -> Result<PropsCheck, E> {
        Ok(PropsCheck(Err(
            "props must be an object, got a boolean".into()
        )))
    }
}
