//! Rule matching against a 100-rule set (10 drop, 70 mapping, 20 rollup rules,
//! globs, alternatives, classes and negations), for six-label counter series:
//! - `warm`: the per-series `MatchCache` already holds the plan (hash + lookup);
//! - `cold`: a fresh cache, so every series runs every filter and is inserted;
//! - `resolve_uncached`: `RuleSet::resolve` alone, no cache.
//!
//! Each iteration resolves 1,000 distinct series (series hash included).

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tailfold::model::{series_key, Kind, Labels, SeriesKey};
use tailfold::rules::{MatchCache, RuleSet};

/// The service binary's allocator (`src/main.rs`), so the figures are the
/// service's: mimalloc also asks for transparent huge pages for its arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERIES: usize = 10_000;
const PER_ITER: usize = 1_000;

/// 100 rules; about 35% of the bench series match a mapping rule, 10% a rollup.
fn rules_yaml() -> String {
    let mut yaml = String::from("defaults:\n  storage_policies: [\"10s:2d\"]\nmapping_rules:\n");
    for i in 0..10 {
        yaml.push_str(&format!(
            "  - {{ name: drop-{i}, filter: '__name__:debug_{i}_* !keep:true', drop: true }}\n"
        ));
    }
    for i in 0..70 {
        let filter = match i % 4 {
            0 => format!("__name__:http_requests_{i} service:svc-*"),
            1 => format!("__name__:http_requests_{i}* !status:5*"),
            2 => format!("__name__:http_requests_{i} endpoint:/api/v1/resource{{1,2,3}}*"),
            _ => format!("__name__:http_requests_{i} status:[45]0?"),
        };
        let policies = if i % 2 == 0 {
            "[\"10s:2d\"]"
        } else {
            "[\"10s:2d\", \"1m:40d\"]"
        };
        yaml.push_str(&format!(
            "  - {{ name: map-{i}, filter: '{filter}', aggregations: [sum, rate], storage_policies: {policies} }}\n"
        ));
    }
    yaml.push_str("rollup_rules:\n");
    for i in 0..20 {
        yaml.push_str(&format!(
            "  - name: rollup-{i}\n    filter: '__name__:http_requests_{j}'\n    rollup:\n      name: http_requests_{j}:by_service\n      group_by: [service, status]\n      aggregations: [sum, rate]\n    storage_policies: [\"1m:40d\"]\n",
            j = i * 7
        ));
    }
    yaml
}

fn bench(c: &mut Criterion) {
    let rules = RuleSet::parse(&rules_yaml(), "bench-100-rules.yaml").expect("valid rules");
    assert_eq!(rules.rule_count(), 100);
    let series: Vec<(SeriesKey, Labels)> = (0..SERIES)
        .map(|i| {
            let labels = common::counter_labels(i);
            (series_key(common::TENANT, &labels), labels)
        })
        .collect();
    let hash = |labels: &Labels| series_key(common::TENANT, labels);

    let mut group = c.benchmark_group("rules_100");
    group.throughput(Throughput::Elements(PER_ITER as u64));

    let warm = MatchCache::new();
    for (key, labels) in &series {
        warm.get_or_resolve(*key, labels, Kind::Counter, &rules);
    }
    let mut next = 0;
    group.bench_function("warm", |b| {
        b.iter(|| {
            let start = (next % (SERIES / PER_ITER)) * PER_ITER;
            next += 1;
            for (_, labels) in &series[start..start + PER_ITER] {
                black_box(warm.get_or_resolve(hash(labels), labels, Kind::Counter, &rules));
            }
        })
    });

    let mut next = 0;
    group.bench_function("cold", |b| {
        b.iter_batched(
            MatchCache::new,
            |cold| {
                let start = (next % (SERIES / PER_ITER)) * PER_ITER;
                next += 1;
                for (_, labels) in &series[start..start + PER_ITER] {
                    black_box(cold.get_or_resolve(hash(labels), labels, Kind::Counter, &rules));
                }
                cold
            },
            BatchSize::SmallInput,
        )
    });

    let mut next = 0;
    group.bench_function("resolve_uncached", |b| {
        b.iter(|| {
            let start = (next % (SERIES / PER_ITER)) * PER_ITER;
            next += 1;
            for (_, labels) in &series[start..start + PER_ITER] {
                black_box(rules.resolve(labels, Kind::Counter));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
