//! The admin endpoints (`/metrics`, `/-/reload`, `/-/rules`, `/api/v1/profile`,
//! `/api/v1/cluster` and its drain and undrain) behind their guard: with an admin token set they need exactly it (an
//! ingest token is refused, so no ingest client can reload rules); without
//! one they are served on a loopback listener only.

mod common;

use std::net::SocketAddr;

use common::*;

const ADMIN: &str = "admin-token-0123456789abcdef";
const INGEST: &str = "ingest-token-of-team-a-4242";

async fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut request = client.request(method.parse().unwrap(), format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    (response.status().as_u16(), response.text().await.unwrap())
}

const ENDPOINTS: [(&str, &str); 7] = [
    ("GET", "/metrics"),
    ("POST", "/-/reload"),
    ("GET", "/-/rules"),
    ("GET", "/api/v1/profile"),
    ("GET", "/api/v1/cluster"),
    ("POST", "/api/v1/cluster/drain"),
    ("POST", "/api/v1/cluster/undrain"),
];

#[tokio::test]
async fn with_an_admin_token_only_it_opens_the_admin_endpoints() {
    let config = format!(
        "auth: {{tokens: [{{tenant: team-a, token: {INGEST}}}], admin_token: {ADMIN}}}\nprofile: {{enabled: true}}"
    );
    let service = start_service_with("", 1_800_000_000_000, &config).await;
    let http = service.handle().http_addr();
    for (method, path) in ENDPOINTS {
        let (status, body) = call(http, method, path, None).await;
        assert_eq!(
            (status, body.as_str()),
            (
                401,
                "missing admin token: send the header \"authorization: Bearer <admin token>\"\n"
            ),
            "{path}"
        );
        let (status, body) = call(http, method, path, Some(INGEST)).await;
        assert_eq!(
            (status, body.as_str()),
            (403, "an ingest token cannot use the admin endpoints\n"),
            "{path}"
        );
        let (status, body) = call(http, method, path, Some("not-the-admin-token-at-all")).await;
        assert_eq!((status, body.as_str()), (401, "invalid admin token\n"), "{path}");
        let (status, body) = call(http, method, path, Some(ADMIN)).await;
        if path == "/-/reload" {
            // Reached the reloader, which has no rules file to read in this test.
            assert_eq!(status, 400, "{body}");
            assert!(body.contains("rules.yaml: cannot read"), "{body}");
        } else if path.starts_with("/api/v1/cluster") {
            // Reached the handler, which has no cluster to show or drain here.
            assert_eq!(
                (status, body.as_str()),
                (404, "not a cluster instance: no cluster section in its config\n"),
                "{path}"
            );
        } else {
            assert_eq!(status, 200, "{path}: {body}");
        }
    }
    // Only the admin's reload was attempted: the refused ones never reached the reloader.
    let snapshot = service.handle().telemetry().snapshot();
    assert_eq!((snapshot.reloads_succeeded, snapshot.reloads_failed), (0, 1));
    // Ingest still takes the ingest token.
    let (status, _) = call(http, "GET", "/-/healthy", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn without_an_admin_token_only_a_loopback_listener_serves_them() {
    let loopback = start_service_with("", 1_800_000_000_000, "").await;
    let (status, body) = call(loopback.handle().http_addr(), "GET", "/metrics", None).await;
    assert_eq!(status, 200, "{body}");

    let data_dir = tempfile::tempdir().unwrap();
    let config = format!(
        "grpc: {{listen: \"127.0.0.1:0\"}}\nhttp: {{listen: \"0.0.0.0:0\"}}\ndata_dir: {}\nflush: {{progress_interval_ms: 0}}\n",
        data_dir.path().display()
    );
    let settings = tailfold::config::ServiceSettings::parse(&config, std::path::Path::new("t/tailfold.yaml")).unwrap();
    let rules = tailfold::rules::RuleSet::parse("", "rules.yaml").unwrap();
    let handle = tailfold::server::start(
        settings,
        rules,
        std::sync::Arc::new(tailfold::clock::ManualClock::new(0)),
    )
    .await
    .unwrap();
    let open = SocketAddr::from(([127, 0, 0, 1], handle.http_addr().port()));
    for (method, path) in ENDPOINTS {
        let (status, body) = call(open, method, path, None).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("auth.admin_token_file is not set"), "{body}");
    }
    let (status, _) = call(open, "GET", "/-/ready", None).await;
    assert_eq!(status, 200, "probes stay open");
    handle.shutdown().await.unwrap();
}
