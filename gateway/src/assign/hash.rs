//! GrowthBook-compatible hashing and bucketing.
//!
//! Everything here must give bit-for-bit the same answers as GrowthBook's SDKs (`hashFnv32a`,
//! `hash`, `inNamespace`, `getBucketRanges`, `chooseVariation` in the JS SDK's `util.ts`), so
//! that a unit assigned by the gateway and a unit assigned client-side by an SDK land in the same
//! variant. The test vectors below are GrowthBook's own (its SDK spec `cases.json`).
//!
//! Invariants:
//! - FNV-1a runs over UTF-16 code units (what JavaScript's `charCodeAt` sees), not UTF-8 bytes.
//! - Nothing here allocates: concatenations such as `seed + value` are hashed piecewise.
//! - [`config_version`] is the only non-GrowthBook hash; it names a file's bytes, nothing else.

const FNV32_OFFSET: u32 = 0x811c_9dc5;
const FNV32_PRIME: u32 = 0x0100_0193;
const FNV64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Streaming 32-bit FNV-1a over UTF-16 code units, so `a + b` can be hashed without building it.
#[derive(Clone, Copy)]
struct Fnv32(u32);

impl Fnv32 {
    fn new() -> Self {
        Self(FNV32_OFFSET)
    }

    fn unit(self, unit: u16) -> Self {
        Self((self.0 ^ u32::from(unit)).wrapping_mul(FNV32_PRIME))
    }

    fn str(self, s: &str) -> Self {
        // ASCII bytes are their own UTF-16 code units; skip UTF-8 decoding for the common case.
        if s.is_ascii() {
            s.bytes().fold(self, |h, b| h.unit(u16::from(b)))
        } else {
            s.encode_utf16().fold(self, Self::unit)
        }
    }
}

/// 32-bit FNV-1a of `s` over its UTF-16 code units (GrowthBook's `hashFnv32a`).
pub fn fnv1a32(s: &str) -> u32 {
    Fnv32::new().str(s).0
}

/// GrowthBook hash version 2: `(fnv1a32(decimal(fnv1a32(seed + value))) % 10000) / 10000`.
///
/// The result is in `[0, 1)` with a resolution of 0.0001. The double hashing removes the
/// correlation version 1 has between experiments whose seeds share a suffix.
pub fn hash_v2(seed: &str, value: &str) -> f64 {
    let inner = Fnv32::new().str(seed).str(value).0;
    let mut digits = [0u8; 10];
    let start = decimal_digits(inner, &mut digits);
    let outer = digits[start..]
        .iter()
        .fold(Fnv32::new(), |h, &d| h.unit(u16::from(d)))
        .0;
    f64::from(outer % 10_000) / 10_000.0
}

/// GrowthBook hash version 1: `(fnv1a32(value + seed) % 1000) / 1000`.
///
/// Note the order: the value comes first. Experiments with `hash_version: 1` (GrowthBook's
/// legacy experiments) hash with it; GrowthBook's namespaces (our layers) always do, through
/// [`namespace_hash`].
pub fn hash_v1(seed: &str, value: &str) -> f64 {
    let h = Fnv32::new().str(value).str(seed).0;
    f64::from(h % 1_000) / 1_000.0
}

/// The position of a unit in a layer (GrowthBook namespace): `hash_v1("__" + name, unit_id)`,
/// that is `(fnv1a32(unit_id + "__" + name) % 1000) / 1000`.
pub fn namespace_hash(unit_id: &str, layer: &str) -> f64 {
    let h = Fnv32::new().str(unit_id).str("__").str(layer).0;
    f64::from(h % 1_000) / 1_000.0
}

/// GrowthBook's `inNamespace`: whether the unit's [`namespace_hash`] falls in `[start, end)`.
pub fn in_namespace(unit_id: &str, layer: &str, range: (f64, f64)) -> bool {
    let n = namespace_hash(unit_id, layer);
    n >= range.0 && n < range.1
}

