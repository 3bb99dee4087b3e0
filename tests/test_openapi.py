"""docs/openapi.yaml: a valid OpenAPI 3.1 description of every endpoint, and true of the daemon.

* The file validates (``openapi-spec-validator``).
* Every route the two aiohttp applications register is described, and every described operation
  is served (so neither can drift from the other).
* The notification examples in it are MTT's document's (``tests/data/doc_notifications.json``).
* Schemathesis fuzzes one running daemon (both listeners, real HTTP; Redis storage and an admin
  token, so ``/clients/{number}`` and ``/login`` exist) from the description: every operation's
  examples, then generated requests (valid and invalid ones). No answer may be a 5xx, and every
  answer must be described: its status, its content type, its declared headers and its body's
  schema. Valid notifications must be accepted (200). ``MTT_OPENAPI_EXAMPLES`` sets the number
  of generated examples per operation and mode (derandomized: the same requests every run).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import CheckFunction
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from router.admin import create_admin_app
from router.server import create_app
from router.simulator import SimConfig, Simulator
from tests.fixtures.daemon import RunningDaemon, StartDaemon, daemon_config, daemon_sim_config
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = ROOT / "docs" / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
DOC = json.loads((ROOT / "tests" / "data" / "doc_notifications.json").read_text(encoding="utf-8"))

EXAMPLES = int(os.environ.get("MTT_OPENAPI_EXAMPLES", "25"))
TOKEN = "openapi-admin-token-0123456789"
PREFIX = "mtt/6f1c9a2b7d"
"""P with a secret segment: its last segment is the ``prefix`` parameter, the rest goes in the
server's origin (as the description tells integrators)."""
METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


def test_the_description_is_valid_openapi_3_1() -> None:
    assert SPEC["openapi"].startswith("3.1")
    validate(SPEC)


def _described() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in SPEC["paths"].items()
        for method in METHODS
        if method in item
    }


def _served(app_routes: Iterable[web.AbstractRoute], prefix: str) -> set[tuple[str, str]]:
    found = set()
    for route in app_routes:
        if route.method == "HEAD":
            continue
        assert route.resource is not None
        path = route.resource.canonical
        if path.startswith(prefix):
            # P and P/ are the same callback; P/events is the events path.
            path = "/{prefix}" + path[len(prefix) :].rstrip("/")
        found.add((route.method, path))
    return found


async def test_every_served_route_is_described_and_every_described_one_served(
    sim: Simulator, tmp_path: Path
) -> None:
    config = daemon_config(
        sim,
        tmp_path,
        public_port=8080,
        redirect_path="/" + PREFIX,
        extra={"server": {"admin_token": TOKEN}},
    )
    public = create_app(config)
    admin = create_admin_app(public)
    served = _served(public.router.routes(), "/" + PREFIX)
    served |= _served(admin.router.routes(), "/" + PREFIX)
    assert served == _described()


def test_the_notification_examples_are_the_documents() -> None:
    body = SPEC["paths"]["/{prefix}/events"]["post"]["requestBody"]["content"]["application/json"]
    examples = {name: example["value"] for name, example in body["examples"].items()}
    for example in DOC["examples"]:
        assert examples[example["name"]] == example["payload"], example["name"]


# -- the fuzz ------------------------------------------------------------------------------------

CHECKS: list[CheckFunction] = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
"""Every answer: a documented status, content type and headers, a body of its schema."""


def no_server_error(allowed: Collection[tuple[str, int]]) -> CheckFunction:
    """No 5xx, but for the ``(path, status)`` pairs of ``allowed`` (``/readyz``'s 503 when the
    daemon is not ready is its job, and described)."""

    def not_a_server_error(
        ctx: schemathesis.CheckContext,
        response: schemathesis.Response,
        case: schemathesis.Case[Any],
    ) -> None:
        status = response.status_code
        assert status < 500 or (case.operation.path, status) in allowed, f"a server error: {status}"

    return not_a_server_error


