"""The OAuth callback ``GET P?code=&state=``: one handler for the daemon and ``auth login``.

After the login page MTT sends the operator's browser to the redirect URI with ``code`` and
``state``, or with ``error`` (and maybe ``error_description``) when the login was refused. The
daemon serves this on its public listener; ``mtt-router auth login`` serves it on the same address
while it waits. Both answer the same pages with the same status codes; what happens next differs,
so each passes a hook that hears the outcome (the daemon refreshes its directory, the command
exits 0 or 1):

================================================  ======  ================================
request                                           status  hook hears
================================================  ======  ================================
no query at all (MTT's reachability check)        200     nothing
``error=`` (the state, if given, is redeemed)     400     ``refused`` if the state was ours
no ``code`` or no ``state``                       400     nothing
state unknown, expired or already used            400     nothing
MTT refuses the code (:class:`AuthError`)         400     ``failed``
MTT or the storage fails otherwise                502     ``failed``
tokens stored                                     200     ``authorised``
================================================  ======  ================================

A callback whose state we did not issue (or issued and already used) tells the hook nothing: a
forged or replayed link must not end a login someone is in the middle of.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import structlog
from aiohttp import web

from router.errors import AuthError, InvalidStateError, RouterError

log = structlog.get_logger("router.oauth_callback")

Result = Literal["authorised", "refused", "failed"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class LoginOutcome:
    """How a callback carrying one of our states ended."""

    result: Result
    detail: str = ""
    """MTT's error (``refused``) or what failed (``failed``); empty when ``authorised``."""


@dataclass(frozen=True)
class OAuthCallback:
    """The callback; :meth:`handle` is its aiohttp handler.

    ``redeem_state`` forgets a state (True only if it was ours and still valid);
    ``complete_login(code, state)`` checks the state, exchanges the code and stores the tokens;
    ``on_outcome`` hears how a login with one of our states ended; ``retry_hint`` ends the page
    of a failed login (where to start again).
    """

    redeem_state: Callable[[str], Awaitable[bool]]
    complete_login: Callable[[str, str], Awaitable[object]]
    on_outcome: Callable[[LoginOutcome], None]
    retry_hint: str

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one callback request (see the module docstring for the cases)."""
        query = request.query
        if not query:
            return page(
                "mtt-router",
                "This is the OAuth callback of mtt-router: MTT sends the browser here after login.",
            )
        state = query.get("state", "")
        if "error" in query:
            return await self._refused(query["error"], query.get("error_description"), state)
        code = query.get("code")
        if not code or not state:
            return page("Bad request", "The OAuth callback needs both code and state.", 400)
        try:
            await self.complete_login(code, state)
        except InvalidStateError as exc:
            log.warning("oauth_callback_refused", error=str(exc))
            return page("Authorisation failed", f"{exc}. {self.retry_hint}", 400)
        except AuthError as exc:
            log.warning("oauth_callback_refused", error=str(exc))
            self.on_outcome(LoginOutcome("failed", str(exc)))
            return page("Authorisation failed", f"{exc}. {self.retry_hint}", 400)
        except RouterError as exc:
            log.warning("oauth_callback_failed", error=str(exc))
            self.on_outcome(LoginOutcome("failed", str(exc)))
            return page("Login did not complete", f"{exc}. {self.retry_hint}", 502)
        self.on_outcome(LoginOutcome("authorised"))
        return page("Authorised", "mtt-router may now use the MTT API. You can close this page.")

    async def _refused(self, error: str, description: str | None, state: str) -> web.Response:
        # Redeemed even though nothing will be exchanged: a refused state must not be usable
        # later (a replayed link, or MTT changing its mind with the same state).
        ours, not_redeemed = False, None
        if state:
            try:
                ours = await self.redeem_state(state)
            except RouterError as exc:  # storage down: the state expires by itself
                not_redeemed = str(exc)
        reason = description or error
        log.warning(
            "oauth_denied",
            error=error,
            description=description,
            state_known=ours,
            state_not_redeemed=not_redeemed,
        )
        if ours:
            self.on_outcome(LoginOutcome("refused", reason))
        return page("Authorisation refused", f"MTT said: {reason}. {self.retry_hint}", 400)


def add_callback_routes(router: web.UrlDispatcher, path: str, handler: Handler) -> None:
    """Serve ``handler`` at ``path``, and at ``path + "/"`` unless ``path`` is ``/``.

    A redirect URI of ``https://host/mtt/`` brings the browser back to ``/mtt/?code=...``.
    """
    router.add_get(path, handler)
    if path != "/":
        router.add_get(path + "/", handler)


def page(title: str, text: str, status: int = 200) -> web.Response:
    """A minimal HTML page (``title`` as heading, ``text`` below), both escaped."""
    body = (
        "<!doctype html><meta charset=utf-8><title>mtt-router</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    )
    return web.Response(status=status, text=body, content_type="text/html")
