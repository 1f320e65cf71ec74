//! Rules hot reload under a running service: a valid edit of the rules file
//! takes effect at the next window boundary (a late sample for the window
//! before it is still folded under the old rules), an invalid edit is refused
//! with file, rule and field named while the old rules stay in force, and
//! SIGHUP and `POST /-/reload` reload too.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tailfold::api::v1;
use tailfold::clock::ManualClock;
use tailfold::config::ServiceSettings;
use tailfold::rules::RuleSet;
use tailfold::server::start;

const T0: i64 = 1_800_000_000_000;

fn rules(aggregations: &str) -> String {
    format!(
        r#"defaults:
  storage_policies: ["10s:1d"]
mapping_rules:
  - name: requests-rule
    filter: '__name__:requests'
    aggregations: [{aggregations}]
    storage_policies: ["10s:1d"]
"#
    )
}

/// A service reading its rules from `dir/rules.yaml`, checked every `watch_ms` (0: not watched).
async fn start_with_file(dir: &Path, text: &str, watch_ms: u64, now_ms: i64) -> TestService {
    let rules_path = dir.join("rules.yaml");
    std::fs::write(&rules_path, text).unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let config = format!(
        "grpc: {{listen: \"127.0.0.1:0\"}}\nhttp: {{listen: \"127.0.0.1:0\"}}\ndata_dir: {}\nrules_file: {}\nflush: {{interval_ms: 3600000, progress_interval_ms: 0}}\nreload: {{watch_interval_ms: {watch_ms}}}\n",
        data_dir.path().display(),
        rules_path.display()
    );
    let settings = ServiceSettings::parse(&config, &dir.join("tailfold.yaml")).expect("config");
    let clock = Arc::new(ManualClock::new(now_ms));
    let handle = start(settings, RuleSet::load(&rules_path).unwrap(), clock.clone())
        .await
        .expect("start");
    let client = v1::ingest_client::IngestClient::connect(format!("http://{}", handle.grpc_addr()))
        .await
        .unwrap();
    TestService {
        handle: Some(handle),
        clock,
        real_clock: false,
        data_dir,
        client,
    }
}

async fn http(method: &'static str, url: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let client = reqwest::blocking::Client::new();
        let response = match method {
            "POST" => client.post(&url).send(),
            _ => client.get(&url).send(),
        }
        .expect("http");
        (response.status().as_u16(), response.text().unwrap())
    })
    .await
    .unwrap()
}

