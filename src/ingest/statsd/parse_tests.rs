//! Unit tests of the statsd line parser: every type, sample rates and weights,
//! tags and sanitising, and each malformed form with its message.

use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::*;

fn parse(raw: &str) -> Result<(StatsdLine<'_>, Vec<f64>), StatsdError> {
    let mut values = Vec::new();
    parse_line(raw, &mut values).map(|line| (line, values))
}

fn points(raw: &str) -> Vec<Point> {
    let (line, values) = parse(raw).unwrap();
    let mut out = Vec::new();
    line.push_points(&values, &mut SmallRng::seed_from_u64(7), &mut out);
    out
}

fn labels(raw: &str) -> String {
    let (line, _) = parse(raw).unwrap();
    line.labels(&IngestLimits::default()).unwrap().to_string()
}

#[test]
fn reads_every_type() {
    for (raw, kind) in [
        ("a:1|c", Kind::Counter),
        ("a:1|g", Kind::Gauge),
        ("a:1|ms", Kind::Distribution),
        ("a:1|h", Kind::Distribution),
        ("a:1|d", Kind::Distribution),
    ] {
        let (line, values) = parse(raw).unwrap();
        assert_eq!((line.kind, values), (kind, vec![1.0]), "{raw}");
        assert_eq!((line.sample_rate, line.tags, line.timestamp_ms), (1.0, "", None));
    }
    // Counter deltas may be negative or fractional.
    assert_eq!(parse("a:-2.5|c").unwrap().1, [-2.5]);
    assert_eq!(parse("a:1e3|ms").unwrap().1, [1000.0]);
}

