//! Property tests ("fuzzing" on stable Rust) of everything that reads untrusted input: the
//! YAML reader, variable substitution, `--ref` and semver ranges, webhook payloads and
//! signatures, and the diff. No cluster, no network.
//!
//! Each property runs `TETHER_FUZZ_CASES` cases (256 by default; `make soak` runs 20,000)
//! from `TETHER_FUZZ_SEED` (fixed by default, so `make test` is repeatable; a number or
//! `random` otherwise), prints how many it ran, and on failure the seed and the smallest
//! input proptest found. Every case runs under a watchdog (see [`fuzz`]): one slower than
//! [`CASE_BUDGET`] fails, one that never returns is reported with its input. Start reading
//! at [`fuzz`], then one section per parser.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::{Value, json};

use tether::agent::http::{parse_push, same_repository, signature_valid};
use tether::plan::diff::{normalize, redact_secret_pair, to_yaml, unified_diff};
use tether::plan::fields::APPLIED_FIELDS_ANNOTATION;
use tether::render::substitute::{Unset, Vars, parse_vars_file, substitute};
use tether::render::yaml::{YamlLimits, parse_documents};
use tether::source::reference::{RefSpec, SemverRange, is_commit_id};

// ---------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------

/// The longest one case may take. Inputs are at most a few hundred KiB, so a case normally
/// takes milliseconds even in a debug build on a loaded machine; seconds mean a parser went
/// quadratic (or worse) on hostile input, which on an 8 MiB file is an outage.
const CASE_BUDGET: Duration = Duration::from_secs(2);
/// A case still running after this long is a hang: the test fails at once, naming the input.
const HANG_LIMIT: Duration = Duration::from_secs(30);
/// `make test` explores the same cases every run; `make soak` picks a new seed and prints it.
const DEFAULT_SEED: u64 = 0x7e7e_4e55_f022_0013;

fn cases() -> u32 {
    match std::env::var("TETHER_FUZZ_CASES") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TETHER_FUZZ_CASES={text:?} is not a number of cases")),
        Err(_) => 256,
    }
}

fn seed() -> u64 {
    match std::env::var("TETHER_FUZZ_SEED").as_deref() {
        Err(_) => DEFAULT_SEED,
        Ok("random") => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("the clock is after 1970");
            now.as_secs() ^ u64::from(now.subsec_nanos()) << 20
        }
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TETHER_FUZZ_SEED={text:?} is neither a number nor random")),
    }
}

type Current = Arc<Mutex<Option<(Instant, Box<dyn Debug + Send>)>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only the harness holds this lock, never across a case: a poisoned lock is still sound.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `property` on `cases()` inputs drawn from `strategy`, on a thread of its own (with
/// the 2 MiB stack tokio gives its workers, so a stack overflow here is one there too).
///
/// The test's own thread is the watchdog: a case that has not returned after [`HANG_LIMIT`]
/// fails the test with its input (the stuck thread dies with the test's process). A case
/// that returns but took longer than [`CASE_BUDGET`] is a failure proptest shrinks.
fn fuzz<S>(
    name: &'static str,
    strategy: impl FnOnce() -> S + Send + 'static,
    property: impl Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static,
) where
    S: Strategy,
    S::Value: Clone + Debug + Send + 'static,
{
    let (cases, seed) = (cases(), seed());
    let current: Current = Arc::default();
    let watched = Arc::clone(&current);
    let (done, finished) = mpsc::channel();
    let started = Instant::now();
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let config = Config {
                cases,
                rng_seed: RngSeed::Fixed(seed),
                // A failure prints its seed and minimal input; no regression files to commit.
                failure_persistence: None,
                max_shrink_time: 60_000,
                ..Config::default()
            };
            let mut runner = TestRunner::new(config);
            let ran = std::cell::Cell::new(0u64);
            let slowest = std::cell::Cell::new(Duration::ZERO);
            let result = runner.run(&strategy(), |input| {
                *lock(&watched) = Some((Instant::now(), Box::new(input.clone())));
                let start = Instant::now();
                let outcome = property(input);
                let took = start.elapsed();
                *lock(&watched) = None;
                ran.set(ran.get() + 1);
                slowest.set(slowest.get().max(took));
                outcome?;
                prop_assert!(
                    took <= CASE_BUDGET,
                    "one case took {took:?}, more than {CASE_BUDGET:?}"
                );
                Ok(())
            });
            let _ = done.send((result.map_err(|e| e.to_string()), ran.get(), slowest.get()));
        })
        .expect("a thread for the property");
    loop {
        match finished.recv_timeout(Duration::from_millis(200)) {
            Ok((result, ran, slowest)) => {
                eprintln!(
                    "fuzz {name}: {ran} cases in {:.1} s, slowest {} ms (TETHER_FUZZ_SEED={seed})",
                    started.elapsed().as_secs_f64(),
                    slowest.as_millis()
                );
                if let Err(error) = result {
                    panic!("{name} failed (rerun with TETHER_FUZZ_SEED={seed}): {error}");
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some((since, input)) = lock(&current).as_ref()
                    && since.elapsed() > HANG_LIMIT
                {
                    panic!(
                        "{name} hangs (TETHER_FUZZ_SEED={seed}): one case has run for {:?} \
                         on {input:?}",
                        since.elapsed()
                    );
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("{name}: the property's thread died (TETHER_FUZZ_SEED={seed})")
            }
        }
    }
}

fn line_count(text: &str) -> u64 {
    text.lines().count() as u64
}

/// Arbitrary bytes read as text the way a file of unknown encoding would be.
fn lossy_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 0..max)
        .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Strings a YAML 1.1 reader, a shell-ish substituter or a JSON printer may treat specially.
#[rustfmt::skip]
const TRICKY: &[&str] = &[
    "", " ", "yes", "no", "Yes", "NO", "on", "off", "y", "n", "Y", "true", "False", "~", "null",
    "Null", "0644", "0o17", "0x1F", "0b101", "1_000", "1e3", "1.10", "-0", ".inf", "-.Inf", ".nan",
    "2001-12-14", "12:30:45", "=", "<<", "- x", "a: b", "#c", "a #c", "*a", "&a", "!x", "%x", "@x",
    "`x", "|", ">", "?", "[", "{}", "'", "\"", "\\", "\t", "\n", "a\nb", "a\n", "\r\n", " lead",
    "trail ", "\0", "\u{7f}", "\u{85}", "\u{2028}", "\u{feff}", "é", "😀", "${A}", "$${A}", "---",
    "...",
];

fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(TRICKY).prop_map(str::to_string),
        2 => "[a-z0-9 .:-]{0,12}",
        2 => "(?s).{0,16}",
        1 => prop::collection::vec(prop::sample::select(TRICKY), 1..4).prop_map(|p| p.concat()),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&[
            "apiVersion", "kind", "metadata", "name", "namespace", "data", "stringData", "spec",
            "status", "labels", "annotations", "ref", "repository", "project", "clone_url",
            "ssh_url", "html_url", "git_url", "git_http_url", "git_ssh_url", "web_url",
            "repoURL", "items",
        ][..])
        .prop_map(str::to_string),
        2 => tricky_string(),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => prop::sample::select(&[0.5, -1.25, 3.0, 1e10, 1e-7, 0.1, 1.5e300, -0.0][..])
            .prop_map(Value::from),
        1 => any::<f64>()
            .prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        3 => tricky_string().prop_map(Value::String),
    ]
}

