//! The two parsers a user feeds by hand, the trace loader and the TOML
//! config, on generated input: whatever the text, a typed error or a value,
//! never a panic. Fields come from pools of the values that broke parsers
//! here before (overflowing counts, NaN, years-long durations, calendar
//! dates that do not exist) mixed with valid ones, so most cases get past
//! the header and into the rows.

use convoy::Config;
use convoy_cli::trace::{parse, TraceError};
use proptest::prelude::*;

/// Field values for trace rows: valid, malformed and out of range.
const FIELDS: &[&str] = &[
    "0",
    "1",
    "0.5",
    "-1",
    "1e308",
    "1e9",
    "1e10",
    "NaN",
    "inf",
    "-0",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "",
    " 7 ",
    "\"12\"",
    "\"",
    "high",
    "Critical",
    "urgent",
    "4",
    "5",
    "0x10",
    "é",
    "2023-11-16 18:15:46.6805900",
    "2023-11-16T18:15:46.68+00:00",
    "2023-13-40 25:61:61.1",
    "2023-02-29 00:00:00",
    "2024-02-29 23:59:59.9999999-08:00",
    "9999-12-31 23:59:59",
    "0000-01-01 00:00:00",
];

const HEADERS: &[&str] = &[
    "",
    "TIMESTAMP,ContextTokens,GeneratedTokens",
    "arrival_s,priority,tokens",
    "arrival_s,priority,tokens,deadline_ms",
    "tokens,arrival_s",
    "arrival_s,tokens,tokens",
    "arrival_s,deadline_ms",
    "\u{feff}arrival_s,priority,tokens",
    "# a comment",
];

/// A valid row for each header of `FORMATS`.
fn valid_row(format: usize) -> BoxedStrategy<String> {
    let arrival = (0u32..100_000).prop_map(|ms| format!("{}", f64::from(ms) / 1000.0));
    let tokens = 0u32..5000;
    let level = prop::sample::select(
        &[
            "critical",
            "high",
            "normal",
            "low",
            "background",
            "0",
            "4",
            "",
        ][..],
    );
    match format {
        0 => (0u32..60, 0u32..1_000_000, tokens, 0u32..500)
            .prop_map(|(s, us, t, g)| format!("2023-11-16 18:15:{s:02}.{us:06}0,{t},{g}"))
            .boxed(),
        1 | 2 => (arrival, level, tokens)
            .prop_map(|(a, l, t)| format!("{a},{l},{t}"))
            .boxed(),
        _ => (arrival, level, tokens, prop::option::of(1u32..10_000))
            .prop_map(|(a, l, t, d)| {
                format!("{a},{l},{t},{}", d.map_or(String::new(), |d| d.to_string()))
            })
            .boxed(),
    }
}

/// Headers of the formats `valid_row` writes: Azure, generic, generic
/// with no header, generic with deadlines.
const FORMATS: [&str; 4] = [
    "TIMESTAMP,ContextTokens,GeneratedTokens",
    "arrival_s,priority,tokens",
    "",
    "arrival_s,priority,tokens,deadline_ms",
];

/// Rows of one format, valid but for at most one field replaced from
/// `FIELDS` and at most one row replaced by a random one, under a header
/// that is usually the format's own.
fn trace_text() -> impl Strategy<Value = String> {
    let mess = prop::collection::vec(prop::sample::select(FIELDS), 0..6).prop_map(|f| f.join(","));
    (0usize..FORMATS.len())
        .prop_flat_map(move |format| {
            (
                Just(format),
                prop::collection::vec(valid_row(format), 1..12),
                prop::option::weighted(
                    0.3,
                    (
                        any::<prop::sample::Index>(),
                        any::<prop::sample::Index>(),
                        prop::sample::select(FIELDS),
                    ),
                ),
                prop::option::weighted(0.2, (any::<prop::sample::Index>(), mess.clone())),
                prop::option::weighted(0.2, prop::sample::select(HEADERS)),
                prop::bool::ANY,
            )
        })
        .prop_map(|(format, mut rows, field, row, header, crlf)| {
            if let Some((r, f, value)) = field {
                let r = r.index(rows.len());
                let mut fields: Vec<&str> = rows[r].split(',').collect();
                let f = f.index(fields.len());
                fields[f] = value;
                rows[r] = fields.join(",");
            }
            if let Some((r, mess)) = row {
                let r = r.index(rows.len());
                rows[r] = mess;
            }
            let newline = if crlf { "\r\n" } else { "\n" };
            let mut text = header.unwrap_or(FORMATS[format]).to_owned();
            for r in rows {
                text.push_str(newline);
                text.push_str(&r);
            }
            text
        })
}