@dataclass
class Fuzz:
    """Sends one operation's cases to the daemon and checks each answer."""

    operation: APIOperation[Any, Any, Any, Any]
    daemon: RunningDaemon
    session: requests.Session
    sent: Counter[str]
    allowed: Collection[tuple[str, int]]

    @property
    def label(self) -> str:
        return f"{self.operation.method.upper()} {self.operation.path}"

    @property
    def public(self) -> bool:
        return self.operation.path.startswith("/{prefix}")

    def send(self, case: schemathesis.Case[Any], *, accepted: bool, phase: str) -> int:
        """Send ``case``; raise when the answer is not as described (or, with ``accepted``,
        when a valid notification is refused); its status."""
        origin, _, last = PREFIX.rpartition("/")
        if self.public:
            case.path_parameters = {**(case.path_parameters or {}), "prefix": last}
            base_url, headers = f"{self.daemon.public_url}/{origin}", None
        else:
            base_url, headers = self.daemon.admin_url, {"Authorization": f"Bearer {TOKEN}"}
        response = case.call(base_url=base_url, session=self.session, headers=headers)
        self.sent[f"{self.label} {phase}"] += 1
        extra = [positive_data_acceptance] if accepted else []
        checks = [no_server_error(self.allowed), *CHECKS, *extra]
        case.validate_response(response, checks=checks)
        return response.status_code

    def run(
        self, strategy: st.SearchStrategy[schemathesis.Case[Any]], examples: int, phase: str
    ) -> None:
        # A notification the description calls valid must be taken: the parser is exactly as
        # tolerant as the description says.
        accepted = phase != "negative" and self.operation.path.endswith("/events")

        @given(case=strategy)
        @settings(
            max_examples=examples,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],
        )
        def run(case: schemathesis.Case[Any]) -> None:
            self.send(case, accepted=accepted, phase=phase)

        run()


def fuzz(
    daemon: RunningDaemon,
    paths: Collection[str] | None = None,
    examples: int = EXAMPLES,
    allowed: Collection[tuple[str, int]] = (),
) -> Counter[str]:
    """Every operation's examples, then generated valid and invalid cases, against ``daemon``
    (only the operations of ``paths`` when given); raises at the first answer that is not as
    described or is a 5xx (but for ``allowed``). Counts the requests sent."""
    schema = schemathesis.openapi.from_path(str(SPEC_PATH))
    sent: Counter[str] = Counter()
    session = requests.Session()
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # the description itself is broken
        if paths is not None and result.ok().path not in paths:
            continue
        target = Fuzz(result.ok(), daemon, session, sent, allowed)
        for strategy in target.operation.get_strategies_from_examples():
            target.run(strategy, 3, "examples")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = target.operation.as_strategy(generation_mode=mode)
            try:
                target.run(strategy, examples, mode.value)
            except Unsatisfiable:
                # Nothing of it can be made invalid (no parameters, no body): nothing to send.
                assert mode is GenerationMode.NEGATIVE, target.label
    return sent


async def test_a_running_daemon_answers_as_described(
    start_daemon: StartDaemon, redis_url: str
) -> None:
    daemon = await start_daemon(
        redirect_path="/" + PREFIX,
        storage=redis_url,
        extra={"server": {"admin_token": TOKEN}},
        authorised=False,
        wait_ready=False,
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with daemon.http.get(f"{daemon.admin_url}/oauth/start", headers=auth) as resp:
        assert resp.status == 200  # the login, through the simulator, into Redis
    await eventually(lambda: _ready(daemon), "/readyz answers 200")
    started = time.monotonic()
    sent = await asyncio.to_thread(fuzz, daemon)
    print(
        f"openapi fuzz: {sum(sent.values())} requests in {time.monotonic() - started:.1f} s: {sent}"
    )


async def _ready(daemon: RunningDaemon) -> bool:
    async with daemon.http.get(f"{daemon.admin_url}/readyz") as resp:
        return resp.status == 200


async def test_a_daemon_without_rules_answers_as_described(
    start_daemon: StartDaemon, redis_url: str
) -> None:
    """No rules loaded (``rules.source: redis`` before the first push, or a broken file at
    start-up): the paths whose answers depend on the rules are as described too, and a manager
    id that cannot be one is a 400, not a 500 (the rules used to catch it first)."""
    daemon = await start_daemon(
        rules=None,
        storage=redis_url,
        extra={"server": {"admin_token": TOKEN}},
        authorised=False,
        wait_ready=False,
    )
    paths = {"/status", "/readyz", "/", "/clients/{number}"}
    sent = await asyncio.to_thread(fuzz, daemon, paths, 10, {("/readyz", 503)})
    assert {label.rsplit(" ", 2)[1] for label in sent} == paths
    assert await asyncio.to_thread(_put_managers, daemon) == [400, 400, 200]


def _put_managers(daemon: RunningDaemon) -> list[int]:
    """PUT /clients/{number} with a manager id with a space, one too long and a good one."""
    schema = schemathesis.openapi.from_path(str(SPEC_PATH))
    operation = schema["/clients/{number}"]["PUT"]
    target = Fuzz(operation, daemon, requests.Session(), Counter(), ())
    statuses = []
    for manager in ("a b", "m" * 129, "ivanov"):
        case = operation.Case(
            path_parameters={"number": "+7 999 000-11-22"},
            body={"manager": manager},
            media_type="application/json",
        )
        statuses.append(target.send(case, accepted=False, phase="explicit"))
    return statuses