/// JSON of bounded depth and size, with the keys that the code under test looks for.
fn json_value(depth: u32) -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(depth, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------------------------------
// The YAML reader
// ---------------------------------------------------------------------------------------

/// Pieces of YAML syntax, so random text is mostly near-YAML rather than noise.
#[rustfmt::skip]
const YAML_PIECES: &[&str] = &[
    "a", "b", "key", "kind", "metadata", "name", ": ", ":", "- ", "-", "\n", "  ", "    ", "\t",
    "---\n", "--- ", "...\n", "# c\n", "&a ", "&b ", "*a", "*b", "*missing", "<<: *a\n",
    "<<: [*a, *b]\n", "<<: {x: 1}\n", "!!str ", "!!int ", "!!float ", "!!binary ", "!!map ",
    "!!seq ", "!!null ", "!!set ", "!!omap ", "!!timestamp ", "!x ", "!<tag:yaml.org,2002:str> ",
    "%YAML 1.1\n", "%YAML 1.2\n", "%TAG !e! tag:e.com,2000:\n", "!e!x ", "{", "}", "[", "]", ", ",
    ",", "? ", "|\n", "|-\n", ">+\n", "|2\n", "\"", "'", "\\", "\"\\u0000\\x41\\N\"", "\"\\uD800\"",
    "'it''s'", "0644", "0x1F", "0o17", "1e999", "-.inf", ".nan", "~", "null", "yes", "No", "on",
    "=", "<<", "\0", "\u{feff}", "\u{85}", "\u{2028}", "\r\n", "\r", "é", "😀", "\u{7f}", "\u{1b}",
    "a: 1\n", "a: 2\n", "- 1\n", "  - 2\n", "apiVersion: v1\n", "kind: ConfigMap\n",
    "metadata:\n  name: x\n",
];

fn yaml_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            6 => prop::sample::select(YAML_PIECES).prop_map(str::to_string),
            1 => "[a-z0-9 ]{0,12}",
            1 => any::<char>().prop_map(String::from),
        ],
        0..200,
    )
    .prop_map(|pieces| pieces.concat())
}

/// What a hostile input must come to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Parsed,
    Refused,
    Either,
}

/// Nesting up to `NESTING_OK` levels must parse, deeper than `NESTING_REFUSED` must be
/// refused (the reader's limits are 64 levels in all and 100 of flow collections).
const NESTING_OK: usize = 50;
const NESTING_REFUSED: usize = 100;

fn by_depth(depth: usize) -> Expect {
    match depth {
        d if d <= NESTING_OK => Expect::Parsed,
        d if d > NESTING_REFUSED => Expect::Refused,
        _ => Expect::Either,
    }
}

/// Inputs built to hit a limit: nesting, alias bombs, big aliased scalars, merge chains,
/// document storms, long keys, many nodes. Each is at most a few hundred KiB, small enough
/// that a linear parser takes well under [`CASE_BUDGET`] and a quadratic one far more.
fn yaml_hostile() -> impl Strategy<Value = (String, Expect)> {
    prop_oneof![
        // Deep flow nesting, balanced or not.
        (0..2000usize, prop::bool::ANY, prop::bool::ANY).prop_map(|(depth, map, close)| {
            let (open, end) = if map { ("{a: ", "}") } else { ("[", "]") };
            let closing = if close {
                end.repeat(depth)
            } else {
                String::new()
            };
            let expect = if close || depth == 0 {
                by_depth(depth)
            } else {
                Expect::Refused
            };
            (format!("{}x{closing}\n", open.repeat(depth)), expect)
        }),
        // Deep block nesting: `- - - x` is linear in size, indented maps quadratic.
        (0..20_000usize).prop_map(|depth| (format!("{}x\n", "- ".repeat(depth)), by_depth(depth))),
        (0..400usize).prop_map(|depth| {
            let text: String = (0..depth)
                .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                .collect();
            (text + &" ".repeat(depth) + "v\n", by_depth(depth))
        }),
        // The billion laughs: each level aliases the one before `width` times.
        (1..12u32, 1..12usize).prop_map(|(levels, width)| {
            let mut text = String::from("l0: &l0 [lol]\n");
            for level in 1..levels {
                let items = vec![format!("*l{}", level - 1); width].join(", ");
                text.push_str(&format!("l{level}: &l{level} [{items}]\n"));
            }
            let nodes = (width as u64).saturating_pow(levels - 1);
            (
                text,
                if nodes > 1_000_000 {
                    Expect::Refused
                } else {
                    Expect::Either
                },
            )
        }),
        // One big scalar aliased many times: a small file, a large value.
        (
            prop_oneof![0..1_000usize, 0..200_000usize],
            prop_oneof![0..150usize, 0..2_000usize]
        )
            .prop_map(|(size, aliases)| {
                let list = vec!["*a"; aliases].join(", ");
                (
                    format!("a: &a {}\nb: [{list}]\n", "x".repeat(size)),
                    Expect::Either,
                )
            }),
        // Merge-key chains, and aliases of what is still being defined.
        (1..300usize).prop_map(|n| {
            let mut text = String::from("m0: &m0 {a: 1}\n");
            for i in 1..n {
                text.push_str(&format!(
                    "m{i}: &m{i}\n  <<: [*m{}, *m0]\n  k{i}: {i}\n",
                    i - 1
                ));
            }
            (text, Expect::Either)
        }),
        Just(("a: &a [*a]\n".to_string(), Expect::Refused)),
        Just(("&a a: *a\n".to_string(), Expect::Either)),
        // Document storms.
        (
            0..3000usize,
            prop::sample::select(&["---\n", "--- a\n", "...\n", "--- !!null\n"][..])
        )
            .prop_map(|(n, doc)| (doc.repeat(n), Expect::Either)),
        // Long keys and scalars, on one line or many.
        (0..100_000usize).prop_map(|n| (format!("{}: 1\n", "k".repeat(n)), Expect::Either)),
        (0..100_000usize).prop_map(|n| (
            format!("s: \"{}\"\n", "\\u00e9".repeat(n / 6)),
            Expect::Parsed
        )),
        (0..20_000usize).prop_map(|n| (format!("s: |\n{}", "  line\n".repeat(n)), Expect::Parsed)),
        // Many keys, many items.
        (0..20_000usize).prop_map(|n| (
            (0..n).map(|i| format!("k{i}: {i}\n")).collect(),
            Expect::Parsed
        )),
        (0..40_000usize).prop_map(|n| (format!("[{}]", "1,".repeat(n)), Expect::Parsed)),
    ]
}

fn yaml_input() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => yaml_soup(),
        1 => yaml_hostile().prop_map(|(text, _)| text),
        1 => lossy_text(2048),
        1 => "(?s).{0,256}",
    ]
}

