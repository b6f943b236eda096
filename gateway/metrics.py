"""Prometheus metrics, one registry per running system (no process-global registry).

Labels carry only bounded, PHI-free values: states, outcomes, kinds, clinic slugs. Never an
address, a name, a token or a subject. Gauges that describe the store (queue depth, oldest
age, quarantine size) are refreshed from the database when ``/metrics`` is scraped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.queue_depth = Gauge(
            "carebridge_outbound_queue_depth", "Notifications by state", ["state"], registry=r
        )
        self.queue_oldest_age = Gauge(
            "carebridge_outbound_oldest_queued_seconds",
            "Age of the oldest queued or deferred notification",
            registry=r,
        )
        self.deliveries = Counter(
            "carebridge_deliveries_total", "Delivery attempts by outcome", ["outcome"], registry=r
        )
        self.delivery_latency = Histogram(
            "carebridge_delivery_latency_seconds",
            "From enqueue to the relay's acceptance",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=r,
        )
        self.dkim_sign_seconds = Histogram(
            "carebridge_dkim_sign_seconds",
            "Time to sign one message (both signatures)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=r,
        )
        self.intake = Counter(
            "carebridge_intake_total", "Inbound messages by outcome", ["outcome"], registry=r
        )
        self.quarantine_size = Gauge(
            "carebridge_quarantine_held", "Quarantined messages awaiting a decision", registry=r
        )
        self.sla_breaches = Counter(
            "carebridge_sla_breaches_total", "Threads that passed their SLA deadline", registry=r
        )
        self.token_consumptions = Counter(
            "carebridge_token_consumptions_total",
            "Tokens used, by purpose and result",
            ["purpose", "result"],
            registry=r,
        )
        self.db_latency = Histogram(
            "carebridge_db_query_seconds",
            "Latency of the readiness/metrics probe query",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1),
            registry=r,
        )
        # Scrape-time gauges filled by gateway.admin.dashboard.refresh_gauges (admin area).
        self.queue_depth_by_clinic = Gauge(
            "carebridge_outbound_queue_depth_by_clinic",
            "Waiting, sending and failed notifications by clinic slug",
            ["clinic", "state"],
            registry=r,
        )
        self.sla_breached_open = Gauge(
            "carebridge_sla_breached_open_threads",
            "Open threads already past their SLA deadline",
            registry=r,
        )
        self.requests_unwatched = Gauge(
            "carebridge_requests_unwatched",
            "Open requests waiting in a pool with no active member (or in no pool)",
            registry=r,
        )
        self.patients_undeliverable = Gauge(
            "carebridge_patients_undeliverable",
            "Patients whose address bounces (deliverability not ok)",
            registry=r,
        )
        self.dkim_keys = Gauge(
            "carebridge_dkim_keys", "Clinics' DKIM keys by state", ["state"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
