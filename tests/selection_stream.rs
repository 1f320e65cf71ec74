//! The trace selection stream over gRPC: a subscriber sees, as windows flush,
//! the exemplar picked for each emitted quantile, filtered by tenant and
//! metric, and the same selections land in the selection files.

mod common;

use std::time::Duration;

use common::*;
use tailfold::api::v1::{self, Kind};

const T0: i64 = 1_800_000_000_000;
const RULES: &str = r#"
mapping_rules:
  - name: latency
    filter: '__name__:{checkout,search}_seconds'
    aggregations: [count, p50, p99]
"#;

#[tokio::test]
async fn subscribers_get_the_selections_of_their_tenant_and_metric() {
    let mut service = start_service(RULES, T0).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", service.handle().grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = v1::selections_client::SelectionsClient::new(channel);
    let mut checkout = client
        .subscribe(v1::SubscribeRequest {
            tenant: "shop".into(),
            metric: "checkout_*".into(),
        })
        .await
        .unwrap()
        .into_inner();

    for (tenant, name) in [
        ("shop", "checkout_seconds"),
        ("shop", "search_seconds"),
        ("other", "checkout_seconds"),
    ] {
        let points = (1..=100)
            .map(|i| traced_point(i as f64 / 100.0, T0 + i, [i as u8 + 1; 16], [2; 8]))
            .collect();
        let mut request = tonic::Request::new(v1::WriteRequest {
            series: vec![series(&[("__name__", name)], Kind::Distribution, points)],
        });
        request.metadata_mut().insert("x-scope-orgid", tenant.parse().unwrap());
        assert_eq!(service.client.write(request).await.unwrap().into_inner().accepted, 100);
    }
    service.flush_at(T0 + 60_000).await;

    let mut received = Vec::new();
    while let Ok(Ok(Some(selection))) = tokio::time::timeout(Duration::from_millis(500), checkout.message()).await {
        received.push(selection);
    }
    assert_eq!(received.len(), 2, "p50 and p99 of shop's checkout only: {received:#?}");
    for selection in &received {
        assert_eq!(selection.tenant, "shop");
        assert!(selection
            .series
            .iter()
            .any(|l| l.name == "__name__" && l.value == "checkout_seconds"));
        assert_eq!(selection.window_start_ms, T0);
        assert_eq!(selection.storage_policy, "10s:2d");
        assert_eq!(selection.trace_id.len(), 16);
        // Values were i/100 with trace id [i+1; 16]: the exemplar is that exact sample.
        let i = (selection.exemplar_value * 100.0).round() as u8;
        assert_eq!(selection.trace_id, vec![i + 1; 16]);
        assert_eq!(selection.exemplar_timestamp_ms, T0 + i as i64);
    }
    let p99 = received.iter().find(|s| s.aggregation == "p99").expect("p99 selection");
    assert_eq!(p99.quantile, 0.99);
    assert!((p99.reported_value - 0.99).abs() / 0.99 < 0.01);

    // The file holds the same picks, for every tenant and metric.
    let files = service.selections();
    assert_eq!(files.len(), 6);
    for selection in &received {
        assert!(files.iter().any(|f| f.tenant == "shop"
            && f.aggregation == selection.aggregation
            && f.exemplar.trace_id == hex::encode(&selection.trace_id)));
    }

    // A tenant in metadata that contradicts the request is refused.
    let mut request = tonic::Request::new(v1::SubscribeRequest {
        tenant: "shop".into(),
        metric: String::new(),
    });
    request.metadata_mut().insert("x-scope-orgid", "other".parse().unwrap());
    assert_eq!(
        client.subscribe(request).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    // A broken glob is a clear error.
    let status = client
        .subscribe(v1::SubscribeRequest {
            tenant: String::new(),
            metric: "[a-".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // Shutdown is not held up by a connected subscriber: its stream ends.
    service.shutdown().await;
    let end = tokio::time::timeout(Duration::from_secs(5), checkout.message()).await;
    assert!(
        matches!(end, Ok(Ok(None)) | Ok(Err(_))),
        "stream still open after shutdown: {end:?}"
    );
}
