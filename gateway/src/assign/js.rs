//! JavaScript value semantics over `serde_json::Value`, as GrowthBook's condition evaluator
//! (written in TypeScript) sees them: `String(v)`, `Number(v)`, truthiness, `===`, `<` and the
//! padded version strings behind `$veq`..`$vlte`.
//!
//! Only what conditions and unit ids need. A missing attribute is JavaScript `null` (GrowthBook's
//! `getPath` returns `null` for a missing path), so callers pass [`NULL`] for it.
//! Nothing here allocates for strings; numbers, arrays and objects are converted on demand.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

/// The value of a missing attribute.
pub(crate) static NULL: Value = Value::Null;

/// A JSON scalar as a condition literal, for `===` and `Array.prototype.includes`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Null,
    Bool(bool),
    Num(f64),
    Str(Box<str>),
    /// An array or object literal: never `===` to anything, since JavaScript compares those by
    /// identity and an attribute is never the same object as a condition literal.
    Unmatchable,
}

impl Scalar {
    pub(crate) fn from_json(v: &Value) -> Scalar {
        match v {
            Value::Null => Scalar::Null,
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Number(n) => Scalar::Num(number(n)),
            Value::String(s) => Scalar::Str(s.as_str().into()),
            Value::Array(_) | Value::Object(_) => Scalar::Unmatchable,
        }
    }

    /// JavaScript `actual === self` (also `includes`' SameValueZero: JSON has no NaN).
    pub(crate) fn strict_eq(&self, actual: &Value) -> bool {
        match (self, actual) {
            (Scalar::Null, Value::Null) => true,
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            (Scalar::Num(a), Value::Number(b)) => *a == number(b),
            (Scalar::Str(a), Value::String(b)) => **a == **b,
            _ => false,
        }
    }
}

/// A primitive after JavaScript's `ToPrimitive`, the operands of `<`, `<=`, `>`, `>=`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Prim<'a> {
    Num(f64),
    Str(Cow<'a, str>),
}

impl Prim<'_> {
    pub(crate) fn of(v: &Value) -> Prim<'_> {
        match v {
            Value::Null => Prim::Num(0.0),
            Value::Bool(b) => Prim::Num(f64::from(u8::from(*b))),
            Value::Number(n) => Prim::Num(number(n)),
            Value::String(s) => Prim::Str(Cow::Borrowed(s)),
            Value::Array(_) | Value::Object(_) => Prim::Str(to_js_string(v)),
        }
    }

    pub(crate) fn into_owned(self) -> Prim<'static> {
        match self {
            Prim::Num(n) => Prim::Num(n),
            Prim::Str(s) => Prim::Str(Cow::Owned(s.into_owned())),
        }
    }

    fn to_number(&self) -> f64 {
        match self {
            Prim::Num(n) => *n,
            Prim::Str(s) => string_to_number(s),
        }
    }
}

/// JavaScript's abstract relational comparison: two strings compare by UTF-16 code units,
/// anything else numerically; `None` when a side is `NaN` (every comparison is then false).
pub(crate) fn compare(a: &Prim<'_>, b: &Prim<'_>) -> Option<Ordering> {
    match (a, b) {
        (Prim::Str(a), Prim::Str(b)) => Some(a.encode_utf16().cmp(b.encode_utf16())),
        _ => a.to_number().partial_cmp(&b.to_number()),
    }
}

/// JSON numbers are JavaScript doubles (a 20-digit id loses precision exactly as in the SDKs).
pub(crate) fn number(n: &serde_json::Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

/// JavaScript `String(v)` (also `v + ""`).
pub(crate) fn to_js_string(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed("null"),
        Value::Bool(true) => Cow::Borrowed("true"),
        Value::Bool(false) => Cow::Borrowed("false"),
        Value::Number(n) => Cow::Owned(number_to_js_string(number(n))),
        Value::Object(_) => Cow::Borrowed("[object Object]"),
        Value::Array(items) => {
            // Array.prototype.join: null and undefined become "".
            let parts: Vec<Cow<'_, str>> = items
                .iter()
                .map(|item| match item {
                    Value::Null => Cow::Borrowed(""),
                    other => to_js_string(other),
                })
                .collect();
            Cow::Owned(parts.join(","))
        }
    }
}

/// JavaScript `Number.prototype.toString()`: shortest round-trip digits, plain notation for
/// `1e-6 <= |x| < 1e21`, otherwise exponent notation with an explicit sign (`1e+21`).
pub(crate) fn number_to_js_string(x: f64) -> String {
    if x == 0.0 {
        return "0".to_owned(); // also -0
    }
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    let abs = x.abs();
    if (1e-6..1e21).contains(&abs) {
        // Rust's Display also prints the shortest round-trip digits without an exponent.
        return x.to_string();
    }
    let s = format!("{x:e}");
    match s.split_once('e') {
        Some((mantissa, exp)) if !exp.starts_with('-') => format!("{mantissa}e+{exp}"),
        _ => s,
    }
}

