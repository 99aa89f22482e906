//! Targeting conditions in GrowthBook's MongoDB-style syntax, compiled once at load into a tree
//! ([`Condition`]) that is evaluated per request without walking JSON or compiling regexes.
//!
//! Evaluation mirrors GrowthBook's `mongrule.ts` (`evalCondition`, `evalConditionValue`,
//! `evalOperatorCondition`), including its JavaScript coercions (the private `js` module): a
//! missing attribute is `null`, `{"n": {"$gt": 5}}` matches the string `"8"`, `{"tags": "a"}`
//! matches `["a"]` (an array stringifies to `"a"`), `$elemMatch` skips falsy elements, and so on.
//!
//! Where GrowthBook would silently evaluate a malformed condition to `false` (an unknown
//! operator, `$in` with a non-array, a regex that does not compile), compilation fails instead,
//! so a typo refuses the file rather than quietly excluding everyone. Not supported, and refused:
//! `$inGroup` / `$notInGroup` (saved groups) and regex features Rust's `regex` lacks
//! (look-around, back-references).

use std::fmt;

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use super::js::{self, NULL, Prim, Scalar};

/// A compiled targeting condition. An empty condition (`{}`) matches everyone.
#[derive(Debug, Clone)]
pub struct Condition {
    root: Cond,
}

/// Why a condition did not compile; `at` is the position in the condition (`$and[1].country`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}{}", at_suffix(.at))]
pub struct ConditionError {
    pub at: String,
    pub reason: String,
}

fn at_suffix(at: &str) -> String {
    if at.is_empty() {
        String::new()
    } else {
        format!(" (at {at})")
    }
}

impl Condition {
    /// Compiles a condition; it must be a JSON object.
    pub fn compile(condition: &Value) -> Result<Condition, ConditionError> {
        let mut at = Location::default();
        let Value::Object(obj) = condition else {
            return Err(at.error("a condition must be an object"));
        };
        Ok(Condition {
            root: compile_object(obj, &mut at)?,
        })
    }

    /// Whether the unit's attributes satisfy the condition.
    pub fn matches(&self, attributes: &Map<String, Value>) -> bool {
        self.root.eval(Subject::Attributes(attributes))
    }
}

