#!/usr/bin/env python3
"""Sends spans or metrics to tailfold with the real OpenTelemetry Python SDK.

spans:   spans with known durations and end times (seeded), in shuffled order,
         from several services; prints one JSON line per span sent (trace and
         span ID, duration, end time, service, name).
metrics: a histogram recorded inside sampled spans (so each measurement has a
         trace exemplar) plus a counter; prints one JSON line per measurement.
tail:    spans of one window whose durations are log-normal with a slow tail
         (one in twenty around 1.2 s), --counts spans per span name for two span
         names of a service `s<count>`, plus service `edge` (50 spans of 1.497 s and
         one of 1.505 s); exported in large batches; prints one JSON line per span.

Exits non-zero if any export failed, so the caller knows the SDK was refused.
"""

import argparse
import json
import math
import random
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult


def span_exporter(protocol, endpoint):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint + "/v1/traces")


class Checked:
    """Wraps an exporter and remembers whether every export succeeded."""

    def __init__(self, inner):
        self.inner = inner
        self.failures = 0
        self.exports = 0

    def export(self, batch, *args, **kwargs):
        result = self.inner.export(batch, *args, **kwargs)
        self.exports += 1
        if result not in (SpanExportResult.SUCCESS,) and getattr(result, "name", "") != "SUCCESS":
            self.failures += 1
        return result

    def shutdown(self, *args, **kwargs):
        return self.inner.shutdown(*args, **kwargs)

    def force_flush(self, *args, **kwargs):
        return self.inner.force_flush(*args, **kwargs) if hasattr(self.inner, "force_flush") else True


def send_spans(args):
    rng = random.Random(args.seed)
    services = ["checkout", "search", "cart", "payments"]
    planned = []
    for window in range(args.windows):
        window_start_ns = (args.base_ms + window * args.window_ms) * 1_000_000
        for service in services:
            count = args.count if service == "checkout" else args.count // 10
            for _ in range(count):
                # Log-normal latencies (median ~50 ms), whole microseconds so durations are exact.
                micros = max(1, int(rng.lognormvariate(-3.0, 0.8) * 1e6))
                end_ns = window_start_ns + rng.randrange(args.window_ms * 1_000_000 - 1) + 1
                planned.append((service, end_ns - micros * 1000, end_ns))
    # Out of order: spans end (and are exported) in random order across windows.
    rng.shuffle(planned)
    providers = {}
    checked = {}
    for service in services:
        exporter = Checked(span_exporter(args.protocol, args.endpoint))
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        # A queue larger than everything sent: the SDK drops spans silently when its queue is full
        # (a slow exporter on a loaded machine), and the test must know exactly what was sent.
        provider.add_span_processor(
            BatchSpanProcessor(exporter, max_queue_size=100_000, max_export_batch_size=256, schedule_delay_millis=200)
        )
        providers[service] = provider
        checked[service] = exporter
    out = []
    for service, start_ns, end_ns in planned:
        tracer = providers[service].get_tracer("tailfold-test")
        span = tracer.start_span("GET /" + service, start_time=start_ns)
        span.end(end_time=end_ns)
        context = span.get_span_context()
        out.append(
            {
                "trace_id": format(context.trace_id, "032x"),
                "span_id": format(context.span_id, "016x"),
                "duration_ns": end_ns - start_ns,
                "end_ms": end_ns // 1_000_000,
                "service": service,
                "sampled": bool(context.trace_flags.sampled),
            }
        )
    for provider in providers.values():
        provider.force_flush()
        provider.shutdown()
    failures = sum(exporter.failures for exporter in checked.values())
    for line in out:
        print(json.dumps(line))
    if failures:
        print(f"{failures} exports failed", file=sys.stderr)
        sys.exit(1)


def slow_tail(rng):
    """Whole microseconds: log-normal around 250 ms, one in twenty around 1.2 s."""
    if rng.random() < 0.05:
        seconds = rng.lognormvariate(math.log(1.2), 0.4)
    else:
        seconds = rng.lognormvariate(math.log(0.25), 0.6)
    return max(1, int(seconds * 1e6))