#[test]
fn reads_set_members_as_hashes_of_their_text() {
    let (line, values) = parse("users:alice:bob:alice|s|@0.5|#env:prod").unwrap();
    assert_eq!((line.kind, line.tags), (Kind::Set, "env:prod"));
    assert_eq!(values, [set_member("alice"), set_member("bob"), set_member("alice")]);
    assert_ne!(values[0], values[1]);
    // Text, as in statsd: "1" and "1.0" are two members.
    assert_ne!(parse("u:1|s").unwrap().1, parse("u:1.0|s").unwrap().1);
    // An integer below 2^52, so the f64 carries it exactly; the rate is ignored.
    assert!(values
        .iter()
        .all(|v| v.fract() == 0.0 && *v >= 0.0 && *v < 2f64.powi(52)));
    assert!(points("u:x|s|@0.1").iter().all(|point| point.weight == 1));
    assert_eq!(parse("u:|s").unwrap_err().to_string(), r#""u:|s": empty value"#);
}

#[test]
fn reads_multi_values_tags_timestamp_and_skips_unknown_sections() {
    let (line, values) = parse("lat:1:2.5:3|ms|#env:prod,canary|c:abc123|T1700000000|@0.5|x").unwrap();
    assert_eq!(values, [1.0, 2.5, 3.0]);
    assert_eq!(line.tags, "env:prod,canary");
    assert_eq!(line.sample_rate, 0.5);
    assert_eq!(line.timestamp_ms, Some(1_700_000_000_000));
    assert!(points("lat:1:2|ms|T5")
        .iter()
        .all(|point| point.timestamp_ms == Some(5_000)));
}

#[test]
fn counters_undo_the_sample_rate_exactly() {
    let scaled: Vec<f64> = points("c:3:1|c|@0.5").iter().map(|point| point.value).collect();
    assert_eq!(scaled, [6.0, 2.0]);
    assert_eq!(points("c:1|c|@0.1")[0].value, 10.0);
    assert!(points("c:1|c|@0.25").iter().all(|point| point.weight == 1));
    // A gauge is a current value: the rate changes nothing.
    assert_eq!(points("g:7|g|@0.5")[0], Point::new(7.0, None, None));
}

#[test]
fn distribution_weights_are_exact_when_whole_and_right_on_average_otherwise() {
    let sampled = points("t:12|ms|@0.1");
    assert_eq!((sampled[0].value, sampled[0].weight), (12.0, 10));
    assert_eq!(points("t:1|d|@0.01")[0].weight, 100);
    assert_eq!(points("t:1|h")[0].weight, 1);
    let mut rng = SmallRng::seed_from_u64(42);
    for rate in [0.3, 0.7, 0.15, 0.001_3] {
        let trials = 100_000;
        let inverse = 1.0 / rate;
        let mut total = 0u64;
        for _ in 0..trials {
            let weight = stochastic_weight(rate, &mut rng);
            assert!(weight == inverse.floor() as u32 || weight == inverse.ceil() as u32);
            total += u64::from(weight);
        }
        let mean = total as f64 / trials as f64;
        assert!(
            (mean - inverse).abs() / inverse < 0.02,
            "rate {rate}: mean weight {mean}, expected {inverse}"
        );
    }
}

#[test]
fn tags_become_labels_and_names_are_sanitised() {
    assert_eq!(
        labels("api.latency-ms:1|ms|#env:prod,canary,http.status:200,url:http://x:80"),
        r#"api_latency_ms{canary="true",env="prod",http_status="200",url="http://x:80"}"#
    );
    assert_eq!(labels("9lives:1|c|#1st:a,é:b"), r#"_9lives{_="b",_1st="a"}"#);
    // An empty value means "no label", as in Prometheus; an empty tag is skipped.
    assert_eq!(labels("a:1|c|#empty:,,b:1,"), r#"a{b="1"}"#);
    assert_eq!(sanitize_name("already_fine"), Cow::Borrowed("already_fine"));
    assert_eq!(sanitize_name("a b/c"), "a_b_c");
}

#[test]
fn label_rules_are_the_grpc_ones() {
    let limits = IngestLimits {
        max_label_value_bytes: 8,
        max_labels_per_series: 3,
        ..IngestLimits::default()
    };
    let huge = format!("a:1|c|#big:{}", "x".repeat(9));
    for (raw, message) in [
        (
            huge.as_str(),
            r#""a:1|c|#big:xxxxxxxxx": label "big" has a value of 9 bytes, limit is 8 (ingest.max_label_value_bytes)"#,
        ),
        (
            "a:1|c|#x:1,y:2,z:3",
            r#""a:1|c|#x:1,y:2,z:3": 4 labels, limit is 3 (ingest.max_labels_per_series)"#,
        ),
        ("a:1|c|#x:1,x:2", r#""a:1|c|#x:1,x:2": duplicate label name "x""#),
        (
            "a:1|ms|#quantile:0.5",
            r#""a:1|ms|#quantile:0.5": label "quantile" is reserved for distribution outputs (quantile, threshold)"#,
        ),
        (
            "a:1|d|#threshold:1",
            r#""a:1|d|#threshold:1": label "threshold" is reserved for distribution outputs (quantile, threshold)"#,
        ),
        (
            "a:1|c|#..x:1",
            r#""a:1|c|#..x:1": invalid label name "__x": expected [a-zA-Z_][a-zA-Z0-9_]* not starting with __"#,
        ),
        (
            "a:1|c|#:v",
            r#""a:1|c|#:v": invalid label name "": expected [a-zA-Z_][a-zA-Z0-9_]* not starting with __"#,
        ),
    ] {
        let (line, _) = parse(raw).unwrap();
        assert_eq!(line.labels(&limits).unwrap_err().to_string(), message);
    }
    // `quantile` is only reserved where tailfold adds it.
    let (line, _) = parse("a:1|g|#quantile:0.5").unwrap();
    assert!(line.labels(&limits).is_ok());
}

#[test]
fn refuses_each_malformed_form_with_its_reason() {
    let long = format!("{}:1|c|@0", "n".repeat(100));
    for (raw, message) in [
        ("no_colon", r#""no_colon": no ':' between metric name and value"#),
        ("no_colon|c", r#""no_colon|c": no ':' between metric name and value"#),
        ("name:|c", r#""name:|c": empty value"#),
        ("name:1::2|ms", r#""name:1::2|ms": empty value"#),
        ("name:abc|c", r#""name:abc|c": value "abc" is not a finite number"#),
        ("name:nan|g", r#""name:nan|g": value "nan" is not a finite number"#),
        ("name:inf|ms", r#""name:inf|ms": value "inf" is not a finite number"#),
        (
            "name:1",
            r#""name:1": no '|type' after the value (c, g, ms, h, d or s)"#,
        ),
        (
            "name:1|zz",
            r#""name:1|zz": unknown type "zz": expected c, g, ms, h, d or s"#,
        ),
        ("name:1|", r#""name:1|": unknown type "": expected c, g, ms, h, d or s"#),
        (
            "name:1|c|@0",
            r#""name:1|c|@0": sample rate "0" must be a number in (0, 1]"#,
        ),
        (
            "name:1|c|@1.5",
            r#""name:1|c|@1.5": sample rate "1.5" must be a number in (0, 1]"#,
        ),
        (
            "name:1|c|@x",
            r#""name:1|c|@x": sample rate "x" must be a number in (0, 1]"#,
        ),
        (
            "name:1|c|@-0.5",
            r#""name:1|c|@-0.5": sample rate "-0.5" must be a number in (0, 1]"#,
        ),
        (
            "name:1|c|@NaN",
            r#""name:1|c|@NaN": sample rate "NaN" must be a number in (0, 1]"#,
        ),
        (
            "name:1|ms|@1e-10",
            r#""name:1|ms|@1e-10": sample rate "1e-10" is too small: one point stands for at most 4294967295 samples"#,
        ),
        (":1|c", r#"":1|c": empty metric name"#),
        (
            "name:+1:2|g",
            r#""name:+1:2|g": a gauge line mixing relative (+/-) and absolute values; send them on lines of their own"#,
        ),
        (
            "_e{5,4}:title|text",
            r#""_e{5,4}:title|text": unsupported: dogstatsd events (_e{...})"#,
        ),
        (
            "_sc|db|0",
            r#""_sc|db|0": unsupported: dogstatsd service checks (_sc|...)"#,
        ),
        (
            "name:1|c|Tsoon",
            r#""name:1|c|Tsoon": timestamp "soon" is not whole unix seconds, e.g. T1700000000"#,
        ),
        (
            "name:1|c|T",
            r#""name:1|c|T": timestamp "" is not whole unix seconds, e.g. T1700000000"#,
        ),
        (
            "name:1|c|@0.5|@0.5",
            r#""name:1|c|@0.5|@0.5": more than one '|@' section"#,
        ),
        ("name:1|c|#a|#b", r#""name:1|c|#a|#b": more than one '|#' section"#),
    ] {
        assert_eq!(parse(raw).unwrap_err().to_string(), message, "{raw}");
    }
    // Long input is cut to 64 bytes in the message.
    let message = parse(&long).unwrap_err().to_string();
    assert_eq!(
        message,
        format!("{:?}: sample rate \"0\" must be a number in (0, 1]", "n".repeat(64))
    );
    // The metric name is bounded like any label value.
    let limits = IngestLimits {
        max_label_value_bytes: 4,
        ..IngestLimits::default()
    };
    let (line, _) = parse("a.b.c:1|c").unwrap();
    assert_eq!(
        line.labels(&limits).unwrap_err().to_string(),
        r#""a.b.c:1|c": label "__name__" has a value of 5 bytes, limit is 4 (ingest.max_label_value_bytes)"#
    );
}

#[test]
fn names_that_sanitise_alike_are_reported_once_each_naming_the_first() {
    let mut names = NameCollisions::default();
    assert_eq!(names.check("api.latency", "api_latency"), None);
    assert_eq!(names.check("api.latency", "api_latency"), None, "the same name again");
    assert_eq!(names.check("api_latency", "api_latency"), Some("api.latency"));
    assert_eq!(names.check("api-latency", "api_latency"), Some("api.latency"));
    assert_eq!(names.check("api-latency", "api_latency"), None, "reported once");
    assert_eq!(names.check("other", "other"), None);
}

#[test]
fn relative_gauges_change_the_held_value_as_etsy_statsd_does() {
    let (line, values) = parse("q:-2.5|g").unwrap();
    assert!(line.relative);
    assert_eq!(values, [-2.5]);
    assert!(!parse("q:7|g").unwrap().0.relative);
    // What a change applies to: `held::tests`.
}

#[test]
fn plain_digit_values_skip_the_float_parser_and_agree_with_it() {
    for text in [
        "0",
        "7",
        "007",
        "123456789012345",
        "1234567890123456",
        "99999999999999999999",
        "1.5",
        "+3",
        "-0",
        "1e3",
    ] {
        assert_eq!(
            parse_value(text).map(f64::to_bits),
            text.parse::<f64>().ok().map(f64::to_bits),
            "{text}"
        );
    }
    assert_eq!(parse_value(""), None);
    assert_eq!(parse_value("1x"), None);
}

#[test]
fn byte_split_is_str_split_on_a_byte() {
    for text in ["", "a", "a|b", "|", "a||b|", "é|ü|"] {
        assert_eq!(
            byte_split(text, b'|').collect::<Vec<_>>(),
            text.split('|').collect::<Vec<_>>(),
            "{text:?}"
        );
    }
}

#[test]
fn one_scan_finds_the_first_colon_and_bar_and_stops_at_the_bar() {
    let marks = |raw: &str| {
        let marks = Marks::find(raw.as_bytes());
        (marks.colon, marks.bar, marks.more_colons)
    };
    assert_eq!(marks("a:1|c"), (Some(1), Some(3), false));
    assert_eq!(marks("a:1:2|ms"), (Some(1), Some(5), true));
    // Colons in tags, after the bar, are not values.
    assert_eq!(marks("a:1|c|#k:v,x:y"), (Some(1), Some(3), false));
    assert_eq!(marks("a|b:1|c"), (None, Some(1), false));
    assert_eq!(marks("a:1"), (Some(1), None, false));
    assert_eq!(marks(""), (None, None, false));
    assert_eq!(marks("é:1|c"), (Some(2), Some(4), false));
}

#[test]
fn the_single_pass_parser_keeps_every_form_apart() {
    let (line, values) = parse("a:1|c|#k:v,x:y").unwrap();
    assert_eq!((line.name, line.tags, values), ("a", "k:v,x:y", vec![1.0]));
    let (line, values) = parse("a.b:1:2:3|ms|@0.5").unwrap();
    assert_eq!((line.name, line.sample_rate, values), ("a.b", 0.5, vec![1.0, 2.0, 3.0]));
    assert_eq!(parse("é:1|c").unwrap().0.name, "é");
    assert_eq!(
        parse("a:1|c|").unwrap().0.kind,
        Kind::Counter,
        "an empty section is skipped"
    );
    for (raw, message) in [
        ("a|b:1|c", r#""a|b:1|c": no ':' between metric name and value"#),
        ("|:1|c", r#""|:1|c": no ':' between metric name and value"#),
        ("a:1:|c", r#""a:1:|c": empty value"#),
        ("a::1|c", r#""a::1|c": empty value"#),
        (":|c", r#"":|c": empty metric name"#),
        (":1", r#"":1": empty metric name"#),
        ("a:|", r#""a:|": unknown type "": expected c, g, ms, h, d or s"#),
        (
            "a:1|c:x|#t",
            r#""a:1|c:x|#t": unknown type "c:x": expected c, g, ms, h, d or s"#,
        ),
        ("a:1:x|c", r#""a:1:x|c": value "x" is not a finite number"#),
        (
            "a:+1:-2:3|g",
            r#""a:+1:-2:3|g": a gauge line mixing relative (+/-) and absolute values; send them on lines of their own"#,
        ),
    ] {
        assert_eq!(parse(raw).unwrap_err().to_string(), message, "{raw}");
    }
}

#[test]
fn lines_are_split_on_newlines_like_slice_split() {
    for body in [
        &b""[..],
        b"a",
        b"a\n",
        b"\n",
        b"a\nb",
        b"a\r\nb\n\n",
        b"\n\nx\n",
        b"\xff\n\xfe",
    ] {
        let ranges: Vec<&[u8]> = ByteRanges::new(body, b'\n').map(|range| &body[range]).collect();
        assert_eq!(ranges, body.split(|b| *b == b'\n').collect::<Vec<_>>(), "{body:?}");
    }
    // Long enough for memchr's wide steps, with a newline right at each end.
    let long: Vec<u8> = (0..300)
        .map(|at| if at % 37 == 0 || at == 299 { b'\n' } else { b'x' })
        .collect();
    let ranges: Vec<&[u8]> = ByteRanges::new(&long, b'\n').map(|range| &long[range]).collect();
    assert_eq!(ranges, long.split(|b| *b == b'\n').collect::<Vec<_>>());
}