/// Keys, some valid in some sections, some not.
const KEYS: &[&str] = &[
    "max_batch_size",
    "max_batch_tokens",
    "max_batch_bytes",
    "max_queue_delay_ms",
    "target_batch_ms",
    "preferred_batch_sizes",
    "max_wait_ms",
    "policy",
    "shards",
    "lane_capacity",
    "cpu_workers",
    "shutdown_timeout_ms",
    "urgent_slack_ms",
    "critical",
    "high",
    "low",
    "p99_ms",
    "timeout_ms",
    "slots",
    "tokens",
    "speed",
    "cost_per_hour",
    "name",
    "bogus",
];

const VALUES: &[&str] = &[
    "0",
    "1",
    "3",
    "64",
    "-1",
    "0.5",
    "1e300",
    "1e12",
    "nan",
    "inf",
    "18446744073709551615",
    "9223372036854775807",
    "\"aging\"",
    "\"fifo\"",
    "\"reject\"",
    "\"delay\"",
    "\"least_loaded\"",
    "\"nope\"",
    "true",
    "[]",
    "[8, 4]",
    "[0]",
    "[1000000000000]",
    "{}",
    "\"x\"",
];

const SECTIONS: &[&str] = &[
    "",
    "[intake]",
    "[batching]",
    "[ordering]",
    "[deadlines]",
    "[deadlines.default_ms]",
    "[placement]",
    "[slo.high]",
    "[slo.nope]",
    "[[workers]]",
    "[batching",
];

fn config_text() -> impl Strategy<Value = String> {
    let entry = (prop::sample::select(KEYS), prop::sample::select(VALUES))
        .prop_map(|(k, v)| format!("{k} = {v}"));
    let section = (
        prop::sample::select(SECTIONS),
        prop::collection::vec(entry, 0..5),
    )
        .prop_map(|(s, entries)| format!("{s}\n{}", entries.join("\n")));
    prop::collection::vec(section, 0..5).prop_map(|s| s.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A trace parses to arrival-ordered rows or to an error that names a
    /// line of the text (1-based, within it).
    #[test]
    fn a_trace_parses_or_names_its_bad_line(text in trace_text()) {
        let lines = text.lines().count();
        match parse("gen", &text) {
            Ok(t) => {
                prop_assert!(!t.requests.is_empty());
                prop_assert!(t.requests.windows(2).all(|w| w[0].arrival <= w[1].arrival));
            }
            Err(TraceError::Malformed { line, .. }) => {
                prop_assert!(line >= 1 && line <= lines, "line {line} of {lines}");
            }
            Err(TraceError::Empty { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected {other}"),
        }
    }

    /// Arbitrary text, not just CSV-shaped: no panic.
    #[test]
    fn any_text_is_a_trace_or_an_error(text in any::<String>()) {
        let _ = parse("any", &text);
    }

    /// A config parses to one that validates (the build's first step), or
    /// to an error.
    #[test]
    fn a_config_parses_or_is_refused(text in config_text()) {
        if let Ok(c) = Config::from_toml_str(&text) {
            prop_assert!(c.validate().is_ok(), "parsed but invalid: {text}");
        }
    }

    #[test]
    fn any_text_is_a_config_or_an_error(text in any::<String>()) {
        let _ = Config::from_toml_str(&text);
    }
}