def send_tail(args):
    rng = random.Random(args.seed)
    window_start_ns = args.base_ms * 1_000_000
    planned = []
    for count in (int(c) for c in args.counts.split(",")):
        for name in ("GET /a", "GET /b"):
            planned.extend((f"s{count}", name, slow_tail(rng)) for _ in range(count))
    planned.extend(("edge", "GET /a", 1_497_000) for _ in range(50))
    planned.append(("edge", "GET /a", 1_505_000))
    rng.shuffle(planned)
    providers = {}
    checked = []
    for service in sorted({service for service, _, _ in planned}):
        exporter = Checked(span_exporter(args.protocol, args.endpoint))
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        # Everything queued (the SDK drops silently from a full queue) and sent
        # in large requests, so 100,000 spans take seconds, not minutes.
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter, max_queue_size=len(planned) + 1, max_export_batch_size=8192, schedule_delay_millis=100
            )
        )
        providers[service] = provider
        checked.append(exporter)
    out = []
    for service, name, micros in planned:
        end_ns = window_start_ns + rng.randrange(args.window_ms * 1_000_000 - 1) + 1
        start_ns = end_ns - micros * 1000
        span = providers[service].get_tracer("tailfold-test").start_span(name, start_time=start_ns)
        span.end(end_time=end_ns)
        context = span.get_span_context()
        out.append(
            json.dumps(
                {
                    "trace_id": format(context.trace_id, "032x"),
                    "span_id": format(context.span_id, "016x"),
                    "duration_ns": micros * 1000,
                    "service": service,
                    "name": name,
                }
            )
        )
    for provider in providers.values():
        provider.force_flush()
        provider.shutdown()
    print("\n".join(out))
    failures = sum(exporter.failures for exporter in checked)
    if failures:
        print(f"{failures} exports failed", file=sys.stderr)
        sys.exit(1)


def send_metrics(args):
    from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
    from opentelemetry.sdk.metrics._internal.exemplar import SimpleFixedSizeExemplarReservoir
    from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
    from opentelemetry.sdk.metrics.view import (
        ExplicitBucketHistogramAggregation,
        ExponentialBucketHistogramAggregation,
        View,
    )

    temporality = {
        Counter: AggregationTemporality.CUMULATIVE,
        Histogram: AggregationTemporality.CUMULATIVE if args.cumulative else AggregationTemporality.DELTA,
    }
    if args.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=args.endpoint, insecure=True, preferred_temporality=temporality)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=args.endpoint + "/v1/metrics", preferred_temporality=temporality)
    results = []
    inner_export = exporter.export

    def export(*a, **k):
        result = inner_export(*a, **k)
        results.append(result)
        return result

    exporter.export = export
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    # A reservoir as large as the measurements keeps every traced one as an exemplar.
    def everything(_aggregation):
        def build(**kwargs):
            kwargs["size"] = args.count * 2
            return SimpleFixedSizeExemplarReservoir(**kwargs)

        return build

    views = [
        View(
            instrument_name="request.latency",
            aggregation=ExponentialBucketHistogramAggregation(max_size=160, max_scale=20),
            exemplar_reservoir_factory=everything,
        ),
        View(
            instrument_name="request.latency.explicit",
            aggregation=ExplicitBucketHistogramAggregation(boundaries=[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
        ),
    ]
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.name": "checkout"}), views=views
    )
    tracer_provider = TracerProvider()
    tracer = tracer_provider.get_tracer("tailfold-test")
    meter = provider.get_meter("tailfold-test")
    latency = meter.create_histogram("request.latency", unit="s")
    explicit = meter.create_histogram("request.latency.explicit", unit="s")
    requests = meter.create_counter("requests")
    rng = random.Random(args.seed)
    for _ in range(args.count):
        value = round(rng.lognormvariate(-3.0, 0.8), 6)
        with tracer.start_as_current_span("request") as span:
            latency.record(value, {"route": "/checkout"})
            explicit.record(value, {"route": "/checkout"})
            requests.add(1, {"route": "/checkout"})
            context = span.get_span_context()
        print(json.dumps({"trace_id": format(context.trace_id, "032x"), "value": value}))
    provider.force_flush()
    provider.shutdown()
    failed = [r for r in results if getattr(r, "name", "") != "SUCCESS"]
    if not results or failed:
        print(f"metric exports: {results}", file=sys.stderr)
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["spans", "metrics", "tail"])
    parser.add_argument("--protocol", choices=["grpc", "http"], required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--base-ms", type=int, default=0)
    parser.add_argument("--window-ms", type=int, default=60_000)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--counts", default="100,2000,50000")
    parser.add_argument("--cumulative", action="store_true")
    args = parser.parse_args()
    if args.mode == "spans":
        send_spans(args)
    elif args.mode == "tail":
        send_tail(args)
    else:
        send_metrics(args)


if __name__ == "__main__":
    main()