/// JavaScript `Number(v)` (also `v * 1`).
pub(crate) fn to_number(v: &Value) -> f64 {
    match v {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => number(n),
        Value::String(s) => string_to_number(s),
        Value::Array(_) => string_to_number(&to_js_string(v)),
        Value::Object(_) => f64::NAN,
    }
}

/// JavaScript `StringToNumber`: trims whitespace; `""` is 0; accepts decimal, `Infinity` and
/// `0x`/`0o`/`0b` integers; anything else is `NaN`.
pub(crate) fn string_to_number(s: &str) -> f64 {
    let s = s.trim_matches(|c: char| (c.is_whitespace() && c != '\u{85}') || c == '\u{feff}');
    if s.is_empty() {
        return 0.0;
    }
    match s {
        "Infinity" | "+Infinity" => return f64::INFINITY,
        "-Infinity" => return f64::NEG_INFINITY,
        _ => {}
    }
    let radix = match s.get(..2) {
        Some("0x" | "0X") => Some(16),
        Some("0o" | "0O") => Some(8),
        Some("0b" | "0B") => Some(2),
        _ => None,
    };
    if let Some(radix) = radix {
        let digits = &s[2..];
        if digits.is_empty() {
            return f64::NAN;
        }
        return digits
            .chars()
            .try_fold(0.0f64, |acc, c| {
                c.to_digit(radix)
                    .map(|d| acc * f64::from(radix) + f64::from(d))
            })
            .unwrap_or(f64::NAN);
    }
    // Rust's parser also takes "inf", "nan" and "infinity"; JavaScript takes none of them.
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
    {
        return f64::NAN;
    }
    s.parse().unwrap_or(f64::NAN)
}

/// JavaScript truthiness (`!!v`).
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => {
            let n = number(n);
            n != 0.0 && !n.is_nan()
        }
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// `JSON.stringify(a) === JSON.stringify(b)`, with two differences that only matter for object
/// literals: key order is ignored (serde_json does not keep it) and `1` equals `1.0` (as in JS).
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number(x) == number(y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, xv)| y.get(k).is_some_and(|yv| json_eq(xv, yv)))
        }
        _ => a == b,
    }
}

/// The input of GrowthBook's `paddedVersionString`: numbers become their string form, anything
/// that is not a non-empty string becomes "0".
pub(crate) fn version_input(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) if !s.is_empty() => Cow::Borrowed(s),
        Value::Number(n) => Cow::Owned(number_to_js_string(number(n))),
        _ => Cow::Borrowed("0"),
    }
}

