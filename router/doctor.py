"""``mtt-router doctor``: a preflight of a real deployment, one :class:`Check` per concern.

Each check is a small coroutine taking a :class:`~router.doctor_context.DoctorContext` and
returning a frozen :class:`~router.doctor_context.Check` (``ok``/``warn``/``fail``, what was
found, what to do). :func:`run_checks` runs :data:`CHECKS` in order, each under its own timeout, so
one that fails or hangs never stops the others. A check that could not be carried out because of
something another check reports (no usable token, rules that do not load) is a ``warn`` saying
"not checked". Nothing here prints: ``router/commands/doctor.py`` does.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from router.config_read import is_loopback
from router.config_redis import is_sentinel_url
from router.doctor_context import (
    REQUEST_TIMEOUT_S,
    Check,
    DoctorContext,
    configured_rules,
    fail,
    ok,
    origin,
    probe_api,
    warn,
)
from router.doctor_sentinel import check_sentinel
from router.errors import NeedsLoginError, RulesError, StorageError, UpstreamError
from router.mtt.client import EXTERNAL_NUMBERS
from router.mtt.token_state import iso
from router.mtt.tokens import remaining
from router.numbers import try_normalize

CHECK_TIMEOUT_S = 15.0
"""The most one check may take (a token refresh included) before it is reported as a fail."""
SKEW_WARN_S = 5.0
"""Clock skew above this is a warn: MTT's parking window is 5 s and token expiry is timed."""
SKEW_FAIL_S = 60.0
"""Clock skew above this is a fail: expiry times and schedules are off by minutes."""
PAGE_MARK = "mtt-router"
"""What the daemon's ``GET P`` page names; a 200 without it comes from something else."""
NO_TOKEN = "not checked: no usable MTT token"


async def check_config(ctx: DoctorContext) -> Check:
    """The config loaded (an invalid one never gets here: the command exits 2 with its problems)."""
    config = ctx.config
    rules = "rules in Redis" if config.rules.source == "redis" else f"rules {config.rules.path}"
    detail = (
        f"{ctx.config_path} is valid (storage {ctx.stores.description}, "
        f"{rules}, routing.mode {config.routing.mode})"
    )
    if config.routing.mode == "shadow":
        return warn(
            "config",
            detail + ": calls are decided and logged, none is transferred",
            "set routing.mode: live once the decisions in the log look right",
        )
    return ok("config", detail)


async def check_public_url(ctx: DoctorContext) -> Check:
    """``GET redirect_uri`` answers 200 with the daemon's page, TLS verified by the system."""
    name, url, listen = "public_url", ctx.config.mtt.redirect_uri, ctx.config.server.listen
    where, parts = f"GET P at {origin(url)}", urlsplit(url)
    route = (
        f"the daemon must run, and {parts.hostname} must reach it: DNS, firewall, and a proxy "
        f"passing P to server.listen ({listen})"
    )
    try:
        async with (
            asyncio.timeout(REQUEST_TIMEOUT_S),
            ctx.session.get(url, allow_redirects=False) as resp,
        ):
            status = resp.status
            body = (await resp.content.read(65536)).decode("utf-8", "replace")
    except TimeoutError:
        return fail(name, f"{where}: no answer within {REQUEST_TIMEOUT_S:g} s", route)
    except aiohttp.ClientConnectorCertificateError as exc:
        cause = exc.certificate_error
        reason = getattr(cause, "verify_message", "") or str(cause)
        return fail(
            name,
            f"{where}: TLS certificate not trusted by this system ({reason})",
            "install a certificate from a public CA (Let's Encrypt) with its full chain at the "
            "proxy: MTT will not connect to a certificate it cannot verify",
        )
    except aiohttp.ClientSSLError as exc:
        return fail(name, f"{where}: TLS handshake failed ({exc})", "fix TLS at the proxy")
    except aiohttp.ClientConnectorError as exc:  # its text names host and port only
        return fail(name, f"{where}: cannot connect ({type(exc).__name__}: {exc})", route)
    except aiohttp.ClientError as exc:
        # Other errors may quote the whole URL, secret path included: the error's name only.
        return fail(name, f"{where}: no valid HTTP answer ({type(exc).__name__})", route)
    if status != 200:
        return fail(name, f"{where} answered {status}; MTT's reachability check needs 200", route)
    if PAGE_MARK not in body:
        return warn(name, f"{where} answered 200, but not with mtt-router's page", route)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        return warn(
            name,
            f"{where} answered 200 over plain http: OAuth codes and notifications cross the "
            "network unencrypted",
            "put TLS in front of the daemon and use an https:// redirect_uri",
        )
    return ok(name, f"{where} answered 200 (mtt-router's page)")


