//! The metrics profiler end to end: a cardinality bomb (one label with 50,000
//! distinct values) sent over gRPC is named first by `GET /api/v1/profile`,
//! label and all, with a distinct-value estimate within 5 %; owners and the
//! effect of a drop rule are accounted; `tailfold top --once` renders it.

mod common;

use std::process::Command;

use common::*;
use tailfold::api::v1;
use tailfold::profile::ProfileReport;

const T0: i64 = 1_800_000_000_000;
const BOMB: usize = 50_000;

const RULES: &str = r#"
mapping_rules:
  - name: drop-debug
    filter: '__name__:debug_*'
    drop: true
"#;

async fn get(url: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let response = reqwest::blocking::get(&url).expect("http get");
        (response.status().as_u16(), response.text().expect("body"))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cardinality_bomb_is_named_with_its_label() {
    let mut service = start_service_with(RULES, T0, "profile: {owner_label: team, period_ms: 60000}\n").await;
    // The bomb: one series per user, owned by team checkout.
    for chunk in (0..BOMB).collect::<Vec<_>>().chunks(5_000) {
        let batch = chunk
            .iter()
            .map(|user| {
                let user = format!("user-{user}");
                series(
                    &[
                        ("__name__", "api_requests_total"),
                        ("user_id", &user),
                        ("route", "/cart"),
                        ("team", "checkout"),
                    ],
                    v1::Kind::Counter,
                    vec![point(1.0, T0 + 1_000)],
                )
            })
            .collect();
        service.write(batch).await.expect("write bomb");
    }
    // Busy but tame: 200 series with many samples each, owned by team infra.
    let tame = (0..200)
        .map(|pod| {
            let pod = format!("pod-{pod}");
            let points = (0..300).map(|i| point(0.5, T0 + i)).collect();
            series(
                &[("__name__", "cpu_seconds"), ("pod", &pod), ("team", "infra")],
                v1::Kind::Gauge,
                points,
            )
        })
        .collect();
    service.write(tame).await.expect("write tame");
    // Dropped by rule: 30 series, 2 samples each, no owner.
    let debug = (0..30)
        .map(|i| {
            let id = i.to_string();
            series(
                &[("__name__", "debug_queue"), ("id", &id)],
                v1::Kind::Gauge,
                vec![point(1.0, T0), point(2.0, T0 + 1)],
            )
        })
        .collect();
    service.write(debug).await.expect("write debug");
    service.clock.set(T0 + 10_000);

    let http = service.handle().http_addr();
    let (status, body) = get(format!("http://{http}/api/v1/profile?limit=5")).await;
    assert_eq!(status, 200, "{body}");
    let report: ProfileReport = serde_json::from_str(&body).expect("profile json");

    let top = &report.top_by_series[0];
    assert_eq!(top.metric, "api_requests_total", "{body}");
    assert_eq!(top.tenant, "default");
    let estimate = top.active_series as f64;
    assert!(
        (estimate - BOMB as f64).abs() / (BOMB as f64) < 0.05,
        "series estimate {estimate}"
    );
    assert_eq!(top.samples, BOMB as u64);
    let label = &top.labels[0];
    assert_eq!(label.label, "user_id", "{:?}", top.labels);
    assert!(!label.exact);
    let distinct = label.distinct_values as f64;
    assert!(
        (distinct - BOMB as f64).abs() / (BOMB as f64) < 0.05,
        "user_id estimate {distinct}"
    );
    assert!(top.labels[1..]
        .iter()
        .all(|other| other.distinct_values == 1 && other.exact));

    // By samples the tame metric leads: 200 series x 300 samples.
    assert_eq!(report.top_by_samples[0].metric, "cpu_seconds");
    assert_eq!(report.top_by_samples[0].samples, 60_000);
    assert_eq!(report.top_by_samples[0].active_series, 200);

    let owners: Vec<_> = report.owners.iter().map(|o| (o.owner.as_str(), o.samples)).collect();
    assert_eq!(owners[1..], [("infra", 60_000), ("<none>", 60)], "{owners:?}");
    assert_eq!(owners[0].0, "checkout");
    assert_eq!(owners[0].1, BOMB as u64);

    let rule = &report.rules[0];
    assert_eq!(
        (
            rule.rule.as_str(),
            rule.kind.as_str(),
            rule.series_removed,
            rule.samples_removed,
            rule.samples_dropped
        ),
        ("drop-debug", "drop", 30, 60, 60)
    );

    // Broken queries are refused with the reason.
    let (status, body) = get(format!("http://{http}/api/v1/profile?limit=lots")).await;
    assert_eq!(status, 400);
    assert!(body.contains("\"lots\""), "{body}");

    // `tailfold top --once` renders the same profile as tables.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tailfold"))
            .args(["top", "--once", "--limit", "5", "--width", "200", "--target"])
            .arg(format!("http://{http}"))
            .output()
            .expect("run tailfold top")
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|line| line.starts_with("TOP METRICS BY ACTIVE SERIES"))
        .expect(&text);
    let first_row: Vec<&str> = lines[header + 2].split_whitespace().collect();
    assert_eq!(first_row[..2], ["default", "api_requests_total"], "{text}");
    assert!(
        first_row[2].starts_with('~'),
        "an estimated series count is marked: {text}"
    );
    assert!(first_row[4].starts_with("user_id=~"), "{text}");
    let shown: f64 = first_row[4].trim_start_matches("user_id=~").parse().unwrap();
    assert_eq!(shown, distinct);
    assert!(text.contains("USAGE BY TEAM"), "{text}");
    let rule_row = lines.iter().find(|line| line.starts_with("drop-debug")).expect(&text);
    assert_eq!(
        rule_row.split_whitespace().collect::<Vec<_>>(),
        ["drop-debug", "drop", "30", "0", "30", "60", "60"]
    );

    // One metric: every label with its distinct values.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tailfold"))
            .args(["top", "--once", "--metric", "api_requests_total", "--target"])
            .arg(format!("http://{http}"))
            .output()
            .expect("run tailfold top")
    })
    .await
    .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|line| line.starts_with("LABELS OF api_requests_total"))
        .expect(&text);
    let rows: Vec<Vec<&str>> = lines[header + 2..header + 5]
        .iter()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["user_id", &distinct.to_string(), "estimate"], "{text}");
    assert_eq!(rows[1..], [["route", "1", "yes"], ["team", "1", "yes"]], "{text}");
    assert!(!text.contains("cpu_seconds"), "{text}");

    // Without --once it redraws the screen on every interval until stopped.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tailfold"))
        .args(["top", "--interval", "100ms", "--limit", "2", "--target"])
        .arg(format!("http://{http}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run tailfold top");
    let mut stdout = child.stdout.take().unwrap();
    let frames = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        // Generous: a slow machine still draws three frames well within this.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while seen.windows(4).filter(|w| *w == b"\x1b[2J").count() < 3 && std::time::Instant::now() < deadline {
            let read = std::io::Read::read(&mut stdout, &mut buffer).unwrap();
            if read == 0 {
                break;
            }
            seen.extend_from_slice(&buffer[..read]);
        }
        String::from_utf8(seen).unwrap()
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    // Split at each redraw: the first piece is empty, the last may be cut short.
    let drawn: Vec<&str> = frames.split("\x1b[2J\x1b[H").collect();
    assert!(drawn.len() >= 4 && drawn[0].is_empty(), "{frames:?}");
    assert!(
        drawn[1..3].iter().all(|frame| frame.contains("api_requests_total")),
        "{frames:?}"
    );

    // An unreachable service is a clear error, not a hang or a panic.
    let output = Command::new(env!("CARGO_BIN_EXE_tailfold"))
        .args(["top", "--once", "--target", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("/api/v1/profile"), "{error}");
    assert!(
        error.contains("connection refused") && error.contains("--target"),
        "{error}"
    );
    // loadgen words it alike, for both protocols.
    for protocol in ["grpc", "remote-write"] {
        let output = Command::new(env!("CARGO_BIN_EXE_tailfold"))
            .args([
                "loadgen",
                "--duration",
                "1s",
                "--protocol",
                protocol,
                "--target",
                "http://127.0.0.1:1",
            ])
            .output()
            .unwrap();
        assert!(!output.status.success());
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(
            error.contains("connection refused") && error.contains("--target"),
            "{protocol}: {error}"
        );
    }
    service.shutdown().await;
}
