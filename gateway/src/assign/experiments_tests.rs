//! Tests for parsing and validating experiments files: every refusal names the experiment and
//! the field.

use super::*;
use serde_json::json;

const EXAMPLE: &str = include_str!("../../experiments.example.json");

fn parse_json(doc: Value) -> Result<Experiments, ConfigError> {
    Experiments::parse(&doc.to_string(), FileFormat::Json)
}

/// A file with one valid experiment `exp`, with `patch`'s fields added or replaced.
fn one(patch: Value) -> Result<Experiments, ConfigError> {
    let mut exp = json!({"key": "exp", "variants": ["control", "treatment"]});
    for (k, v) in patch.as_object().expect("patch is an object") {
        exp[k] = v.clone();
    }
    parse_json(json!({ "experiments": [exp] }))
}

/// Asserts the error is about `experiment` and `field`, and its message contains `needle`.
#[track_caller]
fn assert_invalid(
    result: Result<Experiments, ConfigError>,
    experiment: ExperimentRef,
    field: &str,
    needle: &str,
) {
    let err = result.expect_err("the file should be refused");
    let message = err.to_string();
    assert_eq!(err.experiment(), Some(&experiment), "{message}");
    assert_eq!(err.field(), Some(field), "{message}");
    assert!(
        message.contains(needle),
        "{message:?} should contain {needle:?}"
    );
}

fn key(k: &str) -> ExperimentRef {
    ExperimentRef::Key(k.to_owned())
}

#[test]
fn the_example_file_is_valid_and_has_checkout_button() {
    let exps = Experiments::parse(EXAMPLE, FileFormat::Json).expect("example parses");
    assert!(exps.contains("checkout_button"));
    let variants: Vec<&str> = exps.variants("checkout_button").expect("exists").collect();
    assert_eq!(variants, ["control", "treatment"]);
    let exp = &exps.list[exps.position("checkout_button").expect("exists")];
    assert_eq!(exp.ranges, [(0.0, 0.5), (0.5, 1.0)]);
    assert_eq!(exp.status, Status::Running);
    assert!(exp.condition.is_none());
    assert_eq!(&*exp.hash_attribute, "user_id");
    assert!(exps.len() >= 8);
}

#[test]
fn keys_come_in_file_order() {
    let exps = parse_json(json!({"experiments": [
        {"key": "b", "variants": ["x", "y"]},
        {"key": "a", "variants": ["x", "y"]},
        {"key": "c", "variants": ["x", "y"]},
    ]}))
    .expect("valid");
    assert_eq!(exps.keys().collect::<Vec<_>>(), ["b", "a", "c"]);
    assert!(exps.contains("a") && !exps.contains("d"));
}

#[test]
fn defaults_are_applied() {
    let exps = one(json!({"variants": ["a", "b", "c"]})).expect("valid");
    let exp = &exps.list[0];
    assert_eq!(&*exp.seed, "exp");
    assert_eq!(&*exp.hash_attribute, "user_id");
    assert_eq!(exp.status, Status::Running);
    assert_eq!(exp.fallback, 0);
    assert_eq!(exp.ranges.len(), 3);
    assert!(
        (exp.ranges[2].1 - 1.0).abs() < 1e-12,
        "coverage defaults to 1"
    );
}

#[test]
fn version_is_a_hash_of_the_exact_text() {
    let a = Experiments::parse(EXAMPLE, FileFormat::Json).expect("valid");
    let b = Experiments::parse(EXAMPLE, FileFormat::Json).expect("valid");
    assert_eq!(a.version(), b.version());
    assert_eq!(a.version().len(), 16);
    assert!(a.version().bytes().all(|c| c.is_ascii_hexdigit()));
    let reformatted = format!("{EXAMPLE}\n");
    let c = Experiments::parse(&reformatted, FileFormat::Json).expect("valid");
    assert_ne!(a.version(), c.version());
    assert_eq!(a.version(), config_version_of(EXAMPLE));
}

fn config_version_of(text: &str) -> String {
    super::hash::config_version(text.as_bytes())
}