/// The most text (strings and keys) one parsed file may hold: serde-saphyr's scalar budget,
/// which counts every alias expansion, so a small file cannot become a huge value.
const MAX_PARSED_TEXT: usize = 64 * 1024 * 1024;
/// The most nodes one parsed file may hold (serde-saphyr's event budget).
const MAX_PARSED_NODES: usize = 1_000_000;

/// (bytes of strings and keys, nodes) in `value`: what holding it costs.
fn weight(value: &Value) -> (usize, usize) {
    match value {
        Value::String(s) => (s.len(), 1),
        Value::Array(items) => items
            .iter()
            .map(weight)
            .fold((0, 1), |a, b| (a.0 + b.0, a.1 + b.1)),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let (text, nodes) = weight(v);
                (k.len() + text, nodes + 1)
            })
            .fold((0, 1), |a, b| (a.0 + b.0, a.1 + b.1)),
        _ => (0, 1),
    }
}

/// What a parse may return: documents whose lines are inside the file and whose size is
/// bounded, or an error with a message and a line inside the file. Never a panic.
fn check_parse(text: &str, expect: Expect) -> Result<(), TestCaseError> {
    // YAML breaks lines at a lone `\r` too (and YAML 1.1 at NEL, LS and PS), where
    // `str::lines` does not: count every one of them, an upper bound on YAML's lines.
    let lines = text
        .chars()
        .filter(|c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        .count() as u64
        + 1;
    match parse_documents(text, &YamlLimits::default()) {
        Ok(documents) => {
            prop_assert!(
                expect != Expect::Refused,
                "accepted as {} documents",
                documents.len()
            );
            let mut last = 0;
            for document in &documents {
                prop_assert!(document.line <= lines, "line {} of {lines}", document.line);
                if document.line > 0 {
                    prop_assert!(document.line >= last, "documents out of order");
                    last = document.line;
                }
            }
            let (text_bytes, nodes) = documents
                .iter()
                .map(|d| weight(&d.value))
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
            prop_assert!(
                text_bytes <= MAX_PARSED_TEXT,
                "{} bytes of YAML hold {text_bytes} bytes of text",
                text.len()
            );
            prop_assert!(
                nodes <= MAX_PARSED_NODES,
                "{} bytes of YAML hold {nodes} nodes",
                text.len()
            );
        }
        Err(error) => {
            prop_assert!(expect != Expect::Parsed, "refused: {error:?}");
            prop_assert!(!error.message.is_empty(), "an error without a message");
            prop_assert!(
                error.line <= lines,
                "error at line {} of {lines}: {}",
                error.line,
                error.message
            );
        }
    }
    Ok(())
}

#[test]
fn yaml_reader_returns_documents_or_an_error() {
    fuzz(
        "yaml_reader_returns_documents_or_an_error",
        yaml_input,
        |text| check_parse(&text, Expect::Either),
    );
}

#[test]
fn yaml_reader_bounds_hostile_input() {
    fuzz(
        "yaml_reader_bounds_hostile_input",
        yaml_hostile,
        |(text, expect)| check_parse(&text, expect),
    );
}

#[test]
fn yaml_reader_refuses_duplicate_keys() {
    // A flat mapping over few keys: it must parse to exactly those pairs, or be refused
    // because a key repeats.
    let pairs = || prop::collection::vec(("[a-c]{1,2}", any::<i32>()), 0..8);
    fuzz("yaml_reader_refuses_duplicate_keys", pairs, |pairs| {
        let text: String = pairs.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
        let mut expected = serde_json::Map::new();
        let mut duplicate = false;
        for (key, value) in &pairs {
            duplicate |= expected.insert(key.clone(), json!(value)).is_some();
        }
        match parse_documents(&text, &YamlLimits::default()) {
            Ok(documents) => {
                prop_assert!(!duplicate, "duplicate keys accepted: {text:?}");
                let values: Vec<Value> = documents.into_iter().map(|d| d.value).collect();
                let expected = if pairs.is_empty() {
                    vec![]
                } else {
                    vec![Value::Object(expected)]
                };
                prop_assert_eq!(values, expected);
            }
            Err(error) => {
                prop_assert!(duplicate, "refused without a duplicate: {error:?}");
                prop_assert!(
                    error.message.to_lowercase().contains("duplicate"),
                    "{error:?}"
                );
            }
        }
        Ok(())
    });
}

#[test]
fn yaml_printed_by_tether_reads_back_the_same() {
    // What tether prints as YAML (diffs, `-o yaml`) must mean the same to a YAML 1.1 reader:
    // a string "yes" or "0644" printed bare would come back as true or 420.
    // A document that is just `null` is no document (as for kubectl): not a round trip.
    let value = || json_value(4).prop_filter("a document", |v| !v.is_null());
    fuzz(
        "yaml_printed_by_tether_reads_back_the_same",
        value,
        |value| {
            let text = to_yaml(Some(&value));
            let documents = parse_documents(&text, &YamlLimits::default())
                .map_err(|e| TestCaseError::fail(format!("{e:?} in {text:?}")))?;
            let values: Vec<Value> = documents.into_iter().map(|d| d.value).collect();
            prop_assert_eq!(values, vec![value], "printed as {:?}", text);
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// Variable substitution
// ---------------------------------------------------------------------------------------

const NAMES: &[&str] = &["A", "B", "_x", "TAG", "NAME_2", "a1"];

fn var_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(NAMES).prop_map(str::to_string),
        1 => "[A-Za-z_][A-Za-z0-9_]{0,8}",
    ]
}

fn vars() -> impl Strategy<Value = Vars> {
    prop::collection::btree_map(var_name(), "(?s).{0,10}", 0..5)
}

/// One piece of a template whose substitution is known in advance.
#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Var(String),
    Default(String, String),
    Escaped(String),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        3 => "(?s)[^$]{0,20}".prop_map(Piece::Text),
        2 => var_name().prop_map(Piece::Var),
        2 => (var_name(), "[^}\n]{0,10}").prop_map(|(n, d)| Piece::Default(n, d)),
        1 => var_name().prop_map(Piece::Escaped),
    ]
}

#[test]
fn substitution_without_dollar_changes_nothing() {
    let input = || {
        (
            prop_oneof![
                "(?s)[^$]{0,200}",
                lossy_text(512).prop_map(|t| t.replace('$', ""))
            ],
            vars(),
        )
    };
    fuzz(
        "substitution_without_dollar_changes_nothing",
        input,
        |(text, vars)| {
            prop_assert_eq!(substitute(&text, &vars), Ok(text));
            Ok(())
        },
    );
}

