//! The statsd path allocates nothing per line once its series are known:
//! parsing a batch of datagrams (counters, gauges absolute and relative,
//! sampled timers, tags) into one engine batch and folding it. Counted with
//! a counting global allocator, which is why this is its own test binary.

#[path = "alloc/counting.rs"]
mod counting;

use counting::allocations;

use tailfold::config::{IngestLimits, StatsdSettings};
use tailfold::engine::{Engine, EngineSettings};
use tailfold::ingest::statsd::{DatagramDecoder, DatagramTally};
use tailfold::rules::RuleSet;

const NOW_MS: i64 = 1_800_000_001_000;
const SERIES: usize = 1_000;
const LINES_PER_DATAGRAM: usize = 25;
const DATAGRAMS_PER_BATCH: usize = 64;

/// One reader's batch: 64 datagrams of 25 lines walking over 1,000 series;
/// `round` changes the values only (and the first two rounds hold every timer value).
fn datagrams(round: usize) -> Vec<Vec<u8>> {
    let mut line = 0;
    (0..DATAGRAMS_PER_BATCH)
        .map(|_| {
            let mut datagram = String::new();
            for _ in 0..LINES_PER_DATAGRAM {
                let series = line % SERIES;
                let value = (line + round) % 17 + 1;
                let text = match series % 10 {
                    0 => format!("queue.depth:{value}|g|#host:h{series}\n"),
                    1 => format!("queue.depth:+{value}|g|#host:h{series}\n"),
                    // Values a series has seen already: a histogram grows buckets only for new ones.
                    2 => format!(
                        "api.latency:{}.5:{}|ms|@0.3|#host:h{series},env:prod\n",
                        round % 2 + 1,
                        series
                    ),
                    _ => format!("api.requests:{value}|c|@0.5|#host:h{series},env:prod,code:200\n"),
                };
                datagram.push_str(&text);
                line += 1;
            }
            datagram.into_bytes()
        })
        .collect()
}

/// Decodes `datagrams` as one batch and folds it; returns what was accepted.
fn parse_and_fold(decoder: &mut DatagramDecoder, engine: &Engine, datagrams: &[Vec<u8>]) -> (DatagramTally, u64) {
    decoder.clear();
    let mut tally = DatagramTally::default();
    for datagram in datagrams {
        let one = decoder.add(datagram);
        tally.points += one.points;
        tally.malformed_lines += one.malformed_lines;
    }
    let outcome = engine.ingest(&decoder.batch, NOW_MS).expect("engine open");
    (tally, outcome.accepted)
}

#[test]
fn a_steady_statsd_batch_parses_and_folds_without_allocating() {
    let settings = StatsdSettings {
        listen: ([127, 0, 0, 1], 0).into(),
        tenant: "team-a".to_string(),
        max_packet_bytes: 1432,
        max_gauges: 10_000,
        gauge_idle_ms: 3_600_000,
        readers: 1,
        batch_datagrams: DATAGRAMS_PER_BATCH,
        batch_wait_ms: 0,
        receive_buffer_bytes: 1 << 20,
        limits: IngestLimits::default(),
    };
    let engine = Engine::new(
        EngineSettings {
            shards: 4,
            ..EngineSettings::default()
        },
        RuleSet::parse("mapping_rules: []\n", "rules.yaml").unwrap(),
    );
    let mut decoder = DatagramDecoder::new(&settings);
    let rounds: Vec<Vec<Vec<u8>>> = (0..10).map(datagrams).collect();
    // Timer lines carry two values each.
    let points = (LINES_PER_DATAGRAM * DATAGRAMS_PER_BATCH + LINES_PER_DATAGRAM * DATAGRAMS_PER_BATCH / 10) as u64;

    let cold = allocations();
    let (tally, accepted) = parse_and_fold(&mut decoder, &engine, &rounds[0]);
    assert!(
        allocations() > cold,
        "the counter must see the first batch build its series"
    );
    assert_eq!((tally.points, tally.malformed_lines, accepted), (points, 0, points));
    // The second batch is the first to reuse the point buffers returned by the first.
    parse_and_fold(&mut decoder, &engine, &rounds[1]);

    let warm = allocations();
    let mut parse = 0;
    for round in &rounds[2..] {
        let before = allocations();
        decoder.clear();
        let mut tally = DatagramTally::default();
        for datagram in round {
            tally.points += decoder.add(datagram).points;
        }
        parse += allocations() - before;
        let accepted = engine.ingest(&decoder.batch, NOW_MS).expect("engine open").accepted;
        assert_eq!((tally.points, accepted), (points, points));
    }
    assert_eq!(parse, 0, "parsing a warm statsd batch allocated");
    assert_eq!(allocations() - warm, 0, "folding a warm statsd batch allocated");

    // A series not seen before costs its labels, and only then.
    let before = allocations();
    parse_and_fold(&mut decoder, &engine, &[b"brand.new:1|c|#host:x".to_vec()]);
    assert!(allocations() > before, "a new series builds its labels");
}