async def check_tokens(ctx: DoctorContext) -> Check:
    """Tokens stored and usable; refreshed (rotated and saved) only when the access token is not."""
    name, manager = "tokens", ctx.tokens
    place = ctx.config.tokens_file if not ctx.config.uses_redis else ctx.stores.description
    try:
        held = await manager.load()
    except StorageError as exc:
        return fail(name, f"cannot read the token store ({place}): {exc}", "see the storage check")
    if held is None:
        return fail(name, f"no tokens in {place}", ctx.login_hint)
    now = manager.now()
    error: Exception | None = None
    if not held.access_valid(now):
        error = await _attempt(manager.refresh())
    else:
        try:
            refused = (await probe_api(ctx, held.access_token)).status == 401
        except (aiohttp.ClientError, TimeoutError):
            return warn(
                name,
                f"access token valid until {iso(held.access_expires_at)} by its expiry time; "
                "MTT did not answer to confirm it",
                "see the mtt_api check",
            )
        if refused:  # unusable although unexpired (MTT dropped it): what the daemon would do
            error = await _attempt(manager.refresh_after_401(held.access_token))
    if isinstance(error, NeedsLoginError):
        if held.refresh_valid(now):
            detail = "MTT refused the refresh token (invalid_grant): the stored tokens are dead"
        else:
            access = "has expired" if not held.access_valid(now) else "is refused by MTT"
            detail = f"the refresh token expired at {iso(held.refresh_expires_at)}"
            detail += f" and the access token {access}"
        return fail(name, detail, ctx.login_hint)
    if error is not None:
        return fail(
            name,
            f"the access token needs a refresh, which failed: {error}",
            f"check that {ctx.config.mtt.oauth_url} (mtt.oauth_url) is reachable from this host",
        )
    tokens = manager.tokens or held
    now = manager.now()
    detail = (
        f"access token valid until {iso(tokens.access_expires_at)} "
        f"({remaining(tokens.access_expires_at - now)}), refresh token until "
        f"{iso(tokens.refresh_expires_at)} ({remaining(tokens.refresh_expires_at - now)})"
    )
    if tokens.version != held.version:
        detail += "; refreshed now and saved"
    if not tokens.refresh_valid(now):
        return warn(name, detail + ": a login is due when the access token ends", ctx.login_hint)
    return ok(name, detail)


async def _attempt(refresh: Awaitable[object]) -> Exception | None:
    """``None`` once refreshed, else why not (NeedsLoginError: refused, or nothing to refresh)."""
    try:
        await refresh
    except (NeedsLoginError, UpstreamError) as exc:
        return exc
    return None


async def check_mtt_api(ctx: DoctorContext) -> Check:
    """``GET externalNumbersInfo`` answers (with the current access token, when there is one)."""
    name, api = "mtt_api", ctx.config.mtt.api_url
    reach = f"check DNS, firewall and any outgoing proxy for {api} (mtt.api_url)"
    token = ctx.tokens.cached_access_token()
    try:
        probe = await probe_api(ctx, token)
    except TimeoutError:
        return fail(name, f"{api}: no answer within {REQUEST_TIMEOUT_S:g} s", reach)
    except aiohttp.ClientError as exc:
        return fail(name, f"{api}: cannot connect ({type(exc).__name__}: {exc})", reach)
    answered = f"{EXTERNAL_NUMBERS} answered {probe.status} in {probe.elapsed_ms:.0f} ms"
    if probe.status == 200:
        return ok(name, answered)
    if probe.status == 401 and token is None:
        return warn(name, f"{answered} ({NO_TOKEN} to send)", "see the tokens check")
    if probe.status == 401:
        return fail(name, f"{answered}: MTT refused the access token", ctx.login_hint)
    return fail(name, answered, f"MTT is failing, or mtt.api_url ({api}) is wrong")