#[test]
fn toml_files_are_accepted() {
    let text = r#"
        [[experiments]]
        key = "checkout_button"
        variants = ["control", "treatment"]
        weights = [0.5, 0.5]
        coverage = 1
        status = "running"

        [[experiments]]
        key = "new_onboarding"
        variants = ["control", "short_form"]
        start = 2025-01-01T00:00:00Z
        condition = { app_version = { "$vgte" = "2.3.0" } }
        layer = { name = "onboarding", range = [0.0, 0.5] }
        prerequisites = [{ experiment = "checkout_button", variants = ["treatment"] }]
    "#;
    let exps = Experiments::parse(text, FileFormat::Toml).expect("valid TOML");
    assert_eq!(
        exps.keys().collect::<Vec<_>>(),
        ["checkout_button", "new_onboarding"]
    );
    let exp = &exps.list[1];
    assert_eq!(
        exp.start.map(|t| t.to_rfc3339()),
        Some("2025-01-01T00:00:00+00:00".to_owned())
    );
    assert!(exp.condition.is_some());
    assert_eq!(exp.prerequisites[0].experiment, 0);
    assert_eq!(exp.prerequisites[0].variants, [1]);
}

#[test]
fn file_format_follows_the_extension() {
    assert_eq!(
        FileFormat::from_path(Path::new("a/x.json")).ok(),
        Some(FileFormat::Json)
    );
    assert_eq!(
        FileFormat::from_path(Path::new("x.TOML")).ok(),
        Some(FileFormat::Toml)
    );
    assert!(matches!(
        FileFormat::from_path(Path::new("x.yaml")),
        Err(ConfigError::UnsupportedFormat { .. })
    ));
}