async fn rules_status(service: &TestService) -> serde_json::Value {
    let (status, body) = http("GET", format!("http://{}/-/rules", service.handle().http_addr())).await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

/// Polls `/-/rules` until `done` holds (generous: the machine may be slow).
async fn wait_for_rules(service: &TestService, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = rules_status(service).await;
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "rules never reached the expected state: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(service: &mut TestService, value: f64, timestamp_ms: i64) {
    let series = series(
        &[("__name__", "requests")],
        v1::Kind::Counter,
        vec![point(value, timestamp_ms)],
    );
    let response = service.write(vec![series]).await.unwrap();
    assert_eq!(response.accepted, 1);
}

fn names_in_window(service: &TestService, start_ms: i64) -> Vec<(String, f64)> {
    let mut names: Vec<_> = service
        .records()
        .into_iter()
        .filter(|record| record.window_start_ms == start_ms)
        .map(|record| (record.name.clone(), value(&record)))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_apply_at_the_next_boundary_and_invalid_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = start_with_file(dir.path(), &rules("sum"), 20, T0 + 2_000).await;
    send(&mut service, 1.0, T0 + 1_000).await;

    // A valid edit: staged for the next 10 s boundary after the clock (T0 + 10 s).
    std::fs::write(dir.path().join("rules.yaml"), rules("count")).unwrap();
    let status = wait_for_rules(&service, |status| status["rule_sets"].as_array().unwrap().len() == 2).await;
    let sets = status["rule_sets"].as_array().unwrap();
    assert_eq!(sets[1]["effective_from_ms"], T0 + 10_000);
    assert_eq!(sets[1]["loaded_at_ms"], T0 + 2_000);
    assert_eq!(
        (sets[0]["in_force"].as_bool(), sets[1]["in_force"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(sets[1]["source"].as_str().unwrap().contains("[count]"));

    send(&mut service, 2.0, T0 + 5_000).await;
    service.clock.set(T0 + 11_000);
    // Late for the window before the boundary, yet still on time: the old rules fold it.
    send(&mut service, 4.0, T0 + 9_000).await;
    send(&mut service, 8.0, T0 + 12_000).await;
    service.flush_at(T0 + 30_000).await;
    assert_eq!(names_in_window(&service, T0), [("requests:sum".to_string(), 7.0)]);
    assert_eq!(
        names_in_window(&service, T0 + 10_000),
        [("requests:count".to_string(), 1.0)]
    );
    let status = rules_status(&service).await;
    let in_force: Vec<_> = status["rule_sets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|set| set["in_force"] == true)
        .map(|set| set["effective_from_ms"].clone())
        .collect();
    assert_eq!(in_force, [serde_json::json!(T0 + 10_000)]);

    // An invalid edit: refused, named, counted; the rules in force stay.
    let broken = "mapping_rules:\n  - name: requests-rule\n    filter: '__name__:requests'\n    aggregatons: [sum]\n";
    std::fs::write(dir.path().join("rules.yaml"), broken).unwrap();
    let status = wait_for_rules(&service, |status| !status["last_error"].is_null()).await;
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("rules.yaml"), "{error}");
    assert!(error.contains("aggregatons") && error.contains("line 4"), "{error}");
    let url = format!("http://{}/metrics", service.handle().http_addr());
    let (_, metrics) = http("GET", url).await;
    assert!(
        metrics.contains("tailfold_rules_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tailfold_rules_last_reload_success 0"), "{metrics}");
    assert!(
        metrics.contains("tailfold_rules_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );

    // A bad value (not a bad key) names the rule and the field.
    let bad_value = rules("p1000x");
    std::fs::write(dir.path().join("rules.yaml"), &bad_value).unwrap();
    let (code, body) = http("POST", format!("http://{}/-/reload", service.handle().http_addr())).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("rules.yaml") && body.contains("requests-rule") && body.contains("aggregations"),
        "{body}"
    );

    send(&mut service, 16.0, T0 + 32_000).await;
    service.flush_at(T0 + 50_000).await;
    assert_eq!(
        names_in_window(&service, T0 + 30_000),
        [("requests:count".to_string(), 1.0)]
    );
    assert_eq!(rules_status(&service).await["rule_sets"].as_array().unwrap().len(), 1);

    // POST /-/reload of a fixed file stages it; of an unchanged file does nothing.
    std::fs::write(dir.path().join("rules.yaml"), rules("sum, count")).unwrap();
    let (code, body) = http("POST", format!("http://{}/-/reload", service.handle().http_addr())).await;
    assert_eq!(code, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    // Either this call or the watcher staged it; the other finds it unchanged.
    assert!(reply["status"] == "staged" || reply["status"] == "unchanged", "{reply}");
    let status = wait_for_rules(&service, |status| status["rule_sets"].as_array().unwrap().len() == 2).await;
    assert_eq!(status["rule_sets"][1]["effective_from_ms"], T0 + 60_000);
    assert!(status["last_error"].is_null());
    let (_, body) = http("POST", format!("http://{}/-/reload", service.handle().http_addr())).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "unchanged"
    );
    service.shutdown().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_an_unwatched_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = start_with_file(dir.path(), &rules("sum"), 0, T0 + 2_000).await;
    std::fs::write(dir.path().join("rules.yaml"), rules("count")).unwrap();
    // Unwatched: nothing happens by itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rules_status(&service).await["rule_sets"].as_array().unwrap().len(), 1);
    let killed = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_for_rules(&service, |status| status["rule_sets"].as_array().unwrap().len() == 2).await;
    assert_eq!(status["rule_sets"][1]["effective_from_ms"], T0 + 10_000);
    send(&mut service, 1.0, T0 + 12_000).await;
    service.flush_at(T0 + 30_000).await;
    assert_eq!(
        names_in_window(&service, T0 + 10_000),
        [("requests:count".to_string(), 1.0)]
    );
    service.shutdown().await;
}