async def check_clock(ctx: DoctorContext) -> Check:
    """Our clock against MTT's ``Date`` header: token expiry and the 5 s window depend on it."""
    name = "clock"
    try:
        probe = await probe_api(ctx, ctx.tokens.cached_access_token())
    except (aiohttp.ClientError, TimeoutError):
        return warn(name, "not checked: MTT did not answer", "see the mtt_api check")
    if probe.skew_s is None:
        return warn(name, "not checked: MTT's answer has no Date header")
    skew_s = abs(probe.skew_s)
    if skew_s <= SKEW_WARN_S:
        return ok(name, f"this host's clock is within {skew_s:.1f} s of MTT's (its Date header)")
    way = "behind" if probe.skew_s > 0 else "ahead of"
    detail = f"this host's clock is {skew_s:.1f} s {way} MTT's (its Date header)"
    fix = "synchronise the clock with NTP (chrony or systemd-timesyncd)"
    return (fail if skew_s > SKEW_FAIL_S else warn)(name, detail, fix)


async def check_numbers(ctx: DoctorContext) -> Check:
    """MTT lists the external numbers; every one ``routing.park``/``live_numbers`` names is one."""
    name, routing = "numbers", ctx.config.routing
    try:
        listed = [n.number for n in await ctx.client.external_numbers(timeout_s=REQUEST_TIMEOUT_S)]
    except NeedsLoginError:
        return warn(name, NO_TOKEN, "see the tokens check")
    except UpstreamError as exc:
        return fail(name, f"cannot list the external numbers: {exc}", "see the mtt_api check")
    known = {try_normalize(n) or n: n for n in listed}
    named = {"routing.park": () if routing.park == "all" else routing.park}
    named["routing.live_numbers"] = routing.live_numbers
    missing = [
        f"{key} {number}"
        for key, numbers in named.items()
        for number in numbers
        if (try_normalize(number) or number) not in known
    ]
    more = f" and {len(listed) - 10} more" if len(listed) > 10 else ""
    shown = (", ".join(listed[:10]) or "none") + more
    look = f"see `mtt-router pbx numbers --config {ctx.config_path}`"
    if missing:
        return fail(name, f"MTT does not list {', '.join(missing)} (it lists {shown})", look)
    if not listed:
        return warn(name, "MTT lists no external numbers: no call can be parked", look)
    if routing.park == "all":
        parks = "routing.park parks all of them"
    elif routing.park:
        parked = [known[try_normalize(n) or n] for n in routing.park]
        parks = f"routing.park parks {', '.join(parked)}"
    else:
        parks = "routing.park names none (parking stays as set in MTT's web account)"
    return ok(name, f"MTT lists {shown}; {parks}")


async def check_rules(ctx: DoctorContext) -> Check:
    """The rules load: the file of ``rules.path``, or the version pushed to Redis."""
    name = "rules"
    try:
        found = await configured_rules(ctx)
    except RulesError as exc:
        lines = exc.lines()
        more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
        return fail(name, "; ".join(lines[:3]) + more, _rules_fix(ctx))
    except StorageError as exc:
        return fail(name, f"cannot read the pushed rules: {exc}", "see the storage check")
    if found is None:
        return fail(
            name,
            "rules.source is redis and nothing was pushed: the daemon would release every call",
            f"run `mtt-router rules push FILE --config {ctx.config_path}`",
        )
    where, rules = found
    return ok(
        name,
        f"{where}: managers {len(rules.managers)}, clients {len(rules.clients)}, "
        f"prefixes {len(rules.prefixes)}",
    )


def _rules_fix(ctx: DoctorContext) -> str:
    if ctx.config.rules.source == "file":
        return f"fix each line (`mtt-router rules check {ctx.config.rules.path}` lists them)"
    return "push a corrected file with `mtt-router rules push`"


