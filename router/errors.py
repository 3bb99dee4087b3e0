"""The one error hierarchy of mtt-router.

Every error the package raises on purpose derives from :class:`RouterError`, so that the CLI and
the daemon can tell "we refused this" from "this is a bug".
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error mtt-router raises deliberately."""


class ConfigError(RouterError, ValueError):
    """The configuration file is invalid; ``problems`` has one line per problem, naming the key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class RulesError(RouterError, ValueError):
    """A rules file is invalid; ``problems`` are ``(line, message)`` pairs (line 0: whole file)."""

    def __init__(
        self,
        source: str,
        problems: list[tuple[int, str]],
        elsewhere: list[tuple[str, int, str]] | None = None,
    ) -> None:
        self.source = source
        self.problems = sorted(problems)
        self.elsewhere = list(elsewhere or ())
        """Problems in another file (the rules' ``clients_file``): ``(path, line, message)``."""
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """Problems as ``PATH:LINE: message`` lines, the format `rules check` prints."""
        own = [f"{self.source}:{line}: {message}" for line, message in self.problems]
        return own + [f"{path}:{line}: {message}" for path, line, message in self.elsewhere]


class EventShapeError(RouterError, ValueError):
    """A webhook body is JSON but not a notification we can read; the message says why."""


class UpstreamError(RouterError):
    """MTT (OAuth or API) did not do what we asked; ``retryable`` says whether a retry may help."""

    def __init__(
        self, message: str, *, method: str = "", status: int | None = None, retryable: bool = False
    ) -> None:
        self.method = method
        self.status = status
        self.retryable = retryable
        super().__init__(message)


class UpstreamTimeoutError(UpstreamError, TimeoutError):
    """The call's deadline passed before MTT answered."""


class UpstreamConnectionError(UpstreamError, ConnectionError):
    """MTT could not be reached; for a refused connection nothing was sent, so a retry is safe."""


class ClientRequestError(UpstreamError):
    """MTT answered 4xx (other than 401); ``mtt_message`` is MTT's own text when it gave one."""

    def __init__(self, message: str, *, method: str, status: int, mtt_message: str = "") -> None:
        self.mtt_message = mtt_message
        super().__init__(message, method=method, status=status, retryable=False)


class ServerError(UpstreamError):
    """MTT answered 5xx."""


class AuthError(UpstreamError):
    """MTT refused our credentials (401 after a refresh, or the token endpoint refused a grant)."""


class NeedsLoginError(AuthError):
    """No usable token: an operator must authorise the integration again (``auth login``)."""


class TokenUnavailableError(UpstreamError):
    """No token could be had for a request (the token endpoint failed or was too slow): the
    request was not sent, or was refused (401) and not sent again. Nothing was applied."""


class InvalidGrantError(AuthError):
    """The token endpoint refused the code or refresh token (``invalid_grant``)."""


class InvalidStateError(AuthError):
    """An OAuth callback's ``state`` is unknown, expired or already used: nothing is stored."""


class ListenError(RouterError):
    """A listener could not bind its address (port taken, address not on this host)."""


class StorageError(RouterError, ConnectionError):
    """The shared storage (Redis) did not answer in time; callers fall back to local state."""
