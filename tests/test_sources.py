"""Candidate sources and their order (router.sources): pure, no storage."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from router.context import CallerContext, MatchKind, Read, Verdict
from router.routing import decide
from router.rules import Rules, load_rules
from router.sources import (
    CLIENTS_SPACE,
    DEFAULT_SOURCES,
    ClientsSource,
    PrefixSource,
    in_order,
    next_fetch,
    reads_for,
)

RULES = load_rules(
    """\
version: 1
timezone: Europe/Moscow
managers:
  ivanov:  {workplace: "101"}
  petrova: {workplace: "102"}
clients:
  "+7 812 424-15-00": ivanov
prefixes:
  "+7812": petrova
"""
)
NOW = datetime(2027, 1, 12, 8, 0, tzinfo=UTC)
CALLER = "+7 812 424-15-00"


def context(caller: str | None = CALLER) -> CallerContext:
    """A context for ``caller`` at a working hour."""
    return CallerContext.of(caller, now=NOW)


def test_default_order_is_clients_then_prefixes() -> None:
    """With the default order, the client's manager comes before the prefix's."""
    decision = decide(context(), RULES)
    assert [(t.manager, t.via) for t in decision.targets] == [
        ("ivanov", MatchKind.CLIENT),
        ("petrova", MatchKind.PREFIX),
    ]


def test_rules_order_decides_which_source_comes_first() -> None:
    """``order: [prefixes, clients]`` puts the prefix's manager first."""
    rules: Rules = dataclasses.replace(RULES, order=("prefixes", "clients"))
    assert [t.manager for t in decide(context(), rules).targets] == ["petrova", "ivanov"]


def test_a_source_left_out_of_order_is_not_consulted() -> None:
    """``order: [clients]``: no prefix candidate, no prefix reason."""
    rules = dataclasses.replace(RULES, order=("clients",))
    decision = decide(context("+7 812 000-00-00"), rules)
    assert decision.targets == ()
    assert not any("prefix" in reason for reason in decision.reasons)


def test_names_without_a_registered_source_are_skipped() -> None:
    """The default order names lookup, which the daemon registers (it needs a session): the
    pure registry walks the others."""
    assert in_order(RULES, DEFAULT_SOURCES) == (
        DEFAULT_SOURCES["clients"],
        DEFAULT_SOURCES["learned"],
        DEFAULT_SOURCES["prefixes"],
    )


def test_sources_declare_their_reads() -> None:
    """The client source reads the caller's entry in the client map; prefixes read nothing."""
    chain = (ClientsSource(), PrefixSource())
    assert reads_for("78124241500", chain) == (Read(CLIENTS_SPACE, "78124241500"),)
    assert reads_for(None, chain) == ()


class Lookup:
    """A fetching source for next_fetch."""

    kind = MatchKind.CLIENT
    name = "lookup"

    def reads(self, caller: str) -> tuple[Read, ...]:
        """None."""
        return ()

    def resolve(self, context: CallerContext, rules: Rules) -> Verdict:
        """The fetched verdict."""
        return context.fetched.get(self.name, Verdict(None))

    async def fetch(self, context: CallerContext, rules: Rules) -> Verdict:
        """Names petrova."""
        return Verdict("petrova")


def test_next_fetch_only_after_sources_that_named_nobody() -> None:
    """A fetching source is due when no source before it named anyone, and only once."""
    lookup = Lookup()
    chain = (ClientsSource(), lookup)
    assert next_fetch(context(), RULES, chain) is None  # the client map names ivanov
    unknown = context("+7 495 000-00-00")
    assert next_fetch(unknown, RULES, chain) is lookup
    done = unknown.with_fetched("lookup", Verdict("petrova"))
    assert next_fetch(done, RULES, chain) is None
    assert next_fetch(context(None), RULES, (lookup,)) is None  # unreadable caller: no I/O