async def check_workplaces(ctx: DoctorContext) -> Check:
    """Every manager's workplace in the rules is one MTT lists (workPlacesInfo)."""
    name = "workplaces"
    try:
        found = await configured_rules(ctx)
    except (RulesError, StorageError):
        found = None
    if found is None:
        return warn(name, "not checked: no rules loaded", "see the rules check")
    try:
        listed = {w.workplace for w in await ctx.client.workplaces(timeout_s=REQUEST_TIMEOUT_S)}
    except NeedsLoginError:
        return warn(name, NO_TOKEN, "see the tokens check")
    except UpstreamError as exc:
        return fail(name, f"cannot list the workplaces: {exc}", "see the mtt_api check")
    managers = found[1].managers.values()
    unknown = [
        f"manager {m.id}: workplace {m.workplace}" for m in managers if m.workplace not in listed
    ]
    if unknown:
        return fail(
            name,
            f"not in MTT's workPlacesInfo: {'; '.join(unknown)}",
            f"correct the rules (see `mtt-router pbx workplaces --config {ctx.config_path}`)",
        )
    return ok(name, f"all {len(managers)} managers' workplaces exist in MTT ({len(listed)} listed)")


async def check_storage(ctx: DoctorContext) -> Check:
    """The storage answers (Redis), or the tokens file can be written (memory)."""
    name, config = "storage", ctx.config
    if is_sentinel_url(config.storage):
        return await check_sentinel(config)
    if config.uses_redis:
        if await ctx.stores.ping():
            return ok(name, f"{ctx.stores.description} answers PING")
        return fail(
            name,
            f"{ctx.stores.description} does not answer",
            "start Redis, or correct `storage` (host, port, password, TLS)",
        )
    path, problem = await asyncio.to_thread(_writable, config.tokens_file)
    if problem:
        return fail(
            name,
            f"memory; tokens_file {path}: {problem}",
            "create the directory, or point tokens_file at one the daemon's user may write",
        )
    return ok(name, f"memory (tokens in {path}; the state is this process's: one replica)")


def _writable(tokens_file: str) -> tuple[str, str]:
    """The absolute path, and why the daemon could not save tokens there (empty when it can)."""
    path = Path(tokens_file).absolute()
    if not path.parent.is_dir():
        return str(path), "its directory does not exist"
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return str(path), "cannot be written"
    return str(path), ""


async def check_admin(ctx: DoctorContext) -> Check:
    """A non-loopback admin listener needs ``server.admin_token``."""
    name, server = "admin", ctx.config.server
    listen = server.admin_listen
    if is_loopback(listen.host):
        return ok(name, f"server.admin_listen {listen} is loopback only")
    if server.admin_token:
        return ok(
            name,
            f"server.admin_listen {listen} is reachable from the network; every path but "
            "/healthz and /readyz needs server.admin_token",
        )
    return fail(
        name,
        f"server.admin_listen {listen} is not loopback and server.admin_token is not set: "
        "/metrics, /status and /oauth/start are open to whoever reaches it",
        "set server.admin_token (16+ characters, from the environment) or listen on 127.0.0.1",
    )


CheckFn = Callable[[DoctorContext], Awaitable[Check]]

CHECKS: tuple[tuple[str, CheckFn], ...] = (
    ("config", check_config),
    ("public_url", check_public_url),
    ("tokens", check_tokens),  # before the API checks: it refreshes a dead access token
    ("mtt_api", check_mtt_api),
    ("clock", check_clock),
    ("numbers", check_numbers),
    ("rules", check_rules),
    ("workplaces", check_workplaces),
    ("storage", check_storage),
    ("admin", check_admin),
)
"""Every check, in the order of the report."""


async def run_check(
    ctx: DoctorContext, name: str, check: CheckFn, timeout_s: float = CHECK_TIMEOUT_S
) -> Check:
    """One check under its timeout; a timeout or a crash is that check's ``fail``, nothing more."""
    try:
        async with asyncio.timeout(timeout_s):
            return await check(ctx)
    except TimeoutError:
        return fail(name, f"no result within {timeout_s:g} s", "run the doctor again")
    except Exception as exc:  # whatever broke, the other checks must still run and be reported
        return fail(name, f"the check itself failed: {type(exc).__name__}: {exc}")


async def run_checks(ctx: DoctorContext, timeout_s: float = CHECK_TIMEOUT_S) -> list[Check]:
    """Every check of :data:`CHECKS`, in order, each bounded by ``timeout_s``."""
    return [await run_check(ctx, name, check, timeout_s) for name, check in CHECKS]
