//! Profile parsing and validation.

use super::*;

const MINIMAL: &str = r#"
    [gateway]
    url = "http://127.0.0.1:8080"
    [experiment]
    key = "checkout_button"
    weights = { control = 0.5, treatment = 0.5 }
    [target]
    url = "http://127.0.0.1:8090/"
    [load]
    users = 4
    rate = 100
"#;

fn field_of(err: ProfileError) -> &'static str {
    match err {
        ProfileError::Invalid { field, .. } => field,
        other => panic!("expected a field error, got {other}"),
    }
}

#[test]
fn minimal_profile_gets_defaults() {
    let p = Profile::parse(MINIMAL, "mini").unwrap();
    assert_eq!(p.name, "mini");
    assert_eq!(p.variants, vec!["control", "treatment"]);
    assert_eq!(p.target.urls, vec!["http://127.0.0.1:8090"; 2]);
    assert_eq!(p.events_key, "checkout_button");
    assert!(p.resources.is_none());
    assert_eq!(p.target.variant_key, "x-variant");
    assert!((p.load.rate_per_user - 25.0).abs() < 1e-9);
    assert_eq!(p.verdict.endpoints, vec![Endpoint::Target]);
    assert_eq!(p.verdict.margins.len(), 3);
}

#[test]
fn control_comes_first_whatever_its_name() {
    let text = MINIMAL.replace(
        "weights = { control = 0.5, treatment = 0.5 }",
        "control = \"b\"\nweights = { a = 0.25, b = 0.5, c = 0.25 }",
    );
    let p = Profile::parse(&text, "x").unwrap();
    assert_eq!(p.variants, vec!["b", "a", "c"]);
    assert_eq!(p.weights, vec![0.5, 0.25, 0.25]);
}

#[test]
fn unknown_fields_are_refused_with_their_name() {
    let text = MINIMAL.replace("users = 4", "users = 4\nuser = 5");
    let err = Profile::parse(&text, "x").unwrap_err().to_string();
    assert!(err.contains("unknown field `user`"), "{err}");
}

#[test]
fn errors_name_the_field() {
    let cases = [
        ("rate = 100", "rate = -1", "load.rate"),
        ("users = 4", "users = 0", "load.users"),
        (
            "control = 0.5, treatment = 0.5",
            "control = 0.5, treatment = 0.6",
            "experiment.weights",
        ),
        (
            "url = \"http://127.0.0.1:8090/\"",
            "url = \"127.0.0.1:8090\"",
            "target.url",
        ),
        ("[load]", "[verdict]\nalpha = 0.9\n[load]", "verdict.alpha"),
        (
            "[load]",
            "[verdict]\nmargins = { p50 = -1, p95 = 0, p99 = 0 }\n[load]",
            "verdict.margins.p50",
        ),
    ];
    for (from, to, field) in cases {
        let text = MINIMAL.replace(from, to);
        assert_eq!(
            field_of(Profile::parse(&text, "x").unwrap_err()),
            field,
            "{to}"
        );
    }
}

#[test]
fn path_mode_needs_the_placeholder() {
    let text = MINIMAL.replace(
        "url = \"http://127.0.0.1:8090/\"",
        "url = \"http://127.0.0.1:8090\"\nvariant_in = \"path\"\npath = \"/checkout\"",
    );
    assert_eq!(
        field_of(Profile::parse(&text, "x").unwrap_err()),
        "target.path"
    );
}

#[test]
fn overrides_replace_urls_and_duration() {
    let p = Profile::parse(MINIMAL, "x").unwrap();
    let p = p
        .with_overrides(&Overrides {
            gateway: Some("http://127.0.0.1:9".into()),
            duration_seconds: Some(3),
            ..Overrides::default()
        })
        .unwrap();
    assert_eq!(p.gateway_url, "http://127.0.0.1:9");
    assert_eq!(p.load.shape.total(), Duration::from_secs(4));
}

