//! The logic behind `tailfold cluster init`, `status` and `drain`:
//! instance specs parsed with clear errors, the placement created in etcd,
//! the status read back, the instance to drain found.

use std::time::Duration;

use super::etcd::EtcdClient;
use super::placement::{InstanceSpec, Placement};
use super::status::ClusterStatus;

/// Parses `ID=HOST:PORT,http=HOST:PORT` (the http part optional).
///
/// ```
/// let spec = tailfold::cluster::cli::parse_instance("a=127.0.0.1:4772,http=127.0.0.1:4771").unwrap();
/// assert_eq!((spec.id.as_str(), spec.endpoint.as_str(), spec.http.as_str()), ("a", "127.0.0.1:4772", "127.0.0.1:4771"));
/// assert!(tailfold::cluster::cli::parse_instance("a").unwrap_err().contains("ID=HOST:PORT"));
/// ```
pub fn parse_instance(text: &str) -> Result<InstanceSpec, String> {
    let usage = || format!("--instance {text:?}: expected ID=HOST:PORT[,http=HOST:PORT]");
    let (id, rest) = text.split_once('=').ok_or_else(usage)?;
    let mut parts = rest.split(',');
    let endpoint = parts.next().unwrap_or_default();
    let mut http = String::new();
    for part in parts {
        match part.split_once('=') {
            Some(("http", address)) => http = address.to_string(),
            _ => return Err(format!("{}: unknown part {part:?}", usage())),
        }
    }
    let valid_id = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid_id {
        return Err(format!("{}: the id {id:?} is not 1 or more of [A-Za-z0-9._-]", usage()));
    }
    for address in std::iter::once(endpoint).chain((!http.is_empty()).then_some(http.as_str())) {
        if address.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("{}: {address:?} is not HOST:PORT", usage()));
        }
    }
    Ok(InstanceSpec {
        id: id.to_string(),
        endpoint: endpoint.to_string(),
        http,
    })
}

async fn connect(etcd: &[String]) -> Result<EtcdClient, String> {
    EtcdClient::connect(etcd, Duration::from_secs(5))
        .await
        .map_err(|error| error.to_string())
}

/// Creates the placement of `cluster`; returns what was created.
pub async fn init(
    etcd: &[String],
    cluster: &str,
    shards: u32,
    replicas: u32,
    instances: &[String],
) -> Result<Placement, String> {
    let specs = instances
        .iter()
        .map(|text| parse_instance(text))
        .collect::<Result<Vec<_>, _>>()?;
    let placement = Placement::initial(cluster, shards, replicas, specs).map_err(|error| error.to_string())?;
    let client = connect(etcd).await?;
    placement.create(&client).await.map_err(|error| error.to_string())?;
    Ok(placement)
}

/// Stages the placement change `request` on `cluster` (see [`super::change`]).
pub async fn change(
    etcd: &[String],
    cluster: &str,
    request: &super::change::Request,
    margin_ms: u64,
) -> Result<super::change::Staged, String> {
    let client = connect(etcd).await?;
    super::change::stage(
        &client,
        cluster,
        request,
        margin_ms,
        crate::clock::Clock::now_ms(&crate::clock::SystemClock),
    )
    .await
    .map_err(|error| error.to_string())
}

/// Reads the status of `cluster`.
pub async fn status(etcd: &[String], cluster: &str) -> Result<ClusterStatus, String> {
    let client = connect(etcd).await?;
    ClusterStatus::read(&client, cluster)
        .await
        .map_err(|error| error.to_string())?
        .ok_or_else(|| format!("cluster {cluster}: no placement in etcd; create it with `tailfold cluster init`"))
}

/// The HTTP address (`HOST:PORT`) of a live `instance` of `cluster`, for
/// `tailfold cluster drain` / `undrain`: the placement's, else the one it registered.
pub async fn admin_address(etcd: &[String], cluster: &str, instance: &str) -> Result<String, String> {
    let status = status(etcd, cluster).await?;
    let Some(found) = status
        .sets
        .iter()
        .flat_map(|set| &set.instances)
        .find(|i| i.id == instance)
    else {
        return Err(format!(
            "cluster {cluster}: instance {instance:?} is not in the placement"
        ));
    };
    if !found.live {
        return Err(format!(
            "cluster {cluster}: instance {instance} is down (not registered in etcd): nothing to drain"
        ));
    }
    if found.http.is_empty() {
        return Err(format!(
            "cluster {cluster}: instance {instance} has no HTTP address in the placement; POST /api/v1/cluster/drain on it directly"
        ));
    }
    Ok(found.http.clone())
}

/// What `tailfold check` says of a cluster instance's rules file.
pub struct RulesCheck {
    /// Whether the file's content is the cluster's rules.
    pub matches: bool,
    /// The report, one line per fact.
    pub report: String,
}

/// Compares the rules file `file` with the cluster's rules in etcd and
/// lists the rules every registered instance folds.
pub async fn check_rules(etcd: &[String], cluster: &str, file: &std::path::Path) -> Result<RulesCheck, String> {
    let client = connect(etcd).await?;
    let text = std::fs::read_to_string(file).map_err(|error| format!("rules file {}: {error}", file.display()))?;
    let file_hash = super::rules::hash_text(&text);
    let stored = super::rules::read(&client, cluster)
        .await
        .map_err(|error| error.to_string())?;
    let mut report = String::new();
    let matches = match &stored {
        None => {
            report.push_str(&format!(
                "cluster {cluster}: no rules published yet (the first instance to start publishes its file)\n"
            ));
            false
        }
        Some(stored) => {
            let rules = &stored.rules;
            report.push_str(&format!(
                "cluster {cluster}: rules version {} (hash {}, effective from {}, published by {})\n",
                rules.version,
                rules.hash,
                rules
                    .effective_from_ms
                    .map_or("the start".to_string(), |from| format!("{from} ms")),
                rules.published_by
            ));
            let matches = rules.hash == file_hash;
            report.push_str(&format!(
                "  rules file {} (hash {file_hash}): {}\n",
                file.display(),
                if matches {
                    "matches the cluster's rules"
                } else {
                    "DIFFERS from the cluster's rules"
                }
            ));
            matches
        }
    };
    if let Some(status) = ClusterStatus::read(&client, cluster)
        .await
        .map_err(|error| error.to_string())?
    {
        for instance in status.sets.iter().flat_map(|set| &set.instances) {
            let line = match (&instance.rules_hash, &instance.rules_differ) {
                (_, Some(reason)) => format!("RULES DIFFER: {reason}"),
                (Some(hash), None) => format!("folds {hash} (cluster version {})", instance.rules_version.unwrap_or(0)),
                (None, None) => "not registered (down)".to_string(),
            };
            report.push_str(&format!("  instance {}: {line}\n", instance.id));
        }
    }
    Ok(RulesCheck { matches, report })
}