#[test]
fn substitution_replaces_exactly_what_it_should() {
    // Templates from pieces whose output (and unset variables, with lines) is known.
    let input = || (prop::collection::vec(piece(), 0..30), vars());
    fuzz(
        "substitution_replaces_exactly_what_it_should",
        input,
        |(pieces, vars)| {
            let mut text = String::new();
            let mut expected = String::new();
            let mut unset = Vec::new();
            for piece in &pieces {
                let line = 1 + text.matches('\n').count() as u64;
                match piece {
                    Piece::Text(t) => {
                        text.push_str(t);
                        expected.push_str(t);
                    }
                    Piece::Var(name) => {
                        text.push_str(&format!("${{{name}}}"));
                        match vars.get(name) {
                            Some(value) => expected.push_str(value),
                            None => unset.push(Unset {
                                name: name.clone(),
                                line,
                            }),
                        }
                    }
                    Piece::Default(name, default) => {
                        text.push_str(&format!("${{{name}:={default}}}"));
                        expected.push_str(vars.get(name).unwrap_or(default));
                    }
                    Piece::Escaped(name) => {
                        text.push_str(&format!("$${{{name}}}"));
                        expected.push_str(&format!("${{{name}}}"));
                    }
                }
            }
            let outcome = substitute(&text, &vars);
            if unset.is_empty() {
                prop_assert_eq!(outcome, Ok(expected), "text {:?}", text);
            } else {
                prop_assert_eq!(outcome, Err(unset), "text {:?}", text);
            }
            Ok(())
        },
    );
}

/// Fragments of the `${…}` syntax, mixed so that most are almost-references.
fn dollar_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(
                &[
                    "$", "${", "$$", "$${", "}", ":=", ":", "=", "{", "\n", "é", "😀", "\0", " "
                ][..]
            )
            .prop_map(str::to_string),
            var_name(),
            "(?s).{0,4}",
        ],
        0..100,
    )
    .prop_map(|p| p.concat())
}

/// Inputs that make a naive scanner quadratic: many references that never close.
fn dollar_hostile() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&["${A:=", "${A", "${", "$$", "${A:=${", "$${A:="][..]),
        0..30_000usize,
        prop::sample::select(&["", "}", "\n", "x"][..]),
    )
        .prop_map(|(piece, n, end)| piece.repeat(n) + end)
}

#[test]
fn substitution_is_total_and_reports_real_names() {
    let input = || {
        (
            prop_oneof![3 => dollar_soup(), 1 => dollar_hostile(), 1 => lossy_text(512)],
            vars(),
        )
    };
    fuzz(
        "substitution_is_total_and_reports_real_names",
        input,
        |(text, vars)| {
            match substitute(&text, &vars) {
                Ok(out) => {
                    let longest = vars.values().map(String::len).max().unwrap_or(0);
                    prop_assert!(
                        out.len() <= text.len() * (1 + longest),
                        "output grew beyond the variables"
                    );
                }
                Err(unset) => {
                    prop_assert!(!unset.is_empty());
                    for Unset { name, line } in unset {
                        prop_assert!(!vars.contains_key(&name), "{name} is set");
                        prop_assert!(
                            name.chars()
                                .next()
                                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                            "not a variable name: {name:?}"
                        );
                        prop_assert!(line >= 1 && line <= line_count(&text).max(1), "line {line}");
                        prop_assert!(
                            text.contains(&format!("${{{name}")),
                            "{name} is not in the text"
                        );
                    }
                }
            }
            Ok(())
        },
    );
}

#[test]
fn vars_files_read_back_what_was_written() {
    let input = || prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,10}", "[^\n]{0,20}", 0..10);
    fuzz(
        "vars_files_read_back_what_was_written",
        input,
        |vars: BTreeMap<String, String>| {
            let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            let expected: Vars = vars
                .iter()
                .map(|(k, v)| (k.clone(), v.trim().to_string()))
                .collect();
            prop_assert_eq!(parse_vars_file(&text), Ok(expected));
            Ok(())
        },
    );
}

#[test]
fn vars_files_are_read_or_refused_with_a_line() {
    let input = || {
        prop_oneof![
            dollar_soup(),
            lossy_text(512),
            prop::collection::vec(
                prop::sample::select(&["A=1", "=", "# c", "", " ", "B", "\r", "\n", "C = d"][..]),
                0..20
            )
            .prop_map(|lines| lines.join("\n")),
        ]
    };
    fuzz(
        "vars_files_are_read_or_refused_with_a_line",
        input,
        |text| {
            match parse_vars_file(&text) {
                Ok(vars) => {
                    for (key, value) in &vars {
                        prop_assert!(!key.contains('\n') && !value.contains('\n'));
                        prop_assert_eq!(key.trim(), key);
                        prop_assert_eq!(value.trim(), value);
                    }
                }
                Err(message) => {
                    let number: u64 = message
                        .strip_prefix("line ")
                        .and_then(|rest| rest.split(':').next())
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| TestCaseError::fail(format!("no line in {message:?}")))?;
                    prop_assert!(number >= 1 && number <= line_count(&text), "{message}");
                }
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// `--ref` and semver ranges
// ---------------------------------------------------------------------------------------

/// Pieces of `--ref` syntax: prefixes, range operators, versions, commit ids.
#[rustfmt::skip]
const REF_PIECES: &[&str] = &[
    "branch:", "tag:", "commit:", "semver:", "refs/heads/", "refs/tags/", "HEAD", ">=", "<", "^",
    "~", "=", "||", " ", ",", "x", "X", "*", ".", "v", "-rc.1", "+b", "1", "2", "0123456789abcdef",
    "0123456789abcdef0123456789abcdef01234567", "main", "\t", "\n", "é",
];

fn ref_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(REF_PIECES).prop_map(str::to_string),
        "[0-9a-fA-F]{7,40}",
        "(?s).{0,3}",
    ];
    prop_oneof![
        3 => prop::collection::vec(piece, 0..8).prop_map(|p| p.concat()),
        1 => "(?s).{0,40}",
    ]
}

/// The explicit spelling of a parsed ref, which must parse back to the same ref.
fn spelling(spec: &RefSpec) -> String {
    match spec {
        RefSpec::Default => String::new(),
        RefSpec::Branch(name) => format!("branch:{name}"),
        RefSpec::Tag(name) => format!("tag:{name}"),
        RefSpec::Commit(id) => format!("commit:{id}"),
        RefSpec::Semver(range) => format!("semver:{}", range.text),
        RefSpec::Name(name) => name.clone(),
    }
}

#[test]
fn refs_parse_to_a_stable_meaning() {
    fuzz("refs_parse_to_a_stable_meaning", ref_text, |text| {
        let parsed = RefSpec::parse(&text);
        prop_assert_eq!(
            &RefSpec::parse(&format!(" \t{text}\n ")),
            &parsed,
            "surrounding blanks matter"
        );
        match parsed {
            Ok(spec) => {
                let again = RefSpec::parse(&spelling(&spec));
                prop_assert_eq!(again.as_ref(), Ok(&spec), "spelled {:?}", spelling(&spec));
                prop_assert_eq!(spec.to_string(), again.expect("checked").to_string());
                match &spec {
                    RefSpec::Commit(id) => {
                        prop_assert!(is_commit_id(id));
                        prop_assert_eq!(id.to_ascii_lowercase(), id.clone());
                    }
                    RefSpec::Branch(name) | RefSpec::Tag(name) | RefSpec::Name(name) => {
                        prop_assert!(!name.is_empty())
                    }
                    RefSpec::Default | RefSpec::Semver(_) => {}
                }
            }
            Err(error) => prop_assert!(error.to_string().starts_with("--ref ")),
        }
        Ok(())
    });
}

#[test]
fn commit_ids_are_7_to_40_hex_digits() {
    fuzz(
        "commit_ids_are_7_to_40_hex_digits",
        || prop_oneof!["[0-9a-fA-F]{0,45}", "(?s).{0,45}"],
        |text| {
            let expected =
                (7..=40).contains(&text.len()) && text.chars().all(|c| c.is_ascii_hexdigit());
            prop_assert_eq!(is_commit_id(&text), expected);
            Ok(())
        },
    );
}

fn version_text() -> impl Strategy<Value = String> {
    (
        0..4u64,
        0..4u64,
        0..4u64,
        prop::option::of(0..3u64),
        prop::bool::ANY,
    )
        .prop_map(|(major, minor, patch, rc, v)| {
            let pre = rc.map(|n| format!("-rc.{n}")).unwrap_or_default();
            format!("{}{major}.{minor}.{patch}{pre}", if v { "v" } else { "" })
        })
}

fn tags() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![4 => version_text(), 1 => "(?s).{0,8}", 1 => Just("latest".to_string())],
        0..12,
    )
}

