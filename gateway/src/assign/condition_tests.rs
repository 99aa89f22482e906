//! Tests for [`super::Condition`]: GrowthBook's spec cases (`cases.json`, `evalCondition`) for
//! every operator, the JavaScript coercions they rely on, and compile errors.

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn matches(condition: Value, attributes: Value) -> bool {
    let compiled = Condition::compile(&condition)
        .unwrap_or_else(|e| panic!("condition {condition} does not compile: {e}"));
    let Value::Object(attrs) = attributes else {
        panic!("attributes must be an object")
    };
    compiled.matches(&attrs)
}

/// `[name, condition, attributes, expected]`, mostly GrowthBook's own `evalCondition` cases.
const CASES: &str = r#"[
  ["$not pass", {"$not": {"name": "hello"}}, {"name": "world"}, true],
  ["$not fail", {"$not": {"name": "hello"}}, {"name": "hello"}, false],
  ["$and/$or all true",
    {"$and": [{"father.age": {"$gt": 65}}, {"$or": [{"bday": {"$regex": "-12-25$"}}, {"name": "santa"}]}]},
    {"name": "santa", "bday": "1980-12-25", "father": {"age": 70}}, true],
  ["$and/$or second or true",
    {"$and": [{"father.age": {"$gt": 65}}, {"$or": [{"bday": {"$regex": "-12-25$"}}, {"name": "santa"}]}]},
    {"name": "barbara", "bday": "1980-12-25", "father": {"age": 70}}, true],
  ["$and/$or first and false",
    {"$and": [{"father.age": {"$gt": 65}}, {"$or": [{"bday": {"$regex": "-12-25$"}}, {"name": "santa"}]}]},
    {"name": "santa", "bday": "1980-12-25", "father": {"age": 65}}, false],
  ["$and/$or both or false",
    {"$and": [{"father.age": {"$gt": 65}}, {"$or": [{"bday": {"$regex": "-12-25$"}}, {"name": "santa"}]}]},
    {"name": "barbara", "bday": "1980-11-25", "father": {"age": 70}}, false],
  ["$groups attribute path starting with $",
    {"$and": [{"$groups": {"$elemMatch": {"$eq": "a"}}}, {"$not": {"$groups": {"$elemMatch": {"$eq": "f"}}}}]},
    {"$groups": ["a", "b", "c", "d"]}, true],
  ["$exists false pass", {"pets.dog.name": {"$exists": false}}, {"hello": "world"}, true],
  ["$exists false fail", {"pets.dog.name": {"$exists": false}}, {"pets": {"dog": {"name": "fido"}}}, false],
  ["$exists true fail", {"pets.dog.name": {"$exists": true}}, {"hello": "world"}, false],
  ["$exists true pass", {"pets.dog.name": {"$exists": true}}, {"pets": {"dog": {"name": "fido"}}}, true],
  ["equals multiple datatypes", {"str": "str", "num": 10, "flag": false}, {"str": "str", "num": 10, "flag": false}, true],
  ["$in pass", {"num": {"$in": [1, 2, 3]}}, {"num": 2}, true],
  ["$in fail", {"num": {"$in": [1, 2, 3]}}, {"num": 4}, false],
  ["$in array pass", {"tags": {"$in": ["a", "b"]}}, {"tags": ["d", "e", "a"]}, true],
  ["$in array fail", {"tags": {"$in": ["a", "b"]}}, {"tags": ["d", "e", "f"]}, false],
  ["$in empty array fail", {"tags": {"$in": ["a", "b"]}}, {"tags": []}, false],
  ["$in is strict", {"num": {"$in": ["2"]}}, {"num": 2}, false],
  ["$nin pass", {"num": {"$nin": [1, 2, 3]}}, {"num": 4}, true],
  ["$nin fail", {"num": {"$nin": [1, 2, 3]}}, {"num": 2}, false],
  ["$nin array fail", {"tags": {"$nin": ["a", "b"]}}, {"tags": ["d", "b", "f"]}, false],
  ["$nin array pass", {"tags": {"$nin": ["a", "b"]}}, {"tags": ["d", "e", "f"]}, true],
  ["$nin missing attribute pass", {"country": {"$nin": ["US"]}}, {}, true],
  ["$ini pass", {"country": {"$ini": ["us", "CA"]}}, {"country": "Us"}, true],
  ["$nini fail", {"country": {"$nini": ["us"]}}, {"country": "US"}, false],
  ["$elemMatch flat pass", {"nums": {"$elemMatch": {"$gt": 10}}}, {"nums": [0, 5, -20, 15]}, true],
  ["$elemMatch flat fail", {"nums": {"$elemMatch": {"$gt": 10}}}, {"nums": [0, 5, -20, 8]}, false],
  ["$elemMatch skips falsy elements", {"nums": {"$elemMatch": {"$lt": 1}}}, {"nums": [0, 5]}, false],
  ["$elemMatch contains", {"tags": {"$elemMatch": {"$eq": "bar"}}}, {"tags": ["foo", "bar", "baz"]}, true],
  ["$elemMatch intersection", {"tags": {"$elemMatch": {"$in": ["a", "b"]}}}, {"tags": ["d", "e", "b"]}, true],
  ["$elemMatch not contains", {"tags": {"$not": {"$elemMatch": {"$eq": "bar"}}}}, {"tags": ["foo", "baz"]}, true],
  ["$elemMatch nested pass", {"hobbies": {"$elemMatch": {"name": {"$regex": "^ping"}}}},
    {"hobbies": [{"name": "bowling"}, {"name": "pingpong"}]}, true],
  ["$elemMatch nested fail", {"hobbies": {"$elemMatch": {"name": {"$regex": "^ping"}}}},
    {"hobbies": [{"name": "bowling"}, {"name": "tennis"}]}, false],
  ["$elemMatch not array", {"hobbies": {"$elemMatch": {"name": {"$regex": "^ping"}}}}, {"hobbies": "all"}, false],
  ["missing attribute fail", {"pets.dog.name": {"$in": ["fido"]}}, {"hello": "world"}, false],
  ["missing attribute is null for comparisons",
    {"age": {"$gt": -10, "$lt": 10, "$gte": -9, "$lte": 9, "$ne": 10}}, {}, true],
  ["comparing numbers and strings", {"n": {"$gt": 5, "$lt": 10}}, {"n": "8"}, true],
  ["comparing numbers and strings v2", {"n": {"$gt": "5", "$lt": "10"}}, {"n": 8}, true],
  ["two strings compare lexicographically", {"n": {"$gt": "5"}}, {"n": "10"}, false],
  ["non-numeric string vs number is false", {"n": {"$lt": 10}}, {"n": "abc"}, false],
  ["empty $or pass", {"$or": []}, {"hello": "world"}, true],
  ["empty $and pass", {"$and": []}, {"hello": "world"}, true],
  ["empty $nor fails", {"$nor": []}, {"hello": "world"}, false],
  ["empty condition pass", {}, {"hello": "world"}, true],
  ["$eq pass", {"occupation": {"$eq": "engineer"}}, {"occupation": "engineer"}, true],
  ["$eq fail", {"occupation": {"$eq": "engineer"}}, {"occupation": "civil engineer"}, false],
  ["$eq is strict", {"n": {"$eq": "1"}}, {"n": 1}, false],
  ["$eq never matches an array literal", {"tags": {"$eq": ["a"]}}, {"tags": ["a"]}, false],
  ["$ne pass", {"level": {"$ne": "senior"}}, {"level": "junior"}, true],
  ["$ne fail", {"level": {"$ne": "senior"}}, {"level": "senior"}, false],
  ["$regex pass", {"userAgent": {"$regex": "(Mobile|Tablet)"}}, {"userAgent": "Android Mobile Browser"}, true],
  ["$regex fail", {"userAgent": {"$regex": "(Mobile|Tablet)"}}, {"userAgent": "Chrome Desktop Browser"}, false],
  ["$regex tests String(value)", {"n": {"$regex": "^12"}}, {"n": 123}, true],
  ["$regexi pass", {"ua": {"$regexi": "mobile"}}, {"ua": "Android MOBILE"}, true],
  ["$gt/$lt numbers pass", {"age": {"$gt": 30, "$lt": 60}}, {"age": 50}, true],
  ["$gt/$lt numbers fail $lt", {"age": {"$gt": 30, "$lt": 60}}, {"age": 60}, false],
  ["$gt/$lt numbers fail $gt", {"age": {"$gt": 30, "$lt": 60}}, {"age": 30}, false],
  ["$gte/$lte pass $gte", {"age": {"$gte": 30, "$lte": 60}}, {"age": 30}, true],
  ["$gte/$lte pass $lte", {"age": {"$gte": 30, "$lte": 60}}, {"age": 60}, true],
  ["$gte/$lte fail $lte", {"age": {"$gte": 30, "$lte": 60}}, {"age": 61}, false],
  ["$gt/$lt strings fail $gt", {"word": {"$gt": "alphabet", "$lt": "zebra"}}, {"word": "alphabet"}, false],
  ["$gt/$lt strings pass", {"word": {"$gt": "alphabet", "$lt": "zebra"}}, {"word": "always"}, true],
  ["$gt/$lt strings fail uppercase", {"word": {"$gt": "alphabet", "$lt": "zebra"}}, {"word": "AZL"}, false],
  ["nested value is null", {"address.state": "CA"}, {"address": null}, false],
  ["nested value is integer", {"address.state": "CA"}, {"address": 123}, false],
  ["array index in path", {"items.1.sku": "b"}, {"items": [{"sku": "a"}, {"sku": "b"}]}, true],
  ["$type string pass", {"a": {"$type": "string"}}, {"a": "a"}, true],
  ["$type string fail", {"a": {"$type": "string"}}, {"a": 1}, false],
  ["$type null pass", {"a": {"$type": "null"}}, {"a": null}, true],
  ["$type boolean pass", {"a": {"$type": "boolean"}}, {"a": false}, true],
  ["$type number pass", {"a": {"$type": "number"}}, {"a": 1}, true],
  ["$type object pass", {"a": {"$type": "object"}}, {"a": {"a": "b"}}, true],
  ["$type array pass", {"a": {"$type": "array"}}, {"a": [1, 2]}, true],
  ["$type array fail", {"a": {"$type": "array"}}, {"a": 1}, false],
  ["$size empty pass", {"tags": {"$size": 0}}, {"tags": []}, true],
  ["$size empty fail", {"tags": {"$size": 0}}, {"tags": [10]}, false],
  ["$size number pass", {"tags": {"$size": 3}}, {"tags": ["a", "b", "c"]}, true],
  ["$size number fail", {"tags": {"$size": 3}}, {"tags": ["a", "b"]}, false],
  ["$size not array", {"tags": {"$size": 3}}, {"tags": "abc"}, false],
  ["$size nested pass", {"tags": {"$size": {"$gt": 2}}}, {"tags": [0, 1, 2]}, true],
  ["$size nested fail", {"tags": {"$size": {"$gt": 2}}}, {"tags": [0, 1]}, false],
  ["$not value pass", {"name": {"$not": {"$regex": "^hello"}}}, {"name": "world"}, true],
  ["$not value fail", {"name": {"$not": {"$regex": "^hello"}}}, {"name": "hello world"}, false],
  ["$all pass", {"tags": {"$all": ["one", "three"]}}, {"tags": ["one", "two", "three"]}, true],
  ["$all fail", {"tags": {"$all": ["one", "three"]}}, {"tags": ["one", "two", "four"]}, false],
  ["$all not array", {"tags": {"$all": ["one", "three"]}}, {"tags": "hello"}, false],
  ["$all with operators", {"nums": {"$all": [{"$gt": 5}, {"$lt": 0}]}}, {"nums": [-1, 7]}, true],
  ["$alli pass", {"tags": {"$alli": ["ONE", "three"]}}, {"tags": ["one", "Three"]}, true],
  ["$nor pass", {"$nor": [{"name": "john"}, {"age": {"$lt": 30}}]}, {"name": "jim", "age": 40}, true],
  ["$nor fail both", {"$nor": [{"name": "john"}, {"age": {"$lt": 30}}]}, {"name": "john", "age": 20}, false],
  ["$nor fail second", {"$nor": [{"name": "john"}, {"age": {"$lt": 30}}]}, {"name": "jim", "age": 20}, false],
  ["equals array pass", {"tags": ["hello", "world"]}, {"tags": ["hello", "world"]}, true],
  ["equals array fail order", {"tags": ["hello", "world"]}, {"tags": ["world", "hello"]}, false],
  ["equals array fail type", {"tags": ["hello", "world"]}, {"tags": "hello world"}, false],
  ["equals object pass", {"tags": {"hello": "world"}}, {"tags": {"hello": "world"}}, true],
  ["equals object fail extra", {"tags": {"hello": "world"}}, {"tags": {"hello": "world", "yes": "please"}}, false],
  ["mixed keys object is a literal", {"a": {"$gt": 1, "b": 2}}, {"a": {"$gt": 1, "b": 2}}, true],
  ["string literal on a one-element array", {"tags": "x"}, {"tags": ["x"]}, true],
  ["string literal on a longer array", {"tags": "x"}, {"tags": ["x", "y"]}, false],
  ["string literal matches a number", {"id": "123"}, {"id": 123}, true],
  ["number literal matches a numeric string", {"n": 5}, {"n": "5"}, true],
  ["number literal 0 matches a missing attribute", {"n": 0}, {}, true],
  ["boolean literal uses truthiness", {"premium": true}, {"premium": 1}, true],
  ["boolean false does not match missing", {"premium": false}, {}, false],
  ["null condition null attribute", {"userId": null}, {"userId": null}, true],
  ["null condition missing attribute", {"userId": null}, {}, true],
  ["null condition string attribute", {"userId": null}, {"userId": "123"}, false],
  ["null condition zero attribute", {"userId": null}, {"userId": 0}, false],
  ["$vgt/$vlt pass major", {"version": {"$vgt": "9.99.8", "$vlt": "11.0.1"}}, {"version": "10.12.13"}, true],
  ["$vgt/$vlt pass minor", {"version": {"$vgt": "10.2.11", "$vlt": "10.20.11"}}, {"version": "10.12.11"}, true],
  ["$vgt/$vlt fail $vlt patch", {"version": {"$vgt": "10.2.30", "$vlt": "10.2.50"}}, {"version": "10.2.60"}, false],
  ["$vgt/$vlt fail $vgt patch", {"version": {"$vgt": "10.30.10", "$vlt": "10.30.20"}}, {"version": "10.30.2"}, false],
  ["$vgte/$vlte pass $vgte", {"version": {"$vgte": "30.1.2", "$vlte": "60.1.2"}}, {"version": "30.1.2"}, true],
  ["$vgte/$vlte pass $vlte", {"version": {"$vgte": "1.2.30", "$vlte": "1.2.60"}}, {"version": "1.2.60"}, true],
  ["$vgte/$vlte fail $vlte", {"version": {"$vgte": "30.1.2", "$vlte": "60.1.2"}}, {"version": "61.1.2"}, false],
  ["$vgte fail", {"version": {"$vgte": "1.2.30"}}, {"version": "1.2.29"}, false],
  ["$vgt/$vlt prerelease fail $vgt", {"v": {"$vgt": "1.0.0-alpha", "$vlt": "1.0.0-beta"}}, {"v": "1.0.0-alpha"}, false],
  ["$vgt/$vlt prerelease pass", {"v": {"$vgt": "1.0.0-alpha", "$vlt": "1.0.0-beta"}}, {"v": "1.0.0-alpha.10"}, true],
  ["$vgt/$vlt prerelease fail uppercase", {"v": {"$vgt": "1.0.0-alpha", "$vlt": "1.0.0-beta"}}, {"v": "1.0.0-ALPHA"}, false],
  ["$veq pass", {"v": {"$veq": "1.2.3"}}, {"v": "1.2.3"}, true],
  ["$veq pass with build", {"v": {"$veq": "1.2.3"}}, {"v": "1.2.3+build.abc.123"}, true],
  ["$vne pass", {"v": {"$vne": "1.2.3"}}, {"v": "2.2.3"}, true],
  ["$vne pass prerelease", {"v": {"$vne": "1.2.3"}}, {"v": "1.2.3-alpha"}, true],
  ["$vne fail", {"v": {"$vne": "1.2.3"}}, {"v": "v1.2.3"}, false],
  ["$vlt pass", {"v": {"$vlt": "2.0.0"}}, {"v": "1.99.0"}, true],
  ["$vlte fail", {"v": {"$vlte": "2.0.0"}}, {"v": "2.0.1"}, false],
  ["$vgte missing attribute is version 0", {"v": {"$vgte": "0.0.1"}}, {}, false],
  ["$vgt numeric attribute", {"v": {"$vgt": "1.9"}}, {"v": 2}, true]
]"#;

