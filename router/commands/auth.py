"""``mtt-router auth login|status``: authorise the integration with MTT, and check that it is.

``login`` prints MTT's authorize URL, serves the OAuth callback on ``server.listen`` at the path of
``redirect_uri`` until MTT's redirect brings the code back (or 10 minutes pass), and stores the
tokens. Run it instead of the daemon (they share the port), or use the daemon's ``/oauth/start``.
The callback is the daemon's own (:mod:`router.oauth_callback`): same pages, same status codes.
It exits 0 once the tokens are stored, 1 when MTT refuses the login or the code exchange fails; a
callback carrying a state this run did not issue gets its 400 and the command keeps waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime
from functools import partial

from aiohttp import web

from router.commands._common import (
    MttContext,
    add_config_arg,
    add_json_arg,
    fail,
    print_json,
    run_mtt,
)
from router.commands._groups import Subparsers, add_group
from router.exits import Exit
from router.mtt.auth import STATE_TTL_S
from router.mtt.tokens import remaining
from router.oauth_callback import LoginOutcome, OAuthCallback, add_callback_routes


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
            f"({remaining(tokens.access_expires_at - now)})"
        )
        print(
            f"Refresh token: valid until {status['refresh_expires_at']} "
            f"({remaining(tokens.refresh_expires_at - now)})"
        )
    if not authorised and not as_json:
        print(f"Run `mtt-router auth login --config {ctx.config_path}` to authorise.")
    return Exit.OK if authorised else Exit.FAILED


# -- login ------------------------------------------------------------------------------------


def _login(args: argparse.Namespace) -> int:
    return run_mtt(args, partial(_login_flow, timeout_s=args.timeout))


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


async def _login_flow(ctx: MttContext, *, timeout_s: float) -> int:
    config = ctx.config
    outcome: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def finish(code: int, message: str) -> None:
        if not outcome.done():
            print(message, file=sys.stdout if code == Exit.OK else sys.stderr, flush=True)
            outcome.set_result(code)

    def on_outcome(login: LoginOutcome) -> None:
        if login.result == "refused":
            finish(Exit.FAILED, f"MTT refused the authorisation: {login.detail}")
        elif login.result == "failed":
            finish(Exit.FAILED, f"login failed: {login.detail}")
        else:
            tokens = ctx.tokens.tokens
            until = (
                ""
                if tokens is None
                else f"; access token valid until {_when(tokens.access_expires_at)}, "
                f"refresh token until {_when(tokens.refresh_expires_at)}"
            )
            finish(Exit.OK, f"Authorised. Tokens stored in {config.tokens_file}{until}.")

    app = web.Application()
    callback = OAuthCallback(
        redeem_state=ctx.stores.states.redeem,
        complete_login=ctx.tokens.complete_login,
        on_outcome=on_outcome,
        retry_hint="Run `mtt-router auth login` again for a new link.",
    )
    add_callback_routes(app.router, config.mtt.callback_path, callback.handle)
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
