"""Prometheus metrics, created on an injected registry so every app (and every test) has its own.

The names and labels of the ``mtt_router_*`` metrics are part of the product contract: operators'
dashboards and alerts depend on them (README.md, "Watch it", lists each one).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Resolve 1 ms .. 5 s: the parking window is 5 s and a healthy decision takes a few milliseconds.
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.0, 3.0, 3.5, 4.0, 5.0,
)  # fmt: skip


class Metrics:
    """Every metric the daemon exports, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.notifications = Counter(
            "mtt_router_notifications",
            "Notifications received on the events endpoint, by event and call state.",
            ["event", "state"],
            registry=r,
        )
        self.rejected = Counter(
            "mtt_router_rejected",
            "Public requests refused, by reason: too_large (413), bad_request (400: unreadable, "
            "malformed JSON, not a notification); source, account and timeout are reserved for "
            "the public edge's source, account and read-deadline checks.",
            ["reason"],
            registry=r,
        )
        self.decisions = Counter(
            "mtt_router_decisions",
            "Routing decisions for parked calls, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "mtt_router_decision_seconds",
            "From receipt of a parked call's trying notification to MTT's answer to our command.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.api_requests = Counter(
            "mtt_router_api_requests",
            "Requests to the MTT API and OAuth endpoints, by method and HTTP code (or error kind).",
            ["method", "code"],
            registry=r,
        )
        self.api_request_seconds = Histogram(
            "mtt_router_api_request_seconds",
            "Duration of requests to MTT, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.token_refreshes = Counter(
            "mtt_router_token_refreshes",
            "Access token refreshes, by result (ok, error, invalid_grant, skipped, throttled).",
            ["result"],
            registry=r,
        )
        self.token_expiry = Gauge(
            "mtt_router_token_expiry_timestamp_seconds",
            "Unix time at which each token expires (token=access|refresh).",
            ["token"],
            registry=r,
        )
        self.needs_login = Gauge(
            "mtt_router_needs_login",
            "1 when no usable token exists and an operator must run the OAuth login again.",
            registry=r,
        )
        self.rules_reloads = Counter(
            "mtt_router_rules_reloads",
            "Rules (re)loads, by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.rules_entries = Gauge(
            "mtt_router_rules_entries",
            "Entries in the current rules, by kind (managers, clients, prefixes, fallback).",
            ["kind"],
            registry=r,
        )
        self.rules_version = Gauge(
            "mtt_router_rules_version",
            "Version number of the rules in use (file: reload count; redis: pushed version).",
            registry=r,
        )
        self.storage_errors = Counter(
            "mtt_router_storage_errors",
            "Storage (Redis) operations that failed and fell back to local state, by operation.",
            ["op"],
            registry=r,
        )
        self.storage_up = Gauge(
            "mtt_router_storage_up",
            "1 when the storage answers, 0 when it does not.",
            registry=r,
        )
        self.inflight = Gauge(
            "mtt_router_inflight_decisions",
            "Parked calls being decided right now (from receipt to the decision line).",
            registry=r,
        )
        self.directory_size = Gauge(
            "mtt_router_directory_entries",
            "Known PBX objects, by kind (numbers, workplaces, terminals, parked).",
            ["kind"],
            registry=r,
        )
        self.answered = Counter(
            "mtt_router_answered",
            "Parked calls the daemon decided (live or shadow), by who answered in the end: "
            "personal, deputy, fallback, other, nobody.",
            ["by"],
            registry=r,
        )
        self.reroutes = Counter(
            "mtt_router_reroutes",
            "No-answer re-routes (rules no_answer): transferred, failed.",
            ["result"],
            registry=r,
        )
        self.lookups = Counter(
            "mtt_router_lookup",
            "CRM lookups (rules lookup), by result: found, unknown, timeout, error, cached.",
            ["result"],
            registry=r,
        )
        self.lookup_seconds = Histogram(
            "mtt_router_lookup_seconds",
            "Time of a CRM lookup that went out (not the cached ones).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 2.0, 3.5),
            registry=r,
        )
        self.callmodel_surprises = Counter(
            "mtt_router_callmodel_surprises",
            "Notification sequences the call model (docs/CALL_MODEL.md) did not expect, by kind.",
            ["kind"],
            registry=r,
        )
        self.capture_dropped = Counter(
            "mtt_router_capture_dropped",
            "Notifications not written to log.capture (the writer fell behind or failed).",
            registry=r,
        )
        self.api_answers_unread = Counter(
            "mtt_router_api_answers_unread",
            "Answers of MTT's list methods not read in full (a list key the parser does not know, "
            "a total above the entries read, unreadable entries), by method.",
            ["method"],
            registry=r,
        )
        # Label values known in advance exist from the start, at 0: an alert on increase() then
        # sees the first failure too (a series that first appears at 1 shows no increase).
        for result in ("ok", "error"):
            self.rules_reloads.labels(result)
        for result in ("ok", "error", "invalid_grant", "skipped", "throttled"):
            self.token_refreshes.labels(result)
        for reason in ("source", "account", "too_large", "bad_request", "timeout"):
            self.rejected.labels(reason)