/// One comparator group: `>=1.2 <2`, `~1.x`, `^v1.0.0-rc.1, <=3`.
fn comparators() -> impl Strategy<Value = String> {
    let op = prop::sample::select(&["", ">=", "<=", ">", "<", "=", "^", "~", ">= "][..]);
    let part = prop_oneof![
        3 => (0..4u64).prop_map(|n| n.to_string()),
        1 => prop::sample::select(&["x", "X", "*"][..]).prop_map(str::to_string),
    ];
    let version = (
        part.clone(),
        prop::option::of(part.clone()),
        prop::option::of(part),
        prop::option::of(0..3u64),
        prop::bool::ANY,
    )
        .prop_map(|(a, b, c, rc, v)| {
            let mut text = format!("{}{a}", if v { "v" } else { "" });
            if let Some(b) = b {
                text.push_str(&format!(".{b}"));
                if let Some(c) = c {
                    text.push_str(&format!(".{c}"));
                    if let Some(rc) = rc {
                        text.push_str(&format!("-rc.{rc}"));
                    }
                }
            }
            text
        });
    prop::collection::vec(
        (
            op,
            version,
            prop::sample::select(&[" ", ",", ", ", "  "][..]),
        )
            .prop_map(|(o, v, s)| format!("{o}{v}{s}")),
        1..4,
    )
    .prop_map(|c| c.concat())
}

fn range_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(comparators(), 1..3).prop_map(|groups| groups.join(" || ")),
        1 => ref_text(),
    ]
}

fn version_of(tag: &str) -> Option<semver::Version> {
    semver::Version::parse(tag.strip_prefix(['v', 'V']).unwrap_or(tag)).ok()
}

#[test]
fn semver_ranges_pick_the_highest_matching_tag() {
    fuzz(
        "semver_ranges_pick_the_highest_matching_tag",
        || (range_text(), tags()),
        |(text, tags)| {
            let Ok(range) = SemverRange::parse(&text) else {
                return Ok(());
            };
            let best = range.best(tags.iter().map(String::as_str));
            let matching: Vec<semver::Version> = tags
                .iter()
                .filter_map(|t| version_of(t))
                .filter(|v| range.matches(v))
                .collect();
            match best {
                Some((tag, version)) => {
                    prop_assert!(tags.iter().any(|t| t == tag), "{tag} is not a tag");
                    prop_assert_eq!(version_of(tag), Some(version.clone()));
                    prop_assert!(range.matches(&version));
                    prop_assert!(
                        matching.iter().all(|v| *v <= version),
                        "a higher tag matches"
                    );
                }
                None => prop_assert!(
                    matching.is_empty(),
                    "{matching:?} match but none was picked"
                ),
            }
            Ok(())
        },
    );
}