#[test]
fn growthbook_condition_cases() {
    let cases: Vec<(String, Value, Value, bool)> = serde_json::from_str(CASES).expect("cases");
    assert!(cases.len() > 100);
    let mut failures = Vec::new();
    for (name, condition, attributes, expected) in cases {
        if matches(condition, attributes) != expected {
            failures.push(name);
        }
    }
    assert!(failures.is_empty(), "failing cases: {failures:#?}");
}

#[test]
fn every_operator_is_covered_by_a_case() {
    let operators = [
        "$eq",
        "$ne",
        "$gt",
        "$gte",
        "$lt",
        "$lte",
        "$in",
        "$nin",
        "$ini",
        "$nini",
        "$exists",
        "$regex",
        "$regexi",
        "$and",
        "$or",
        "$nor",
        "$not",
        "$all",
        "$alli",
        "$elemMatch",
        "$size",
        "$type",
        "$veq",
        "$vne",
        "$vgt",
        "$vgte",
        "$vlt",
        "$vlte",
    ];
    for op in operators {
        assert!(CASES.contains(&format!("\"{op}\"")), "no case uses {op}");
    }
}

fn compile_error(condition: Value) -> ConditionError {
    Condition::compile(&condition).expect_err("condition should not compile")
}

#[test]
fn unknown_operators_are_refused_with_their_location() {
    let err = compile_error(json!({"name": {"$regx": "hello"}}));
    assert_eq!(err.reason, "unknown operator \"$regx\"");
    assert_eq!(err.at, "name.$regx");
    let err = compile_error(json!({"$or": [{"a": 1}, {"b": {"$foo": 1}}]}));
    assert_eq!(err.at, "$or[1].b.$foo");
    assert_eq!(
        err.to_string(),
        "unknown operator \"$foo\" (at $or[1].b.$foo)"
    );
    assert!(
        compile_error(json!({"g": {"$inGroup": "beta"}}))
            .reason
            .contains("saved groups")
    );
}