/// GrowthBook's `paddedVersionString` as a character stream (so comparing allocates nothing):
/// drop a leading `v` and any `+build` suffix, split on `.` and `-`, append `~` to a plain
/// `x.y.z` (so a release sorts after its pre-releases), left-pad numeric parts with spaces to
/// width 5 (so " 9" < "10"), and join with `-`. Compare two streams lexicographically.
pub(crate) fn padded_version(input: &str) -> impl Iterator<Item = char> + Clone + '_ {
    let s = input.strip_prefix('v').unwrap_or(input);
    let s = s.find('+').map_or(s, |plus| &s[..plus]);
    let parts = s.split(['-', '.']);
    let tilde = (parts.clone().count() == 3).then_some("~");
    parts.chain(tilde).enumerate().flat_map(|(i, part)| {
        let numeric = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        let pad = if numeric {
            5usize.saturating_sub(part.len())
        } else {
            0
        };
        (i > 0)
            .then_some('-')
            .into_iter()
            .chain(std::iter::repeat_n(' ', pad))
            .chain(part.chars())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn padded(s: &str) -> String {
        padded_version(s).collect()
    }

    #[test]
    fn padded_version_matches_growthbook() {
        assert_eq!(padded("1.2.3"), "    1-    2-    3-~");
        assert_eq!(padded("v1.2.3-rc.1+build123"), "    1-    2-    3-rc-    1");
        assert_eq!(padded("123456.0.0"), "123456-    0-    0-~");
        assert_eq!(padded("0"), "    0");
    }

    #[test]
    fn version_ordering_matches_growthbook_version_compare_cases() {
        let cmp = |a: &str, b: &str| padded_version(a).cmp(padded_version(b));
        // cases.json "versionCompare" (a selection of each kind).
        let lt = [
            ("0.9.99", "1.0.0"),
            ("0.9.0", "0.10.0"),
            ("1.0.0-0.0", "1.0.0-0.0.0"),
            ("1.0.0-9999", "1.0.0--"),
            ("1.0.0-99", "1.0.0-100"),
            ("1.0.0-alpha", "1.0.0-alpha.1"),
            ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
            ("1.0.0-alpha.beta", "1.0.0-beta"),
            ("1.0.0-beta.2", "1.0.0-beta.11"),
            ("1.0.0-rc.1", "1.0.0"),
            ("1.0.0-1.0", "1.0.0-1.-1"),
        ];
        for (a, b) in lt {
            assert_eq!(cmp(a, b), Ordering::Less, "{a} < {b}");
        }
        let gt = [
            ("0.0.0", "0.0.0-foo"),
            ("v0.0.1", "0.0.0"),
            ("0.99.0", "0.10.0"),
            ("1.2.3", "1.2.3-4-foo"),
            ("1.2.3-5-foo", "1.2.3-5-Foo"),
            ("3.0.0", "2.7.2+asdf"),
            ("1.2.3-a.10", "1.2.3-a.5"),
            ("1.2.3-r100", "1.2.3-R2"),
            ("a.b.c.d.e.f", "1.2.3"),
            ("10000.0.0", "9999.0.0"),
        ];
        for (a, b) in gt {
            assert_eq!(cmp(a, b), Ordering::Greater, "{a} > {b}");
        }
        // The spec lists this pair under "gt" with expectation false.
        assert_ne!(cmp("1.2.3-a.b.c", "1.2.3-a.b.c.d"), Ordering::Greater);
        let eq = [
            ("1.2.3", "v1.2.3"),
            ("1.2.3-beta+build", "v1.2.3-beta+otherbuild"),
            ("1-2-3", "1-2.3+build99"),
            ("1.2.3.4", "1.2.3-4"),
        ];
        for (a, b) in eq {
            assert_eq!(cmp(a, b), Ordering::Equal, "{a} == {b}");
        }
    }

    #[test]
    fn numbers_print_like_javascript() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (123.0, "123"),
            (-7.0, "-7"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e300, "1.5e+300"),
            (12345678901234567890.0, "12345678901234567000"),
        ];
        for (x, expected) in cases {
            assert_eq!(number_to_js_string(x), expected, "{x:e}");
        }
    }

    #[test]
    fn strings_convert_to_numbers_like_javascript() {
        let cases = [
            ("", 0.0),
            ("  12  ", 12.0),
            ("1e3", 1000.0),
            (".5", 0.5),
            ("5.", 5.0),
            ("-2", -2.0),
            ("0x1F", 31.0),
            ("0b101", 5.0),
            ("Infinity", f64::INFINITY),
        ];
        for (s, expected) in cases {
            assert_eq!(string_to_number(s), expected, "{s:?}");
        }
        for s in ["abc", "inf", "nan", "infinity", "1,5", "0x", "12px", "-0x5"] {
            assert!(string_to_number(s).is_nan(), "{s:?} should be NaN");
        }
    }

    #[test]
    fn values_stringify_like_javascript() {
        assert_eq!(to_js_string(&json!(null)), "null");
        assert_eq!(to_js_string(&json!(true)), "true");
        assert_eq!(to_js_string(&json!(42)), "42");
        assert_eq!(to_js_string(&json!(["a", null, 1, ["b", "c"]])), "a,,1,b,c");
        assert_eq!(to_js_string(&json!({"a": 1})), "[object Object]");
        assert_eq!(to_number(&json!([])), 0.0);
        assert_eq!(to_number(&json!(["7"])), 7.0);
        assert!(to_number(&json!([1, 2])).is_nan());
        assert!(to_number(&json!({})).is_nan());
    }

    #[test]
    fn relational_comparison_follows_javascript() {
        let lt = |a: Value, b: Value| compare(&Prim::of(&a), &Prim::of(&b)) == Some(Ordering::Less);
        assert!(lt(json!(null), json!(10))); // null is 0
        assert!(lt(json!(-10), json!(null)));
        assert!(lt(json!("5"), json!(8))); // mixed: numeric
        assert!(lt(json!("10"), json!("9"))); // both strings: lexicographic
        assert!(lt(json!("AZL"), json!("alphabet")));
        assert!(!lt(json!("abc"), json!(1)) && !lt(json!(1), json!("abc"))); // NaN
        // UTF-16 order, not code point order: U+FF61 sorts after U+1F600's high surrogate.
        assert!(lt(json!("\u{1F600}"), json!("\u{FF61}")));
    }

    #[test]
    fn strict_equality_and_deep_equality() {
        assert!(Scalar::Num(1.0).strict_eq(&json!(1)));
        assert!(Scalar::Num(1.0).strict_eq(&json!(1.0)));
        assert!(!Scalar::Str("1".into()).strict_eq(&json!(1)));
        assert!(!Scalar::Unmatchable.strict_eq(&json!([1])));
        assert!(Scalar::Null.strict_eq(&NULL));
        assert!(json_eq(
            &json!({"a": [1, {"b": 2.0}]}),
            &json!({"a": [1.0, {"b": 2}]})
        ));
        assert!(!json_eq(&json!(["a", "b"]), &json!(["b", "a"])));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(truthy(&json!([])) && !truthy(&json!(0)) && !truthy(&json!("")));
    }
}
