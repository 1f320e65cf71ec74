//! The container image's contract, without a container engine: the config it
//! ships parses, listens on the ports the Dockerfile exposes and keeps data in
//! the declared volume; the health check command works against a live service
//! and fails against a dead one.

mod common;

use std::path::Path;
use std::process::Command;

use tailfold::config::ServiceSettings;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn dockerfile_matches_the_container_config() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let settings = ServiceSettings::load(&repo().join("config/container.yaml")).expect("container config");
    let expose = dockerfile
        .lines()
        .find(|line| line.starts_with("EXPOSE "))
        .expect("EXPOSE");
    for port in [settings.grpc_listen.port(), settings.http_listen.port()] {
        assert!(
            expose.split_whitespace().any(|p| p == port.to_string()),
            "{port} not in {expose}"
        );
    }
    assert!(settings.grpc_listen.ip().is_unspecified() && settings.http_listen.ip().is_unspecified());
    assert!(expose.contains("8125/udp"));
    let volumes = dockerfile
        .lines()
        .find(|line| line.starts_with("VOLUME "))
        .expect("VOLUME");
    assert!(
        volumes.contains(&format!("\"{}\"", settings.data_dir.display())),
        "{volumes}"
    );
    assert!(volumes.contains("\"/etc/tailfold\""));
    assert!(dockerfile.contains("COPY config/container.yaml /etc/tailfold/tailfold.yaml"));
    assert!(dockerfile.contains(r#"CMD ["run", "-c", "/etc/tailfold/tailfold.yaml"]"#));
    let health = dockerfile
        .lines()
        .find(|line| line.contains("CMD [\"tailfold\", \"health\""))
        .expect("HEALTHCHECK");
    assert!(
        health.contains(&format!("127.0.0.1:{}", settings.http_listen.port())),
        "{health}"
    );
    assert!(dockerfile.lines().any(|line| line.starts_with("USER tailfold")));
    // The rules file the image ships next to it is valid.
    assert_eq!(settings.rules_file, repo().join("config/rules.yaml"));
    tailfold::rules::RuleSet::load(&settings.rules_file).expect("shipped rules");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_command_reports_a_live_and_a_dead_service() {
    let mut service = common::start_service("", 1_800_000_000_000).await;
    let target = format!("http://{}", service.handle().http_addr());
    let live = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tailfold"))
            .args(["health", "--target", &target])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(live.status.success(), "{}", String::from_utf8_lossy(&live.stderr));
    service.shutdown().await;
    let dead = Command::new(env!("CARGO_BIN_EXE_tailfold"))
        .args(["health", "--target", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!dead.status.success());
    assert!(String::from_utf8_lossy(&dead.stderr).contains("/-/healthy"));
}