#[test]
fn malformed_operator_arguments_are_refused() {
    let cases = [
        (json!({"n": {"$in": 1}}), "$in takes an array"),
        (json!({"n": {"$nin": "a"}}), "$nin takes an array"),
        (json!({"n": {"$all": {"a": 1}}}), "$all takes an array"),
        (
            json!({"n": {"$exists": "yes"}}),
            "$exists takes true or false",
        ),
        (json!({"n": {"$regex": 5}}), "$regex takes a string"),
        (
            json!({"n": {"$elemMatch": [1]}}),
            "$elemMatch takes an object",
        ),
        (json!({"n": {"$type": "int"}}), "$type takes one of"),
        (
            json!({"$and": {"a": 1}}),
            "expected an array of condition objects",
        ),
        (json!({"$or": ["a"]}), "expected a condition object"),
        (json!({"$not": [1]}), "$not takes a condition object"),
        (json!(["a"]), "a condition must be an object"),
    ];
    for (condition, reason) in cases {
        let err = compile_error(condition.clone());
        assert!(err.reason.starts_with(reason), "{condition}: {err}");
    }
}

#[test]
fn invalid_regexes_are_refused_at_compile_time() {
    let err = compile_error(json!({"name": {"$regex": "/???***[)"}}));
    assert!(err.reason.starts_with("invalid regex"), "{err}");
    // Look-around is JavaScript-only; refusing it beats silently never matching.
    assert!(Condition::compile(&json!({"a": {"$regex": "^(?!x)"}})).is_err());
    // An escaped slash, common in patterns written for JavaScript, is fine.
    assert!(matches(
        json!({"p": {"$regex": "^\\/checkout"}}),
        json!({"p": "/checkout/1"})
    ));
}