#[test]
fn load_reads_a_file_and_reports_missing_ones() {
    let dir = std::env::temp_dir().join(format!("assign-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("experiments.json");
    std::fs::write(&path, EXAMPLE).expect("write");
    let exps = Experiments::load(&path).expect("loads");
    assert_eq!(exps.version(), config_version_of(EXAMPLE));
    let missing = Experiments::load(&dir.join("nope.json")).expect_err("missing file");
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn syntax_and_structure_errors() {
    let err = Experiments::parse("{\"experiments\": [", FileFormat::Json).expect_err("bad JSON");
    assert!(
        matches!(
            err,
            ConfigError::Syntax {
                format: FileFormat::Json,
                ..
            }
        ),
        "{err}"
    );
    let err = Experiments::parse("experiments = [", FileFormat::Toml).expect_err("bad TOML");
    assert!(
        matches!(
            err,
            ConfigError::Syntax {
                format: FileFormat::Toml,
                ..
            }
        ),
        "{err}"
    );
    let err = parse_json(json!({"experiment": []})).expect_err("wrong top-level key");
    assert!(matches!(err, ConfigError::Structure { .. }), "{err}");
    assert!(err.to_string().contains("experiment"), "{err}");
    let err = parse_json(json!({"experiments": [1]})).expect_err("not an object");
    assert_eq!(err.experiment(), Some(&ExperimentRef::Position(1)));
}

#[test]
fn the_key_must_be_present_unique_and_non_empty() {
    let missing = parse_json(json!({"experiments": [{"variants": ["a", "b"]}]}));
    assert_invalid(missing, ExperimentRef::Position(1), "key", "missing");
    let empty = parse_json(json!({"experiments": [{"key": " ", "variants": ["a", "b"]}]}));
    assert_invalid(empty, ExperimentRef::Position(1), "key", "empty");
    let duplicate = parse_json(json!({"experiments": [
        {"key": "x", "variants": ["a", "b"]},
        {"key": "y", "variants": ["a", "b"]},
        {"key": "x", "variants": ["a", "b"]},
    ]}));
    assert_invalid(
        duplicate,
        ExperimentRef::Position(3),
        "key",
        "already the key of experiment #1",
    );
}

#[test]
fn unknown_and_mistyped_fields_are_named() {
    assert_invalid(
        one(json!({"colour": "red"})),
        key("exp"),
        "colour",
        "unknown field",
    );
    assert_invalid(
        one(json!({"coverage": "half"})),
        key("exp"),
        "coverage",
        "invalid type",
    );
    assert_invalid(
        one(json!({"status": "paused"})),
        key("exp"),
        "status",
        "unknown variant",
    );
    assert_invalid(
        one(json!({"layer": {"name": "l"}})),
        key("exp"),
        "layer",
        "range",
    );
    assert_invalid(
        parse_json(json!({"experiments": [{"key": "exp"}]})),
        key("exp"),
        "variants",
        "missing",
    );
}

#[test]
fn variants_need_two_distinct_names() {
    assert_invalid(
        one(json!({"variants": ["only"]})),
        key("exp"),
        "variants",
        "needs at least 2",
    );
    assert_invalid(
        one(json!({"variants": ["a", "a"]})),
        key("exp"),
        "variants",
        "\"a\" is listed twice",
    );
    assert_invalid(
        one(json!({"variants": ["a", ""]})),
        key("exp"),
        "variants",
        "variant #2 is empty",
    );
}

#[test]
fn weights_must_match_variants_and_sum_to_one() {
    let short = one(json!({"weights": [1.0]}));
    assert_invalid(short, key("exp"), "weights", "has 1 weights for 2 variants");
    let negative = one(json!({"weights": [-0.5, 1.5]}));
    assert_invalid(negative, key("exp"), "weights", "negative");
    let err = one(json!({"weights": [0.3, 0.6]})).expect_err("sum 0.9");
    assert_eq!(
        err.to_string(),
        "experiment \"exp\": field \"weights\": sum to 0.9, must be 1 (within 0.01)"
    );
    assert!(one(json!({"weights": [0.333, 0.667]})).is_ok());
    assert!(
        one(json!({"weights": [0.5, 0.505]})).is_ok(),
        "within 0.01 is accepted"
    );
}

#[test]
fn coverage_must_be_a_share() {
    assert_invalid(
        one(json!({"coverage": 1.5})),
        key("exp"),
        "coverage",
        "between 0 and 1",
    );
    assert_invalid(
        one(json!({"coverage": -0.1})),
        key("exp"),
        "coverage",
        "between 0 and 1",
    );
    assert!(one(json!({"coverage": 0})).is_ok());
}

#[test]
fn seed_and_hash_attribute_must_not_be_empty() {
    assert_invalid(
        one(json!({"seed": ""})),
        key("exp"),
        "seed",
        "must not be empty",
    );
    assert_invalid(
        one(json!({"hash_attribute": ""})),
        key("exp"),
        "hash_attribute",
        "must not be empty",
    );
}

#[test]
fn hash_version_is_1_or_2_and_defaults_to_2() {
    let version = |patch| {
        let exps = one(patch).expect("valid");
        exps.list[0].hash_version
    };
    assert_eq!(version(json!({})), HashVersion::V2);
    assert_eq!(version(json!({"hash_version": 1})), HashVersion::V1);
    assert_eq!(version(json!({"hash_version": 2})), HashVersion::V2);
    assert_invalid(
        one(json!({"hash_version": 3})),
        key("exp"),
        "hash_version",
        "must be 1 or 2",
    );
}

#[test]
fn fallback_and_forced_must_name_variants() {
    assert_invalid(
        one(json!({"fallback": "blue"})),
        key("exp"),
        "fallback",
        "\"blue\" is not one of the variants",
    );
    assert_invalid(
        one(json!({"forced": {"u1": "blue"}})),
        key("exp"),
        "forced",
        "\"blue\" is not one of the variants",
    );
    assert_invalid(
        one(json!({"forced": {"": "control"}})),
        key("exp"),
        "forced",
        "unit id is empty",
    );
    let ok = one(json!({"status": "killed", "fallback": "treatment", "forced": {"u1": "control"}}));
    assert_eq!(ok.expect("valid").list[0].fallback, 1);
}

#[test]
fn conditions_must_compile() {
    let err = one(json!({"condition": {"country": {"$regx": "US"}}})).expect_err("unknown op");
    assert_eq!(
        err.to_string(),
        "experiment \"exp\": field \"condition\": unknown operator \"$regx\" (at country.$regx)"
    );
    assert_invalid(
        one(json!({"condition": {"ua": {"$regex": "("}}})),
        key("exp"),
        "condition",
        "invalid regex",
    );
    assert_invalid(
        one(json!({"condition": "US"})),
        key("exp"),
        "condition",
        "must be an object",
    );
}

#[test]
fn start_and_end_must_be_times_in_order() {
    assert_invalid(
        one(json!({"start": "yesterday"})),
        key("exp"),
        "start",
        "not an RFC 3339 time",
    );
    assert_invalid(
        one(json!({"end": "2025-13-01T00:00:00Z"})),
        key("exp"),
        "end",
        "not an RFC 3339 time",
    );
    let reversed = one(json!({"start": "2025-02-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"}));
    assert_invalid(reversed, key("exp"), "end", "is not after start");
    let equal = one(json!({"start": "2025-01-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"}));
    assert_invalid(equal, key("exp"), "end", "is not after start");
    assert!(
        one(json!({"start": "2025-01-01T00:00:00+02:00", "end": "2025-01-02T00:00:00Z"})).is_ok()
    );
}

#[test]
fn layer_ranges_must_be_within_the_unit_interval() {
    for range in [
        json!([0.5, 0.5]),
        json!([0.6, 0.4]),
        json!([-0.1, 0.5]),
        json!([0.5, 1.1]),
    ] {
        let result = one(json!({"layer": {"name": "l", "range": range}}));
        assert_invalid(result, key("exp"), "layer.range", "0 <= start < end <= 1");
    }
    assert_invalid(
        one(json!({"layer": {"name": "", "range": [0, 1]}})),
        key("exp"),
        "layer.name",
        "empty",
    );
}

#[test]
fn overlapping_layer_ranges_name_both_experiments() {
    let doc = json!({"experiments": [
        {"key": "a", "variants": ["x", "y"], "layer": {"name": "checkout", "range": [0.0, 0.5]}},
        {"key": "other", "variants": ["x", "y"], "layer": {"name": "search", "range": [0.2, 0.9]}},
        {"key": "b", "variants": ["x", "y"], "layer": {"name": "checkout", "range": [0.4, 1.0]}},
    ]});
    let err = parse_json(doc).expect_err("overlap");
    assert_eq!(
        err.to_string(),
        "experiment \"b\": field \"layer.range\": [0.4, 1) overlaps experiment \"a\"'s [0, 0.5) in layer \"checkout\""
    );
    let touching = json!({"experiments": [
        {"key": "a", "variants": ["x", "y"], "layer": {"name": "checkout", "range": [0.0, 0.5]}},
        {"key": "b", "variants": ["x", "y"], "layer": {"name": "checkout", "range": [0.5, 1.0]}},
    ]});
    assert!(
        parse_json(touching).is_ok(),
        "half-open ranges that touch do not overlap"
    );
}

#[test]
fn a_layer_has_one_hash_attribute() {
    let doc = json!({"experiments": [
        {"key": "a", "variants": ["x", "y"], "layer": {"name": "l", "range": [0.0, 0.5]}},
        {"key": "b", "variants": ["x", "y"], "hash_attribute": "device_id", "layer": {"name": "l", "range": [0.5, 1.0]}},
    ]});
    assert_invalid(parse_json(doc), key("b"), "hash_attribute", "same layer");
}

#[test]
fn prerequisites_must_resolve() {
    let missing = one(json!({"prerequisites": [{"experiment": "nope", "variants": ["a"]}]}));
    assert_invalid(
        missing,
        key("exp"),
        "prerequisites",
        "experiment \"nope\" does not exist",
    );
    let doc = json!({"experiments": [
        {"key": "parent", "variants": ["a", "b"]},
        {"key": "child", "variants": ["x", "y"], "prerequisites": [{"experiment": "parent", "variants": ["c"]}]},
    ]});
    assert_invalid(
        parse_json(doc),
        key("child"),
        "prerequisites",
        "experiment \"parent\" has no variant \"c\"",
    );
    let empty = one(json!({"prerequisites": [{"experiment": "exp", "variants": []}]}));
    assert_invalid(empty, key("exp"), "prerequisites", "lists no variants");
}

#[test]
fn prerequisite_cycles_are_named() {
    let self_loop = one(json!({"prerequisites": [{"experiment": "exp", "variants": ["control"]}]}));
    assert_invalid(self_loop, key("exp"), "prerequisites", "cycle: exp -> exp");
    let doc = json!({"experiments": [
        {"key": "a", "variants": ["x", "y"], "prerequisites": [{"experiment": "b", "variants": ["x"]}]},
        {"key": "b", "variants": ["x", "y"], "prerequisites": [{"experiment": "c", "variants": ["x"]}]},
        {"key": "c", "variants": ["x", "y"], "prerequisites": [{"experiment": "a", "variants": ["y"]}]},
        {"key": "d", "variants": ["x", "y"], "prerequisites": [{"experiment": "a", "variants": ["y"]}]},
    ]});
    let err = parse_json(doc).expect_err("cycle");
    assert!(err.to_string().contains("cycle: a -> b -> c -> a"), "{err}");
    let chain = json!({"experiments": [
        {"key": "a", "variants": ["x", "y"]},
        {"key": "b", "variants": ["x", "y"], "prerequisites": [{"experiment": "a", "variants": ["x"]}]},
        {"key": "c", "variants": ["x", "y"], "prerequisites": [
            {"experiment": "a", "variants": ["x"]}, {"experiment": "b", "variants": ["y"]}
        ]},
    ]});
    assert!(parse_json(chain).is_ok(), "a diamond is not a cycle");
}

#[test]
fn experiments_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Experiments>();
    assert_send_sync::<ConfigError>();
}