/// GrowthBook's `getBucketRanges`: variant `i` owns `[s_i, s_i + coverage * w_i)` where `s_i`
/// is the sum of the weights before it.
///
/// Mirrors the SDK's leniency for direct callers: coverage is clamped to `[0, 1]`, and weights
/// that are missing, of the wrong length, or not summing to 1 within 0.01 are replaced by equal
/// weights. (A validated [`Experiments`](super::Experiments) never relies on that.) Because each
/// range starts at `s_i` whatever the coverage, raising the coverage only ever extends ranges:
/// a unit never moves from one variant to another.
pub fn bucket_ranges(variants: usize, coverage: f64, weights: Option<&[f64]>) -> Vec<(f64, f64)> {
    let coverage = coverage.clamp(0.0, 1.0);
    let equal = vec![1.0 / variants as f64; variants];
    let weights = match weights {
        Some(w) if w.len() == variants && weights_sum_ok(w) => w,
        _ => &equal,
    };
    let mut cumulative = 0.0;
    weights
        .iter()
        .map(|&w| {
            let start = cumulative;
            cumulative += w;
            (start, start + coverage * w)
        })
        .collect()
}

/// Whether weights add up to 1 within GrowthBook's tolerance (`0.99 <= sum <= 1.01`), summed
/// in the same order as the SDK so the same floating-point total comes out.
pub fn weights_sum_ok(weights: &[f64]) -> bool {
    let total: f64 = weights.iter().fold(0.0, |sum, w| sum + w);
    (0.99..=1.01).contains(&total)
}

/// GrowthBook's `chooseVariation`: the first range with `start <= n < end`, if any.
pub fn choose_variant(n: f64, ranges: &[(f64, f64)]) -> Option<usize> {
    ranges
        .iter()
        .position(|&(start, end)| n >= start && n < end)
}

/// `config_version`: the first 16 hex digits of a 64-bit FNV-1a over the file's bytes. Stable
/// across runs, platforms and releases; it identifies content, it is not a security hash.
pub fn config_version(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(FNV64_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV64_PRIME)
    });
    format!("{h:016x}")
}