proptest! {
    #[test]
    fn evaluation_never_panics_on_arbitrary_attributes(
        key in prop::sample::select(vec!["a", "b", "tags"]),
        value in arb_json(),
    ) {
        let condition = json!({"$or": [
            {"a": {"$gt": 1, "$regex": "x", "$vgte": "1.0.0", "$size": 2}},
            {"b": {"$in": ["x", 1, null], "$all": ["x"], "$elemMatch": {"c": 1}}},
            {"tags": "x", "tags.0": {"$exists": true}},
            {"$nor": [{"a": {"$type": "array"}}], "$not": {"b": [1]}},
        ]});
        let compiled = Condition::compile(&condition).expect("compiles");
        let mut attrs = Map::new();
        attrs.insert(key.to_owned(), value);
        let _ = compiled.matches(&attrs);
    }

    #[test]
    fn not_inverts_any_condition(value in arb_json()) {
        let inner = json!({"a": {"$gt": 3}});
        let mut attrs = Map::new();
        attrs.insert("a".to_owned(), value);
        let plain = Condition::compile(&inner).expect("compiles").matches(&attrs);
        let negated = Condition::compile(&json!({"$not": inner})).expect("compiles").matches(&attrs);
        prop_assert_ne!(plain, negated);
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z0-9.\\-]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