#[test]
fn stages_scale_to_an_overridden_duration() {
    let text = MINIMAL.replace(
        "users = 4",
        "stages = [{ users = 2, seconds = 10 }, { users = 8, seconds = 10 }]",
    );
    let p = Profile::parse(&text, "x").unwrap();
    assert!((p.load.rate_per_user - 12.5).abs() < 1e-9);
    // Ramp 0 -> 2 over 10 s (mean 1), then 2 -> 8 over 10 s (mean 5).
    assert!((p.load.shape.mean_users() - 3.0).abs() < 1e-9);
    let p = p
        .with_overrides(&Overrides {
            duration_seconds: Some(4),
            ..Overrides::default()
        })
        .unwrap();
    assert_eq!(p.load.shape.total(), Duration::from_secs(4));
}

#[test]
fn shipped_profiles_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadtests");
    for name in ["smoke", "launch", "soak", "spike"] {
        let p = Profile::load(&dir.join(format!("{name}.toml")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.experiment, "checkout_button");
        assert_eq!(p.variants, vec!["control", "treatment"]);
    }
}

#[test]
fn variants_can_have_their_own_deployments_and_metrics() {
    let text = MINIMAL.replace(
        "[load]",
        "urls = { treatment = \"http://127.0.0.1:8091/\" }\n[resources]\ncpu_metric = 'cpu_total{pod=\"a\"}'\n[load]",
    );
    let p = Profile::parse(&text, "x").unwrap();
    assert_eq!(
        p.target.urls,
        ["http://127.0.0.1:8090", "http://127.0.0.1:8091"]
    );
    let r = p.resources.as_ref().unwrap();
    assert_eq!(
        r.metrics_urls,
        [
            "http://127.0.0.1:8090/metrics",
            "http://127.0.0.1:8091/metrics"
        ]
    );
    assert_eq!(r.cpu.labels, vec![("pod".to_string(), "a".to_string())]);
    assert_eq!(r.memory.name, "process_resident_memory_bytes");
    // Overrides move the deployments, and the metrics with them.
    let o = Overrides {
        target: Some("http://127.0.0.1:9000".into()),
        variant_urls: vec![("treatment".into(), "http://127.0.0.1:9001".into())],
        ..Overrides::default()
    };
    let p = p.with_overrides(&o).unwrap();
    assert_eq!(
        p.resources.unwrap().metrics_urls,
        [
            "http://127.0.0.1:9000/metrics",
            "http://127.0.0.1:9001/metrics"
        ]
    );
}

#[test]
fn resources_need_one_deployment_per_variant() {
    let text = MINIMAL.replace("[load]", "[resources]\n[load]");
    let p = Profile::parse(&text, "x").unwrap();
    let err = p.clone().with_overrides(&Overrides::default()).unwrap_err();
    assert_eq!(field_of(err), "resources");
    let o = Overrides {
        variant_urls: vec![("treatment".into(), "http://127.0.0.1:8091".into())],
        ..Overrides::default()
    };
    assert!(p.with_overrides(&o).is_ok());
    let text = MINIMAL.replace("[load]", "urls = { nope = \"http://127.0.0.1:1\" }\n[load]");
    assert_eq!(
        field_of(Profile::parse(&text, "x").unwrap_err()),
        "target.urls"
    );
    let o = Overrides {
        variant_urls: vec![("nope".into(), "http://127.0.0.1:1".into())],
        ..Overrides::default()
    };
    let p = Profile::parse(MINIMAL, "x").unwrap();
    assert_eq!(field_of(p.with_overrides(&o).unwrap_err()), "target.urls");
}

#[test]
fn events_can_carry_a_dedicated_experiment_key() {
    let text = MINIMAL.replace(
        "key = \"checkout_button\"",
        "key = \"checkout_button\"\nevents_key = \"checkout_button_loadtest\"",
    );
    let p = Profile::parse(&text, "x").unwrap();
    assert_eq!(p.experiment, "checkout_button");
    assert_eq!(p.events_key, "checkout_button_loadtest");
}
