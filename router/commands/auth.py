"""``mtt-router auth login|status``: authorise the integration with MTT, and check that it is.

``login`` prints MTT's authorize URL, serves the OAuth callback on ``server.listen`` at the path of
``redirect_uri`` until MTT's redirect brings the code back (or 10 minutes pass), and stores the
tokens. Run it instead of the daemon (they share the port), or use the daemon's ``/oauth/start``.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import sys
import time
from datetime import datetime
from functools import partial

from aiohttp import web

from router.commands._common import (
    EXIT_FAILED,
    EXIT_OK,
    MttContext,
    add_config_arg,
    add_json_arg,
    fail,
    print_json,
    run_mtt,
)
from router.commands._groups import Subparsers, add_group
from router.errors import InvalidStateError, RouterError
from router.mtt.auth import STATE_TTL_S


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add ``auth login`` and ``auth status``."""
    actions = add_group(
        sub,
        "auth",
        help="authorise with MTT (OAuth 2.0) and show the token status",
        description="Authorise the integration with MTT and show whether it is authorised.",
    )

    login = actions.add_parser(
        "login",
        help="print the authorize URL and wait for MTT's callback",
        description="Print MTT's authorize URL, serve the OAuth callback on server.listen at the "
        "path of mtt.redirect_uri until it arrives (or 10 minutes pass), and store the tokens.",
    )
    add_config_arg(login)
    login.add_argument(
        "--timeout",
        type=float,
        default=STATE_TTL_S,
        metavar="SECONDS",
        help="how long to wait for the callback (default: 600, the life of the URL)",
    )
    login.set_defaults(handler=_login)

    status = actions.add_parser(
        "status",
        help="say whether the integration is authorised and until when",
        description="Say whether a usable token is stored and until when (never prints a token). "
        "Exit 0 when authorised, 1 when not.",
    )
    add_config_arg(status)
    add_json_arg(status)
    status.set_defaults(handler=_status)


# -- status -----------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    return run_mtt(args, partial(_show_status, as_json=args.json))


def _in(seconds: float) -> str:
    if seconds <= 0:
        return "expired"
    minutes = int(seconds // 60)
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"in {days}d {hours}h"
    return f"in {hours}h {mins}m" if hours else f"in {mins}m"


async def _show_status(ctx: MttContext, *, as_json: bool) -> int:
    status = ctx.tokens.status()
    authorised = bool(status["authorized"])
    tokens = ctx.tokens.tokens
    if as_json:
        print_json(status)
    elif tokens is None:
        print(f"Not authorised: no tokens in {ctx.config.tokens_file}.")
    else:
        now = time.time()
        print(f"Authorised: {'yes' if authorised else 'no'}")
        print(
            f"Access token:  valid until {status['access_expires_at']} "
            f"({_in(tokens.access_expires_at - now)})"
        )
        print(
            f"Refresh token: valid until {status['refresh_expires_at']} "
            f"({_in(tokens.refresh_expires_at - now)})"
        )
    if not authorised and not as_json:
        print(f"Run `mtt-router auth login --config {ctx.config_path}` to authorise.")
    return EXIT_OK if authorised else EXIT_FAILED


# -- login ------------------------------------------------------------------------------------


def _login(args: argparse.Namespace) -> int:
    return run_mtt(args, partial(_login_flow, timeout_s=args.timeout))


_PAGE = (
    '<!doctype html><html><head><meta charset="utf-8"><title>mtt-router</title></head>'
    "<body><h1>{title}</h1><p>{text}</p></body></html>"
)


def _page(title: str, text: str, status: int = 200) -> web.Response:
    body = _PAGE.format(title=html.escape(title), text=html.escape(text))
    return web.Response(text=body, status=status, content_type="text/html")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


async def _login_flow(ctx: MttContext, *, timeout_s: float) -> int:
    config = ctx.config
    outcome: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def finish(code: int, message: str) -> None:
        if not outcome.done():
            print(message, file=sys.stdout if code == EXIT_OK else sys.stderr, flush=True)
            outcome.set_result(code)

    async def callback(request: web.Request) -> web.Response:
        query = request.query
        state = query.get("state", "")
        if "error" in query:
            reason = query.get("error_description") or query["error"]
            if state and await ctx.stores.states.redeem(state):
                finish(EXIT_FAILED, f"MTT refused the authorisation: {reason}")
            return _page("Not authorised", f"MTT says: {reason}", status=400)
        code = query.get("code")
        if not code or not state:
            return _page("Bad request", "The callback needs code and state.", status=400)
        try:
            tokens = await ctx.tokens.complete_login(code, state)
        except InvalidStateError:
            return _page(
                "Link expired", "This login link is unknown, expired or used already.", status=400
            )
        except RouterError as exc:
            finish(EXIT_FAILED, f"login failed: {exc}")
            return _page("Login failed", "MTT did not issue tokens; see the terminal.", status=502)
        finish(
            EXIT_OK,
            f"Authorised. Tokens stored in {config.tokens_file}; access token valid until "
            f"{_when(tokens.access_expires_at)}, refresh token until "
            f"{_when(tokens.refresh_expires_at)}.",
        )
        return _page("Authorised", "mtt-router may now use MTT's API. You can close this page.")

    app = web.Application()
    path = config.mtt.callback_path
    app.router.add_get(path, callback)
    if path != "/":
        app.router.add_get(path + "/", callback)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    listen = config.server.listen
    try:
        try:
            await web.TCPSite(runner, listen.host, listen.port).start()
        except OSError as exc:
            return fail(
                f"cannot listen on {listen} ({exc.strerror or exc}): is the daemon running? "
                "Then open /oauth/start on its admin listener instead."
            )
        url = await ctx.tokens.begin_login()
        print(
            f"Open this URL in a browser and log in to MTT Business "
            f"(valid {int(STATE_TTL_S // 60)} minutes):\n\n  {url}\n\n"
            f"Waiting for MTT's redirect to {config.mtt.redirect_uri} "
            f"(listening on {listen}) ...",
            flush=True,
        )
        try:
            return await asyncio.wait_for(outcome, timeout_s)
        except TimeoutError:
            return fail(f"no callback within {timeout_s:g} s; run `mtt-router auth login` again")
    finally:
        await runner.cleanup()