/// Writes the decimal digits of `n` at the end of `buf`; returns where they start.
fn decimal_digits(mut n: u32, buf: &mut [u8; 10]) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return i;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv1a32_matches_the_reference_vectors() {
        // From the FNV reference test suite (ASCII, so UTF-16 units equal bytes).
        assert_eq!(fnv1a32(""), 0x811c_9dc5);
        assert_eq!(fnv1a32("a"), 0xe40c_292c);
        assert_eq!(fnv1a32("foobar"), 0xbf9c_f968);
    }

    #[test]
    fn fnv1a32_hashes_utf16_code_units_not_utf8_bytes() {
        let by_units = |units: &[u16]| {
            units.iter().fold(FNV32_OFFSET, |h, &u| {
                (h ^ u32::from(u)).wrapping_mul(FNV32_PRIME)
            })
        };
        // "é" is one UTF-16 unit (0x00E9) but two UTF-8 bytes.
        assert_eq!(fnv1a32("é"), by_units(&[0x00e9]));
        // "😀" is a surrogate pair in UTF-16, four bytes in UTF-8.
        assert_eq!(fnv1a32("😀"), by_units(&[0xd83d, 0xde00]));
        let utf8 = "é".bytes().fold(FNV32_OFFSET, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(FNV32_PRIME)
        });
        assert_ne!(fnv1a32("é"), utf8);
    }

    #[test]
    fn hash_v2_matches_growthbook_vectors() {
        // GrowthBook SDK spec cases.json "hash" (version 2) and experiment results using v2.
        let cases = [
            ("seed", "a", 0.0505),
            ("seed", "b", 0.2696),
            ("foo", "ab", 0.2575),
            ("foo", "def", 0.2019),
            ("89123klj", "8952klfjas09ujkasdf", 0.124),
            ("90850943850283058242805", "123", 0.7516),
            ("()**(%$##$%#$#", "___)((*\":&", 0.0128),
            ("feature", "123", 0.5231),
            ("feature-exp", "d123", 0.6468),
            ("feature-exp", "i123", 0.9943),
        ];
        for (seed, value, expected) in cases {
            assert_eq!(
                hash_v2(seed, value),
                expected,
                "hash_v2({seed:?}, {value:?})"
            );
        }
    }

    #[test]
    fn hash_v1_matches_growthbook_vectors() {
        let cases = [
            ("", "a", 0.22),
            ("", "b", 0.077),
            ("b", "a", 0.946),
            ("ef", "d", 0.652),
            ("asdf", "8952klfjas09ujk", 0.549),
            ("", "123", 0.011),
            ("", "___)((*\":&", 0.563),
            ("feature", "123", 0.863),
            ("feature", "456", 0.178),
            ("feature", "fds", 0.514),
        ];
        for (seed, value, expected) in cases {
            assert_eq!(
                hash_v1(seed, value),
                expected,
                "hash_v1({seed:?}, {value:?})"
            );
        }
    }

    #[test]
    fn in_namespace_matches_growthbook_vectors() {
        let cases = [
            ("1", "namespace1", (0.0, 0.4), false),
            ("1", "namespace1", (0.4, 1.0), true),
            ("1", "namespace2", (0.0, 0.4), false),
            ("1", "namespace2", (0.4, 1.0), true),
            ("2", "namespace1", (0.0, 0.4), false),
            ("2", "namespace1", (0.4, 1.0), true),
            ("2", "namespace2", (0.0, 0.4), false),
            ("2", "namespace2", (0.4, 1.0), true),
            ("3", "namespace1", (0.0, 0.4), false),
            ("3", "namespace1", (0.4, 1.0), true),
            ("3", "namespace2", (0.0, 0.4), true),
            ("3", "namespace2", (0.4, 1.0), false),
            ("4", "namespace1", (0.0, 0.4), false),
            ("4", "namespace1", (0.4, 1.0), true),
            ("4", "namespace2", (0.0, 0.4), true),
            ("4", "namespace2", (0.4, 1.0), false),
            // cases.json "run": user "1" in namespace ["namespace", 0.1, 1] but not [0, 0.1].
            ("1", "namespace", (0.1, 1.0), true),
            ("1", "namespace", (0.0, 0.1), false),
        ];
        for (unit, ns, range, expected) in cases {
            assert_eq!(
                in_namespace(unit, ns, range),
                expected,
                "{unit} in {ns} {range:?}"
            );
        }
        assert_eq!(
            namespace_hash("1", "namespace1"),
            hash_v1("__namespace1", "1")
        );
    }

    #[test]
    fn bucket_ranges_match_growthbook_vectors() {
        type Case<'a> = (usize, f64, Option<&'a [f64]>, &'a [(f64, f64)]);
        let cases: [Case; 13] = [
            (2, 1.0, None, &[(0.0, 0.5), (0.5, 1.0)]),
            (2, 0.5, None, &[(0.0, 0.25), (0.5, 0.75)]),
            (2, 0.0, None, &[(0.0, 0.0), (0.5, 0.5)]),
            (
                4,
                1.0,
                None,
                &[(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)],
            ),
            (2, 1.0, Some(&[0.4, 0.6]), &[(0.0, 0.4), (0.4, 1.0)]),
            (
                3,
                1.0,
                Some(&[0.2, 0.3, 0.5]),
                &[(0.0, 0.2), (0.2, 0.5), (0.5, 1.0)],
            ),
            (
                3,
                0.2,
                Some(&[0.2, 0.3, 0.5]),
                &[(0.0, 0.04), (0.2, 0.26), (0.5, 0.6)],
            ),
            (2, -0.2, None, &[(0.0, 0.0), (0.5, 0.5)]),
            (2, 1.5, None, &[(0.0, 0.5), (0.5, 1.0)]),
            (2, 1.0, Some(&[0.4, 0.1]), &[(0.0, 0.5), (0.5, 1.0)]),
            (2, 1.0, Some(&[0.7, 0.6]), &[(0.0, 0.5), (0.5, 1.0)]),
            (
                4,
                1.0,
                Some(&[0.4, 0.4, 0.2]),
                &[(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)],
            ),
            (2, 1.0, Some(&[0.4, 0.5999]), &[(0.0, 0.4), (0.4, 0.9999)]),
        ];
        for (n, coverage, weights, expected) in cases {
            let got = bucket_ranges(n, coverage, weights);
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(expected) {
                // The spec compares with toBeCloseTo; 0.2 * 0.3 + 0.2 is not exactly 0.26.
                assert!(
                    (g.0 - e.0).abs() < 1e-9 && (g.1 - e.1).abs() < 1e-9,
                    "{n} variants, coverage {coverage}, weights {weights:?}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn choose_variant_matches_growthbook_vectors() {
        let even = [(0.0, 0.5), (0.5, 1.0)];
        let reduced = [(0.0, 0.25), (0.5, 0.75)];
        let zero = [(0.0, 0.5), (0.5, 0.5), (0.5, 1.0)];
        type Ranges<'a> = &'a [(f64, f64)];
        let cases: [(f64, Ranges, Option<usize>); 13] = [
            (0.2, &even, Some(0)),
            (0.4, &even, Some(0)),
            (0.6, &even, Some(1)),
            (0.8, &even, Some(1)),
            (0.0, &even, Some(0)),
            (0.5, &even, Some(1)),
            (0.2, &reduced, Some(0)),
            (0.4, &reduced, None),
            (0.6, &reduced, Some(1)),
            (0.8, &reduced, None),
            (0.25, &reduced, None),
            (0.5, &reduced, Some(1)),
            (0.5, &zero, Some(2)),
        ];
        for (n, ranges, expected) in cases {
            assert_eq!(choose_variant(n, ranges), expected, "{n} in {ranges:?}");
        }
    }

    #[test]
    fn hash_then_bucket_reproduces_growthbook_run_cases() {
        // cases.json "run": key "my-test", default hashVersion 1 (seed = key), 50/50.
        let ranges = bucket_ranges(2, 1.0, None);
        let expected = [1, 0, 0, 1, 1, 1, 0, 1, 0];
        for (id, want) in (1..=9).zip(expected) {
            let n = hash_v1("my-test", &id.to_string());
            assert_eq!(choose_variant(n, &ranges), Some(want), "id {id}");
        }
        // "three way test" and "coverage 0.4".
        let three = bucket_ranges(3, 1.0, None);
        let expected = [2, 0, 0, 2, 1, 2, 0, 1, 0];
        for (id, want) in (1..=9).zip(expected) {
            let n = hash_v1("my-test", &id.to_string());
            assert_eq!(choose_variant(n, &three), Some(want), "id {id}");
        }
        let partial = bucket_ranges(2, 0.4, None);
        let expected = [
            None,
            Some(0),
            Some(0),
            None,
            Some(1),
            None,
            Some(0),
            Some(1),
            None,
        ];
        for (id, want) in (1..=9).zip(expected) {
            let n = hash_v1("my-test", &id.to_string());
            assert_eq!(choose_variant(n, &partial), want, "id {id}");
        }
        // "Uses seed and hash version": seed "foo", v2, id "1" -> variant 1.
        assert_eq!(choose_variant(hash_v2("foo", "1"), &ranges), Some(1));
    }

    #[test]
    fn config_version_is_fnv1a64_hex() {
        // FNV-1a 64 reference vectors.
        assert_eq!(config_version(b""), "cbf29ce484222325");
        assert_eq!(config_version(b"a"), "af63dc4c8601ec8c");
        assert_eq!(config_version(b"foobar"), "85944171f73967e8");
    }

    proptest! {
        #[test]
        fn hashes_are_in_the_unit_interval(seed in ".*", value in ".*") {
            let h2 = hash_v2(&seed, &value);
            prop_assert!((0.0..1.0).contains(&h2));
            let h1 = hash_v1(&seed, &value);
            prop_assert!((0.0..1.0).contains(&h1));
        }

        #[test]
        fn piecewise_hashing_equals_hashing_the_concatenation(seed in ".*", value in ".*") {
            let joined = format!("{seed}{value}");
            prop_assert_eq!(Fnv32::new().str(&seed).str(&value).0, fnv1a32(&joined));
            let outer = fnv1a32(&fnv1a32(&joined).to_string());
            prop_assert_eq!(hash_v2(&seed, &value), f64::from(outer % 10_000) / 10_000.0);
        }

        #[test]
        fn raising_coverage_never_moves_a_bucket(
            n in 0u32..10_000,
            low in 0.0f64..=1.0,
            extra in 0.0f64..=1.0,
            weights in prop::sample::select(vec![
                vec![0.5, 0.5], vec![0.2, 0.3, 0.5], vec![0.1, 0.1, 0.1, 0.7], vec![0.0, 1.0],
            ]),
        ) {
            let n = f64::from(n) / 10_000.0;
            let high = (low + extra).min(1.0);
            let before = choose_variant(n, &bucket_ranges(weights.len(), low, Some(&weights)));
            let after = choose_variant(n, &bucket_ranges(weights.len(), high, Some(&weights)));
            if let Some(v) = before {
                prop_assert_eq!(after, Some(v));
            }
        }
    }
}