/// What a condition's paths are resolved against: the attributes, or an array element
/// (`$elemMatch` with a nested condition).
#[derive(Clone, Copy)]
enum Subject<'v> {
    Attributes(&'v Map<String, Value>),
    Value(&'v Value),
}

/// A condition over an object (GrowthBook's `evalCondition`).
#[derive(Debug, Clone)]
enum Cond {
    /// Every entry holds (a condition object, or `$and`). Empty: true.
    All(Vec<Cond>),
    /// Some entry holds. Empty: true (GrowthBook's `evalOr`).
    Or(Vec<Cond>),
    /// `!Or`; so an empty `$nor` is false, as in GrowthBook.
    Nor(Vec<Cond>),
    Not(Box<Cond>),
    /// The value at a dot-separated path satisfies a test.
    Field {
        path: Box<[Box<str>]>,
        test: Test,
    },
}

/// A condition on one value (GrowthBook's `evalConditionValue`).
#[derive(Debug, Clone)]
enum Test {
    /// `String(value) === s`.
    Str(Box<str>),
    /// `String(value).toLowerCase() === s` (string items of `$alli`); `s` is lowercased.
    StrFolded(Box<str>),
    /// `Number(value) === n`.
    Num(f64),
    /// `value !== null && !!value === b`.
    Bool(bool),
    /// `value === null` (also a missing attribute).
    Null,
    /// `JSON.stringify(value) === JSON.stringify(literal)`: arrays and non-operator objects.
    Json(Value),
    /// An operator object: every operator holds.
    Ops(Vec<Op>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rel {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Rel {
    fn holds(self, ord: Option<std::cmp::Ordering>) -> bool {
        use std::cmp::Ordering::*;
        match (self, ord) {
            (_, None) => false,
            (Rel::Eq, Some(o)) => o == Equal,
            (Rel::Ne, Some(o)) => o != Equal,
            (Rel::Gt, Some(o)) => o == Greater,
            (Rel::Gte, Some(o)) => o != Less,
            (Rel::Lt, Some(o)) => o == Less,
            (Rel::Lte, Some(o)) => o != Greater,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsType {
    Null,
    Array,
    String,
    Number,
    Boolean,
    Object,
    /// Accepted because GrowthBook accepts it, but a JSON attribute is never `undefined`.
    Undefined,
}

#[derive(Debug, Clone)]
enum Op {
    /// `$eq` / `$ne`: strict equality.
    Eq(Scalar),
    Ne(Scalar),
    /// `$gt $gte $lt $lte`: JavaScript relational comparison.
    Cmp(Rel, Prim<'static>),
    /// `$veq`..`$vlte`: comparison of padded version strings; holds the padded expectation.
    Version(Rel, String),
    /// `$in` / `$nin` (`folded`: `$ini` / `$nini`, strings compared lowercased).
    In {
        values: Vec<Scalar>,
        negate: bool,
        folded: bool,
    },
    Exists(bool),
    /// `$regex` / `$regexi`, tested against `String(value)`.
    Regex(Regex),
    Not(Box<Test>),
    Size(Box<Test>),
    /// `$elemMatch` with an operator object: some truthy element passes the test.
    ElemMatchValue(Box<Test>),
    /// `$elemMatch` with a plain object: some truthy element satisfies it as a condition.
    ElemMatchCond(Box<Cond>),
    /// `$all` / `$alli`: the value is an array and every test passes for some element.
    All(Vec<Test>),
    Type(JsType),
}

impl Cond {
    fn eval(&self, subject: Subject<'_>) -> bool {
        match self {
            Cond::All(conds) => conds.iter().all(|c| c.eval(subject)),
            Cond::Or(conds) => conds.is_empty() || conds.iter().any(|c| c.eval(subject)),
            Cond::Nor(conds) => !(conds.is_empty() || conds.iter().any(|c| c.eval(subject))),
            Cond::Not(cond) => !cond.eval(subject),
            Cond::Field { path, test } => test.eval(get_path(subject, path)),
        }
    }
}

/// GrowthBook's `getPath`: follow the dot-separated parts through objects (and, as JavaScript's
/// `in` allows, array indices); anything missing is `null`.
fn get_path<'v>(subject: Subject<'v>, path: &[Box<str>]) -> &'v Value {
    let (mut current, rest) = match subject {
        Subject::Attributes(attrs) => match path.split_first() {
            Some((first, rest)) => match attrs.get(&**first) {
                Some(v) => (v, rest),
                None => return &NULL,
            },
            None => return &NULL,
        },
        Subject::Value(v) => (v, path),
    };
    for part in rest {
        let next = match current {
            Value::Object(map) => map.get(&**part),
            Value::Array(items) => array_index(part).and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(v) => current = v,
            None => return &NULL,
        }
    }
    current
}

/// A canonical array index ("0", "12"; not "01" or "+1").
fn array_index(part: &str) -> Option<usize> {
    let canonical = part == "0" || (!part.starts_with('0') && !part.is_empty());
    if canonical && part.bytes().all(|b| b.is_ascii_digit()) {
        part.parse().ok()
    } else {
        None
    }
}

impl Test {
    fn eval(&self, actual: &Value) -> bool {
        match self {
            Test::Str(s) => js::to_js_string(actual) == **s,
            Test::StrFolded(s) => js::to_js_string(actual).to_lowercase() == **s,
            Test::Num(n) => js::to_number(actual) == *n,
            Test::Bool(b) => !actual.is_null() && js::truthy(actual) == *b,
            Test::Null => actual.is_null(),
            Test::Json(literal) => js::json_eq(actual, literal),
            Test::Ops(ops) => ops.iter().all(|op| op.eval(actual)),
        }
    }
}

impl Op {
    fn eval(&self, actual: &Value) -> bool {
        match self {
            Op::Eq(expected) => expected.strict_eq(actual),
            Op::Ne(expected) => !expected.strict_eq(actual),
            Op::Cmp(rel, expected) => rel.holds(js::compare(&Prim::of(actual), expected)),
            Op::Version(rel, expected) => {
                let input = js::version_input(actual);
                rel.holds(Some(js::padded_version(&input).cmp(expected.chars())))
            }
            Op::In {
                values,
                negate,
                folded,
            } => is_in(actual, values, *folded) != *negate,
            Op::Exists(expected) => actual.is_null() != *expected,
            Op::Regex(re) => re.is_match(&js::to_js_string(actual)),
            Op::Not(test) => !test.eval(actual),
            Op::Size(test) => match actual {
                Value::Array(items) => test.eval(&Value::from(items.len())),
                _ => false,
            },
            Op::ElemMatchValue(test) => elements(actual).any(|v| test.eval(v)),
            Op::ElemMatchCond(cond) => elements(actual).any(|v| cond.eval(Subject::Value(v))),
            Op::All(tests) => match actual {
                Value::Array(items) => tests.iter().all(|t| items.iter().any(|v| t.eval(v))),
                _ => false,
            },
            Op::Type(ty) => js_type(actual) == *ty,
        }
    }
}

/// The truthy elements of an array (GrowthBook's `elemMatch` skips the others); none otherwise.
fn elements(actual: &Value) -> impl Iterator<Item = &Value> {
    let items = match actual {
        Value::Array(items) => items.as_slice(),
        _ => &[],
    };
    items.iter().filter(|v| js::truthy(v))
}

/// GrowthBook's `isIn`: membership by strict equality; an array attribute matches if any of its
/// elements is in the list.
fn is_in(actual: &Value, values: &[Scalar], folded: bool) -> bool {
    let contains = |v: &Value| {
        if folded && let Value::String(s) = v {
            let lower = s.to_lowercase();
            return values
                .iter()
                .any(|e| matches!(e, Scalar::Str(x) if **x == *lower));
        }
        values.iter().any(|e| e.strict_eq(v))
    };
    match actual {
        Value::Array(items) => items.iter().any(contains),
        other => contains(other),
    }
}

fn js_type(v: &Value) -> JsType {
    match v {
        Value::Null => JsType::Null,
        Value::Array(_) => JsType::Array,
        Value::String(_) => JsType::String,
        Value::Number(_) => JsType::Number,
        Value::Bool(_) => JsType::Boolean,
        Value::Object(_) => JsType::Object,
    }
}

/// Where compilation is, for error messages: `$and[1].country.$in`.
#[derive(Default)]
struct Location(Vec<String>);

impl Location {
    fn error(&self, reason: impl Into<String>) -> ConditionError {
        ConditionError {
            at: self.to_string(),
            reason: reason.into(),
        }
    }

    fn within<T>(&mut self, part: String, f: impl FnOnce(&mut Self) -> T) -> T {
        self.0.push(part);
        let out = f(self);
        self.0.pop();
        out
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 && !part.starts_with('[') {
                f.write_str(".")?;
            }
            f.write_str(part)?;
        }
        Ok(())
    }
}

/// A condition object: `$and`, `$or`, `$nor`, `$not` or an attribute path per key.
fn compile_object(obj: &Map<String, Value>, at: &mut Location) -> Result<Cond, ConditionError> {
    let mut conds = Vec::with_capacity(obj.len());
    for (key, value) in obj {
        let cond = at.within(key.clone(), |at| match key.as_str() {
            "$and" => Ok(Cond::All(compile_list(value, at)?)),
            "$or" => Ok(Cond::Or(compile_list(value, at)?)),
            "$nor" => Ok(Cond::Nor(compile_list(value, at)?)),
            "$not" => match value {
                Value::Object(inner) => Ok(Cond::Not(Box::new(compile_object(inner, at)?))),
                _ => Err(at.error("$not takes a condition object")),
            },
            path => Ok(Cond::Field {
                path: path.split('.').map(Box::from).collect(),
                test: compile_test(value, false, at)?,
            }),
        })?;
        conds.push(cond);
    }
    Ok(match conds.len() {
        1 => conds.pop().expect("one condition"),
        _ => Cond::All(conds),
    })
}

fn compile_list(value: &Value, at: &mut Location) -> Result<Vec<Cond>, ConditionError> {
    let Value::Array(items) = value else {
        return Err(at.error("expected an array of condition objects"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            at.within(format!("[{i}]"), |at| match item {
                Value::Object(obj) => compile_object(obj, at),
                _ => Err(at.error("expected a condition object")),
            })
        })
        .collect()
}

/// GrowthBook's `isOperatorObject`: non-empty, and every key starts with `$`.
fn is_operator_object(obj: &Map<String, Value>) -> bool {
    !obj.is_empty() && obj.keys().all(|k| k.starts_with('$'))
}

/// A condition value; `folded` marks the items of `$alli` (string literals compare lowercased).
fn compile_test(value: &Value, folded: bool, at: &mut Location) -> Result<Test, ConditionError> {
    Ok(match value {
        Value::String(s) if folded => Test::StrFolded(s.to_lowercase().into()),
        Value::String(s) => Test::Str(s.as_str().into()),
        Value::Number(n) => Test::Num(js::number(n)),
        Value::Bool(b) => Test::Bool(*b),
        Value::Null => Test::Null,
        Value::Object(obj) if is_operator_object(obj) => {
            let mut ops = Vec::with_capacity(obj.len());
            for (op, arg) in obj {
                ops.push(at.within(op.clone(), |at| compile_op(op, arg, at))?);
            }
            Test::Ops(ops)
        }
        Value::Array(_) | Value::Object(_) => Test::Json(value.clone()),
    })
}

fn compile_op(op: &str, arg: &Value, at: &mut Location) -> Result<Op, ConditionError> {
    let rel = |rel| Ok(Op::Cmp(rel, Prim::of(arg).into_owned()));
    let version = |rel| {
        let input = js::version_input(arg);
        Ok(Op::Version(rel, js::padded_version(&input).collect()))
    };
    let list = |at: &Location| match arg {
        Value::Array(items) => Ok(items),
        _ => Err(at.error(format!("{op} takes an array"))),
    };
    let membership = |negate, folded, at: &Location| {
        let values = list(at)?
            .iter()
            .map(|v| match v {
                Value::String(s) if folded => Scalar::Str(s.to_lowercase().into()),
                other => Scalar::from_json(other),
            })
            .collect();
        Ok(Op::In {
            values,
            negate,
            folded,
        })
    };
    match op {
        "$eq" => Ok(Op::Eq(Scalar::from_json(arg))),
        "$ne" => Ok(Op::Ne(Scalar::from_json(arg))),
        "$gt" => rel(Rel::Gt),
        "$gte" => rel(Rel::Gte),
        "$lt" => rel(Rel::Lt),
        "$lte" => rel(Rel::Lte),
        "$veq" => version(Rel::Eq),
        "$vne" => version(Rel::Ne),
        "$vgt" => version(Rel::Gt),
        "$vgte" => version(Rel::Gte),
        "$vlt" => version(Rel::Lt),
        "$vlte" => version(Rel::Lte),
        "$in" => membership(false, false, at),
        "$nin" => membership(true, false, at),
        "$ini" => membership(false, true, at),
        "$nini" => membership(true, true, at),
        "$exists" => match arg {
            Value::Bool(b) => Ok(Op::Exists(*b)),
            _ => Err(at.error("$exists takes true or false")),
        },
        "$regex" | "$regexi" => {
            let Value::String(pattern) = arg else {
                return Err(at.error(format!("{op} takes a string")));
            };
            RegexBuilder::new(pattern)
                .case_insensitive(op == "$regexi")
                .build()
                .map(Op::Regex)
                .map_err(|e| at.error(format!("invalid regex {pattern:?}: {e}")))
        }
        "$not" => Ok(Op::Not(Box::new(compile_test(arg, false, at)?))),
        "$size" => Ok(Op::Size(Box::new(compile_test(arg, false, at)?))),
        "$elemMatch" => match arg {
            Value::Object(obj) if is_operator_object(obj) => {
                Ok(Op::ElemMatchValue(Box::new(compile_test(arg, false, at)?)))
            }
            Value::Object(obj) => Ok(Op::ElemMatchCond(Box::new(compile_object(obj, at)?))),
            _ => Err(at.error("$elemMatch takes an object")),
        },
        "$all" | "$alli" => {
            let folded = op == "$alli";
            let tests = list(at)?
                .iter()
                .enumerate()
                .map(|(i, v)| at.within(format!("[{i}]"), |at| compile_test(v, folded, at)))
                .collect::<Result<_, _>>()?;
            Ok(Op::All(tests))
        }
        "$type" => {
            let ty = match arg.as_str() {
                Some("null") => JsType::Null,
                Some("array") => JsType::Array,
                Some("string") => JsType::String,
                Some("number") => JsType::Number,
                Some("boolean") => JsType::Boolean,
                Some("object") => JsType::Object,
                Some("undefined") => JsType::Undefined,
                _ => {
                    return Err(at.error(
                        "$type takes one of \"string\", \"number\", \"boolean\", \"array\", \
                         \"object\", \"null\"",
                    ));
                }
            };
            Ok(Op::Type(ty))
        }
        "$inGroup" | "$notInGroup" => Err(at.error(format!(
            "unsupported operator {op:?}: saved groups are not available in the gateway"
        ))),
        other => Err(at.error(format!("unknown operator {other:?}"))),
    }
}

#[cfg(test)]
#[path = "condition_tests.rs"]
mod tests;
