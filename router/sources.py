"""Candidate sources: where a caller's own manager can come from, one small unit each.

A source declares the storage reads it needs (:meth:`CandidateSource.reads`) and resolves a
:class:`~router.context.Verdict` from the gathered :class:`~router.context.CallerContext`. The
engine reads the claim and every declared read in one storage step, then
:func:`router.routing.decide` walks the sources in the rules' ``order``. A source that does its
own I/O (:class:`FetchingSource`, e.g. a CRM lookup) is run by the engine only when the sources
before it in ``order`` named nobody (:func:`next_fetch`).

Adding a source: write the unit here (or in its own module) and register it in
:data:`DEFAULT_SOURCES` under the name the rules' ``order`` uses. Pure: no I/O in this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from router.context import NOBODY, CallerContext, MatchKind, Read, Verdict
from router.rules.model import Rules

CLIENTS_SPACE = "clients"
"""The storage map of per-client edits: normalised number -> manager id."""
LEARNED_SPACE = "learned"
"""The storage map of what ``learn`` remembered: normalised number -> manager id, each entry
expiring ``learn.ttl_days`` after the conversation that taught it (:mod:`router.learning`)."""


class CandidateSource(Protocol):
    """Names a manager for the caller, from the rules and what the storage answered."""

    @property
    def kind(self) -> MatchKind:
        """How a manager found by this source is reported (``matched`` in the decision line)."""
        ...

    def reads(self, caller: str) -> tuple[Read, ...]:
        """The storage reads this source needs for the normalised ``caller``."""
        ...

    def resolve(self, context: CallerContext, rules: Rules) -> Verdict:
        """The manager this source names for ``context.caller`` (never ``None``), and why."""
        ...


@runtime_checkable
class FetchingSource(CandidateSource, Protocol):
    """A source with its own I/O; :meth:`resolve` reads the verdict the engine fetched."""

    @property
    def name(self) -> str:
        """The key of its verdict in :attr:`CallerContext.fetched`."""
        ...

    async def fetch(self, context: CallerContext, rules: Rules) -> Verdict:
        """Ask the outside world (bounded by the source's own timeout); never raises."""
        ...


class ClientsSource:
    """The caller's personal manager: the storage's client map first, then the rules' clients."""

    kind = MatchKind.CLIENT

    def reads(self, caller: str) -> tuple[Read, ...]:
        """The caller's entry in the storage's client map."""
        return (Read(CLIENTS_SPACE, caller),)

    def resolve(self, context: CallerContext, rules: Rules) -> Verdict:
        """The client map's manager when the rules know it, else the rules' ``clients``."""
        number = context.caller
        assert number is not None  # decide() consults no source for an unreadable caller
        reasons: list[str] = []
        stored = context.stored.get(Read(CLIENTS_SPACE, number))
        if stored is not None:
            if stored in rules.managers:
                return Verdict(stored, (f"caller {number} is client of {stored} (client store)",))
            reasons.append(f"client store names unknown manager {stored!r} for {number}: ignored")
        personal = rules.clients.get(number)
        if personal is not None:
            reasons.append(f"caller {number} is client of {personal}")
        else:
            reasons.append(f"caller {number} is not a listed client")
        return Verdict(personal, tuple(reasons))


class PrefixSource:
    """The manager of the longest prefix of the caller's number."""

    kind = MatchKind.PREFIX

    def reads(self, caller: str) -> tuple[Read, ...]:
        """None: prefixes are in the rules."""
        return ()

    def resolve(self, context: CallerContext, rules: Rules) -> Verdict:
        """The longest matching prefix's manager (no reason when no prefix matches)."""
        assert context.caller is not None
        found = rules.match_prefix(context.caller)
        if found is None:
            return NOBODY
        prefix, manager = found
        return Verdict(manager, (f"caller {context.caller} matches prefix {prefix}: {manager}",))


class LearnedSource:
    """The manager the caller last talked to long enough (rules ``learn``), from the storage.

    Names nobody while the rules have no ``learn`` (entries already learned stay stored, unused),
    and ignores, with a reason, a learned manager the rules no longer know or now ``exclude``.
    """

    kind = MatchKind.LEARNED

    def reads(self, caller: str) -> tuple[Read, ...]:
        """The caller's entry in the storage's learned map."""
        return (Read(LEARNED_SPACE, caller),)

    def resolve(self, context: CallerContext, rules: Rules) -> Verdict:
        """The learned manager when ``learn`` is on and the rules know him."""
        number = context.caller
        assert number is not None
        learned = context.stored.get(Read(LEARNED_SPACE, number))
        if learned is None or rules.learn is None:
            return NOBODY
        if learned not in rules.managers:
            return Verdict(None, (f"learned manager {learned!r} for {number} is unknown: ignored",))
        if learned in rules.learn.exclude:
            return Verdict(None, (f"learned manager {learned} is in learn.exclude: ignored",))
        return Verdict(learned, (f"caller {number} talked to {learned} before (learned)",))


DEFAULT_SOURCES: Mapping[str, CandidateSource] = MappingProxyType(
    {"clients": ClientsSource(), "learned": LearnedSource(), "prefixes": PrefixSource()}
)
"""Sources by the name the rules' ``order`` uses; a name with no source here is skipped."""


def in_order(rules: Rules, sources: Mapping[str, CandidateSource]) -> tuple[CandidateSource, ...]:
    """The registered sources named in ``rules.order``, in that order."""
    return tuple(sources[name] for name in rules.order if name in sources)


def reads_for(
    caller: str | None, chain: Sequence[CandidateSource], rules: Rules | None = None
) -> tuple[Read, ...]:
    """Every storage read the ``chain`` declares for ``caller`` (none for an unreadable one).

    With ``rules``, only those that can change the decision: not the learned map's while the
    rules have no ``learn`` (:class:`LearnedSource` names nobody then)."""
    if caller is None:
        return ()
    reads = tuple(read for source in chain for read in source.reads(caller))
    if rules is not None and rules.learn is None:
        return tuple(read for read in reads if read.space != LEARNED_SPACE)
    return reads


def next_fetch(
    context: CallerContext, rules: Rules, chain: Sequence[CandidateSource]
) -> FetchingSource | None:
    """The fetching source the engine must run next, if any.

    Walks ``chain`` like :func:`router.routing.decide`: the first fetching source not yet fetched
    is returned only when every source before it named nobody.
    """
    if context.caller is None:
        return None
    for source in chain:
        if isinstance(source, FetchingSource):
            if source.name not in context.fetched:
                return source
            if context.fetched[source.name].manager is not None:
                return None
        elif source.resolve(context, rules).manager is not None:
            return None
    return None