#[test]
fn semver_alternatives_match_like_either_side() {
    let input = || {
        (
            comparators(),
            comparators(),
            prop::collection::vec(version_text(), 1..8),
        )
    };
    fuzz(
        "semver_alternatives_match_like_either_side",
        input,
        |(left, right, versions)| {
            let (Ok(a), Ok(b)) = (SemverRange::parse(&left), SemverRange::parse(&right)) else {
                return Ok(());
            };
            let either = SemverRange::parse(&format!("{left} || {right}"))
                .map_err(|e| TestCaseError::fail(format!("both sides parse alone: {e}")))?;
            // A `v` before a version means nothing.
            let without_v = SemverRange::parse(&left.replace('v', ""))
                .map_err(|e| TestCaseError::fail(format!("without v: {e}")))?;
            for version in versions.iter().filter_map(|t| version_of(t)) {
                prop_assert_eq!(
                    either.matches(&version),
                    a.matches(&version) || b.matches(&version)
                );
                prop_assert_eq!(without_v.matches(&version), a.matches(&version));
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------

const PROVIDERS: [&str; 5] = ["github", "gitea", "gitlab", "generic", "unknown"];

/// Every string in `value`, at any depth.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

fn check_push(payload: &Value) -> Result<(), TestCaseError> {
    let mut present = Vec::new();
    strings(payload, &mut present);
    for provider in PROVIDERS {
        let push = parse_push(provider, payload);
        prop_assert!(push.urls.len() <= 4);
        for url in &push.urls {
            prop_assert!(present.contains(url), "{url:?} is not in the payload");
        }
        match (payload.get("ref").and_then(Value::as_str), &push.branch) {
            (None, None) => {}
            (Some(full), Some(branch)) => prop_assert!(
                full == branch || full == format!("refs/heads/{branch}"),
                "{full:?} read as branch {branch:?}"
            ),
            (full, branch) => prop_assert!(false, "ref {full:?} read as {branch:?}"),
        }
    }
    Ok(())
}

/// Payloads shaped like a provider's: repository/project objects with URL fields and a ref.
fn push_payload() -> impl Strategy<Value = Value> {
    let url = prop_oneof![
        Just(Value::String(
            "https://git.example.com/team/deploy.git".into()
        )),
        tricky_string().prop_map(Value::String),
        json_leaf(),
    ];
    let holder = || {
        prop::collection::vec((json_key(), url.clone()), 0..6)
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect()))
    };
    (
        prop::option::of(prop_oneof![
            Just(json!("refs/heads/main")),
            Just(json!("refs/heads/refs/heads/x")),
            Just(json!("refs/tags/v1")),
            json_leaf()
        ]),
        prop::option::of(prop_oneof![holder(), json_value(2)]),
        prop::option::of(holder()),
        prop::option::of(url),
        json_value(2),
    )
        .prop_map(|(reference, repository, project, repo_url, extra)| {
            let mut payload = json!({"extra": extra});
            let map = payload.as_object_mut().expect("an object");
            for (key, value) in [
                ("ref", reference),
                ("repository", repository),
                ("project", project),
                ("repoURL", repo_url),
            ] {
                if let Some(value) = value {
                    map.insert(key.into(), value);
                }
            }
            payload
        })
}

#[test]
fn webhook_payloads_yield_only_what_they_contain() {
    let input = || prop_oneof![3 => push_payload(), 1 => json_value(4)];
    fuzz(
        "webhook_payloads_yield_only_what_they_contain",
        input,
        |payload| check_push(&payload),
    );
}

#[test]
fn webhook_bodies_of_any_bytes_are_read_or_refused() {
    // The body as the server sees it: bytes, maybe JSON, maybe nested beyond any reason.
    let body = || {
        prop_oneof![
            3 => push_payload().prop_map(|v| serde_json::to_vec(&v).expect("JSON prints")),
            2 => prop::collection::vec(any::<u8>(), 0..1024),
            1 => (0..50_000usize, prop::sample::select(&["[", "{\"a\":", "[{\"ref\":"][..]))
                .prop_map(|(depth, open)| open.repeat(depth).into_bytes()),
        ]
    };
    fuzz(
        "webhook_bodies_of_any_bytes_are_read_or_refused",
        body,
        |body| {
            if let Ok(payload) = serde_json::from_slice::<Value>(&body) {
                check_push(&payload)?;
            }
            Ok(())
        },
    );
}

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How a signature header may be tampered with.
#[derive(Debug, Clone)]
enum Tamper {
    None,
    Uppercase,
    Blanks,
    Replace(usize, char),
    Insert(usize, char),
    Truncate(usize),
    /// `+` for a `0` that starts a byte: Rust's integer parsing takes `+a` for `0a`.
    PlusForZero(usize),
    OtherBody,
    OtherSecret,
    Arbitrary(String),
}

#[test]
fn webhook_signatures_accept_only_the_right_hmac() {
    let tamper = || {
        prop_oneof![
            Just(Tamper::None),
            Just(Tamper::Uppercase),
            Just(Tamper::Blanks),
            (
                0..64usize,
                prop::sample::select(&['0', 'f', 'F', 'g', '+', '-', ' ', 'é', '\0'][..])
            )
                .prop_map(|(i, c)| Tamper::Replace(i, c)),
            (0..65usize, prop::sample::select(&['0', 'a', '+', ' '][..]))
                .prop_map(|(i, c)| Tamper::Insert(i, c)),
            (0..64usize).prop_map(Tamper::Truncate),
            (0..32usize).prop_map(Tamper::PlusForZero),
            Just(Tamper::OtherBody),
            Just(Tamper::OtherSecret),
            "(?s).{0,70}".prop_map(Tamper::Arbitrary),
        ]
    };
    let input = move || {
        (
            prop::collection::vec(any::<u8>(), 0..80),
            prop::collection::vec(any::<u8>(), 0..512),
            tamper(),
        )
    };
    fuzz(
        "webhook_signatures_accept_only_the_right_hmac",
        input,
        |(secret, body, tamper)| {
            let right = hmac_hex(&secret, &body);
            let given = match &tamper {
                Tamper::None => right.clone(),
                Tamper::Uppercase => right.to_uppercase(),
                Tamper::Blanks => format!(" {right}\n"),
                Tamper::Replace(i, c) => right
                    .chars()
                    .enumerate()
                    .map(|(j, d)| if j == *i { *c } else { d })
                    .collect(),
                Tamper::Insert(i, c) => {
                    let mut text = right.clone();
                    text.insert(*i, *c);
                    text
                }
                Tamper::Truncate(n) => right[..*n].to_string(),
                Tamper::PlusForZero(n) => {
                    // The `n`th byte written with a leading 0 (wrapping round), if there is one.
                    let pairs: Vec<usize> = (0..32)
                        .map(|i| 2 * i)
                        .filter(|&i| right[i..].starts_with('0'))
                        .collect();
                    match pairs.get(n % pairs.len().max(1)) {
                        Some(&at) => format!("{}+{}", &right[..at], &right[at + 1..]),
                        None => right.clone(),
                    }
                }
                Tamper::OtherBody => hmac_hex(&secret, &[body.as_slice(), b"x"].concat()),
                Tamper::OtherSecret => hmac_hex(&[secret.as_slice(), b"x"].concat(), &body),
                Tamper::Arbitrary(text) => text.clone(),
            };
            // Only the right digest, in either case and with blanks around it, is accepted.
            let expected = given.trim().eq_ignore_ascii_case(&right);
            prop_assert_eq!(
                signature_valid(&secret, &body, &given),
                expected,
                "header {:?}",
                given
            );
            Ok(())
        },
    );
}

#[test]
fn repository_urls_compare_by_host_and_path() {
    let input = || {
        (
            "[a-z0-9]{1,8}(\\.[a-z]{2,3})?",
            "[a-z0-9_-]{1,8}(/[a-z0-9_.-]{1,8}){0,2}",
            tricky_string(),
            tricky_string(),
        )
    };
    fuzz(
        "repository_urls_compare_by_host_and_path",
        input,
        |(host, path, a, b)| {
            let path = path
                .trim_end_matches(".git")
                .trim_end_matches('/')
                .to_string();
            prop_assume!(!path.is_empty() && !path.ends_with(".git"));
            let spellings = [
                format!("https://{host}/{path}"),
                format!("https://{host}/{path}.git"),
                format!("https://user:token@{host}/{path}/"),
                format!("ssh://git@{host}/{path}.git"),
                format!("git@{host}:{path}"),
                format!("HTTPS://{}/{path}", host.to_uppercase()),
            ];
            for left in &spellings {
                for right in &spellings {
                    prop_assert!(same_repository(left, right), "{left} vs {right}");
                }
                let other = format!("https://{host}/{path}-other");
                prop_assert!(!same_repository(left, &other), "{left} vs {other}");
            }
            // Anything at all: total, reflexive and symmetric.
            prop_assert!(same_repository(&a, &a));
            prop_assert_eq!(same_repository(&a, &b), same_repository(&b, &a));
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// The diff
// ---------------------------------------------------------------------------------------

const SERVER_METADATA: [&str; 6] = [
    "managedFields",
    "resourceVersion",
    "uid",
    "generation",
    "creationTimestamp",
    "selfLink",
];

fn string_map(keys: impl Strategy<Value = String>) -> impl Strategy<Value = Value> {
    prop::collection::vec((keys, json_leaf()), 0..4)
        .prop_map(|p| Value::Object(p.into_iter().collect()))
}

/// A Kubernetes-shaped object: metadata with server-owned fields, annotations (tether's
/// own among them), labels, status and content; now and then something malformed.
fn k8s_object() -> impl Strategy<Value = Value> {
    let metadata_key = prop_oneof![
        prop::sample::select(&SERVER_METADATA[..]).prop_map(str::to_string),
        prop::sample::select(&["name", "namespace", "finalizers"][..]).prop_map(str::to_string),
        json_key(),
    ];
    let annotation_key = prop_oneof![
        Just(APPLIED_FIELDS_ANNOTATION.to_string()),
        Just("kubectl.kubernetes.io/last-applied-configuration".to_string()),
        "[a-z./]{1,10}",
    ];
    let metadata = (
        prop::collection::vec((metadata_key, json_value(2)), 0..8),
        prop::option::of(prop_oneof![string_map(annotation_key), json_leaf()]),
        prop::option::of(prop_oneof![string_map("[a-z./]{1,10}"), json_leaf()]),
    )
        .prop_map(|(pairs, annotations, labels)| {
            let mut map: serde_json::Map<String, Value> = pairs.into_iter().collect();
            if let Some(a) = annotations {
                map.insert("annotations".into(), a);
            }
            if let Some(l) = labels {
                map.insert("labels".into(), l);
            }
            Value::Object(map)
        });
    let top_key = prop_oneof![
        prop::sample::select(&["apiVersion", "kind", "status", "data", "spec"][..])
            .prop_map(str::to_string),
        json_key(),
    ];
    prop_oneof![
        8 => (
            prop::collection::vec((top_key, json_value(3)), 0..6),
            prop::option::of(prop_oneof![4 => metadata, 1 => json_leaf()]),
        )
            .prop_map(|(pairs, metadata)| {
                let mut map: serde_json::Map<String, Value> = pairs.into_iter().collect();
                if let Some(m) = metadata {
                    map.insert("metadata".into(), m);
                }
                Value::Object(map)
            }),
        1 => json_value(3),
    ]
}

#[test]
fn normalize_drops_server_fields_and_is_idempotent() {
    fuzz(
        "normalize_drops_server_fields_and_is_idempotent",
        k8s_object,
        |object| {
            let normal = normalize(&object);
            prop_assert_eq!(&normalize(&normal), &normal, "normalize is not idempotent");
            let Some(map) = normal.as_object() else {
                prop_assert_eq!(&normal, &object, "only objects change");
                return Ok(());
            };
            prop_assert!(!map.contains_key("status"));
            for (key, value) in object.as_object().expect("an object normalises to one") {
                if key != "status" && key != "metadata" {
                    prop_assert_eq!(map.get(key), Some(value), "{} changed", key);
                }
            }
            if let Some(metadata) = map.get("metadata").and_then(Value::as_object) {
                for field in SERVER_METADATA {
                    prop_assert!(!metadata.contains_key(field), "{field} survived");
                }
                for field in ["annotations", "labels"] {
                    prop_assert!(
                        metadata
                            .get(field)
                            .and_then(Value::as_object)
                            .is_none_or(|m| !m.is_empty())
                    );
                }
                let annotations = metadata.get("annotations").and_then(Value::as_object);
                prop_assert!(
                    annotations.is_none_or(|a| !a.contains_key(APPLIED_FIELDS_ANNOTATION))
                );
            }
            Ok(())
        },
    );
}

/// A pair of Secrets (either may be absent) and every secret text that went into them.
#[derive(Debug, Clone)]
struct SecretPair {
    before: Option<Value>,
    after: Option<Value>,
    secrets: Vec<String>,
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// How a Secret holds one value: encoded in `data`, raw (not base64) in `data`, in
/// `stringData`, or as something that is not a string at all.
#[derive(Debug, Clone, Copy)]
enum Held {
    Encoded,
    Raw,
    StringData,
    NotAString,
}

fn secret_side() -> impl Strategy<Value = Option<Vec<(String, usize, Held)>>> {
    let held = prop::sample::select(
        &[
            Held::Encoded,
            Held::Encoded,
            Held::Raw,
            Held::StringData,
            Held::NotAString,
        ][..],
    );
    let key =
        prop::sample::select(&["a", "b", "c", "tls.key", "a-b_c"][..]).prop_map(str::to_string);
    prop::option::of(prop::collection::vec((key, 0..3usize, held), 0..6))
}

fn secret_pair() -> impl Strategy<Value = SecretPair> {
    // Three secrets per case, so that a key often holds the same value on both sides.
    let plain = "[A-Z0-9]{12,24}";
    (
        [plain, plain, plain],
        secret_side(),
        secret_side(),
        prop::bool::ANY,
        prop::sample::select(&["object", "string", "array"][..]),
    )
        .prop_map(|(pool, before, after, last_applied, data_shape)| {
            let mut secrets: Vec<String> = Vec::new();
            for plain in &pool {
                secrets.push(plain.clone());
                secrets.push(base64(plain.as_bytes()));
            }
            let build = |entries: Option<Vec<(String, usize, Held)>>| {
                let entries = entries?;
                let mut data = serde_json::Map::new();
                let mut string_data = serde_json::Map::new();
                for (key, which, held) in entries {
                    let plain = &pool[which];
                    match held {
                        Held::Encoded => data.insert(key, json!(base64(plain.as_bytes()))),
                        Held::Raw => data.insert(key, json!(format!("{plain}!"))),
                        Held::StringData => string_data.insert(key, json!(plain)),
                        Held::NotAString => data.insert(key, json!([plain])),
                    };
                }
                let mut object =
                    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
                if last_applied {
                    let record = json!({"data": data, "stringData": string_data}).to_string();
                    object["metadata"]["annotations"] = json!({
                        "kubectl.kubernetes.io/last-applied-configuration": record,
                        "team": "x",
                    });
                }
                object["data"] = match data_shape {
                    "object" => Value::Object(data),
                    "string" => json!(pool.concat()),
                    _ => json!(pool),
                };
                if !string_data.is_empty() {
                    object["stringData"] = Value::Object(string_data);
                }
                Some(object)
            };
            SecretPair {
                before: build(before),
                after: build(after),
                secrets,
            }
        })
}

/// The value of each key of a Secret as the API server would store it.
fn stored(object: Option<&Value>) -> BTreeMap<String, Vec<u8>> {
    use base64::Engine;
    let mut values = BTreeMap::new();
    let Some(object) = object else { return values };
    if let Some(data) = object.get("data").and_then(Value::as_object) {
        for (key, value) in data {
            let text = value.as_str().unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .unwrap_or_else(|_| text.as_bytes().to_vec());
            values.insert(key.clone(), bytes);
        }
    }
    if let Some(data) = object.get("stringData").and_then(Value::as_object) {
        for (key, value) in data {
            values.insert(
                key.clone(),
                value.as_str().unwrap_or_default().as_bytes().to_vec(),
            );
        }
    }
    values
}

#[test]
fn secret_diffs_never_show_a_value() {
    fuzz("secret_diffs_never_show_a_value", secret_pair, |pair| {
        let SecretPair {
            mut before,
            mut after,
            secrets,
        } = pair;
        let (old, new) = (stored(before.as_ref()), stored(after.as_ref()));
        redact_secret_pair(before.as_mut(), after.as_mut());
        let (old_yaml, new_yaml) = (to_yaml(before.as_ref()), to_yaml(after.as_ref()));
        let shown = [
            unified_diff(&old_yaml, &new_yaml, "Secret/s"),
            old_yaml,
            new_yaml,
            serde_json::to_string(&(&before, &after)).expect("JSON prints"),
        ]
        .concat();
        for secret in &secrets {
            prop_assert!(!shown.contains(secret.as_str()), "{secret} leaked: {shown}");
        }
        // Each key is still there, with a marker that says only whether it changed.
        for (object, mine, theirs, side) in
            [(&before, &old, &new, "old"), (&after, &new, &old, "new")]
        {
            let Some(object) = object else { continue };
            prop_assert!(object.get("stringData").is_none());
            let data = object.get("data").and_then(Value::as_object);
            prop_assert_eq!(data.map(|d| d.len()).unwrap_or(0), mine.len());
            for (key, value) in mine {
                let expected = match theirs.get(key) {
                    Some(other) if other != value => format!("<redacted: {side} value>"),
                    _ => "<redacted>".to_string(),
                };
                prop_assert_eq!(
                    data.and_then(|d| d.get(key)),
                    Some(&json!(expected)),
                    "key {}",
                    key
                );
            }
        }
        Ok(())
    });
}

/// Rebuilds `after` from `before` and a unified diff of the two; `None` if the diff does
/// not fit `before`.
fn patch(before: &str, diff: &str) -> Option<String> {
    let old: Vec<&str> = before.split_inclusive('\n').collect();
    let mut out = String::new();
    let mut next = 0;
    let mut last_added = false;
    for line in diff.split_inclusive('\n').skip(2) {
        if let Some(header) = line.strip_prefix("@@ -") {
            let (start, count) = match header.split(' ').next()?.split_once(',') {
                Some((s, c)) => (s.parse::<usize>().ok()?, c.parse::<usize>().ok()?),
                None => (header.split(' ').next()?.parse().ok()?, 1),
            };
            // A hunk that takes no line of `before` inserts after line `start`.
            let first = if count == 0 {
                start
            } else {
                start.checked_sub(1)?
            };
            out.extend(old.get(next..first)?.iter().copied());
            next = first;
            last_added = false;
        } else if line.trim_end_matches('\n') == "\\ No newline at end of file" {
            if last_added {
                out.pop().filter(|c| *c == '\n')?;
            }
        } else {
            let (kind, text) = line.split_at(1);
            let same =
                |old_line: &str| old_line.trim_end_matches('\n') == text.trim_end_matches('\n');
            match kind {
                " " => {
                    out.push_str(old.get(next).filter(|l| same(l))?);
                    next += 1;
                }
                "-" => {
                    old.get(next).filter(|l| same(l))?;
                    next += 1;
                }
                "+" => out.push_str(text),
                _ => return None,
            }
            last_added = kind == "+";
        }
    }
    out.extend(old.get(next..)?.iter().copied());
    Some(out)
}

/// Lines that look like a diff's own syntax, to confuse a reader of the diff.
#[rustfmt::skip]
const DIFF_LINES: &[&str] = &[
    "a", "b", "c", "", "  x: 1", "\\", "@@ -1 +1 @@", "--- a", "+b", " c",
];

fn diff_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(DIFF_LINES).prop_map(str::to_string),
                // Not a lone `\r`: the diff (like Git) reads it as a line break.
                1 => "[^\r\n]{0,8}",
            ],
            0..40,
        ),
        prop::sample::select(&["\n", "\r\n"][..]),
        prop::bool::ANY,
    )
        .prop_map(|(lines, newline, trailing)| {
            let mut text = lines.join(newline);
            if trailing && !lines.is_empty() {
                text.push_str(newline);
            }
            text
        })
}

#[test]
fn unified_diffs_rebuild_the_desired_text() {
    let input = || {
        prop_oneof![
            3 => (diff_text(), diff_text()),
            1 => diff_text().prop_map(|t| (t.clone(), t)),
            1 => (json_value(3), json_value(3))
                .prop_map(|(a, b)| (to_yaml(Some(&a)), to_yaml(Some(&b)))),
        ]
    };
    fuzz(
        "unified_diffs_rebuild_the_desired_text",
        input,
        |(before, after)| {
            let diff = unified_diff(&before, &after, "ConfigMap/ns/c");
            if before == after {
                prop_assert_eq!(diff, "");
                return Ok(());
            }
            prop_assert!(
                diff.starts_with("--- live: ConfigMap/ns/c\n+++ desired: ConfigMap/ns/c\n"),
                "{}",
                diff
            );
            prop_assert_eq!(patch(&before, &diff), Some(after), "diff {:?}", diff);
            Ok(())
        },
    );
}

/// How a large text is rewritten: lines kept every `n`th, reversed, rotated, or shuffled in
/// blocks (each the worst case of some diff algorithm).
#[derive(Debug, Clone, Copy)]
enum Rewrite {
    KeepEvery(usize),
    Reverse,
    Rotate(usize),
    SwapBlocks(usize),
}

#[test]
fn unified_diffs_of_large_rewrites_stay_fast() {
    // A ConfigMap of thousands of lines replaced wholesale (a regenerated dashboard, a
    // reformatted bundle) must not stall a plan.
    let input = || {
        let rewrite = prop_oneof![
            (0..4usize).prop_map(Rewrite::KeepEvery),
            Just(Rewrite::Reverse),
            (0..1000usize).prop_map(Rewrite::Rotate),
            (1..500usize).prop_map(Rewrite::SwapBlocks),
        ];
        (0..5_000usize, 0..5_000usize, rewrite)
    };
    fuzz(
        "unified_diffs_of_large_rewrites_stay_fast",
        input,
        |(old_lines, new_lines, rewrite)| {
            let old: Vec<String> = (0..old_lines).map(|i| format!("  old-{i}\n")).collect();
            let new: Vec<String> = match rewrite {
                Rewrite::KeepEvery(n) => (0..new_lines)
                    .map(|i| {
                        if n > 0 && i % (n + 1) == 0 {
                            format!("  old-{i}\n")
                        } else {
                            format!("  new-{i}\n")
                        }
                    })
                    .collect(),
                Rewrite::Reverse => old.iter().rev().cloned().collect(),
                Rewrite::Rotate(by) => {
                    let mut lines = old.clone();
                    let by = by.min(lines.len());
                    lines.rotate_left(by);
                    lines
                }
                Rewrite::SwapBlocks(size) => old.chunks(size).rev().flatten().cloned().collect(),
            };
            let (before, after) = (old.concat(), new.concat());
            let diff = unified_diff(&before, &after, "ConfigMap/ns/big");
            prop_assert_eq!(diff.is_empty(), before == after);
            prop_assert_eq!(patch(&before, &diff), Some(after));
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// Regressions: what fuzzing found, pinned
// ---------------------------------------------------------------------------------------

#[test]
fn a_line_of_unclosed_defaults_substitutes_in_linear_time() {
    // 10,000 of these took 36 s when each `${A:=` searched the rest of the line for its `}`.
    let text = "${A:=${".repeat(100_000);
    let started = Instant::now();
    let outcome = substitute(&text, &Vars::new());
    let took = started.elapsed();
    assert!(took <= CASE_BUDGET, "{} bytes took {took:?}", text.len());
    assert_eq!(outcome, Ok(text), "nothing to substitute");
}

#[test]
fn a_signature_with_a_plus_for_a_zero_is_refused() {
    // `u8::from_str_radix("+a", 16)` is 10: the hex decoder took `+a` for `0a`.
    let secret = b"s3cret";
    let (body, right) = (0..)
        .map(|n: u32| n.to_string())
        .map(|body| {
            let right = hmac_hex(secret, body.as_bytes());
            (body, right)
        })
        .find(|(_, right)| right.starts_with('0'))
        .expect("some body's digest starts with 0");
    assert!(signature_valid(secret, body.as_bytes(), &right));
    let forged = format!("+{}", &right[1..]);
    assert!(
        !signature_valid(secret, body.as_bytes(), &forged),
        "{forged}"
    );
}
