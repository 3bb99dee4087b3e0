"""``rules explain``: one call's decision laid out step by step. Pure: the command gathers.

The decision itself is :func:`router.routing.decide` on the sources that could be consulted, the
same function the daemon runs; around it this module says what the chain alone does not: each
source of ``order`` in turn (what it named, or why it was not consulted or not asked), what the
day is by the calendar, which fallback the line has, who is on a call as far as explain knows, and
what ``no_answer`` would do if the chosen manager does not pick up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from router.context import CallerContext, MatchKind
from router.routing import Action, Decision, Target, decide
from router.rules.model import Otherwise, Rules
from router.sources import CandidateSource

NAMED = "named"
NOBODY = "nobody"
NOT_CONSULTED = "not consulted"
NOT_ASKED = "not asked"
NOT_AVAILABLE = "not available"
"""Why a source of ``order`` that nothing provides was not consulted."""
_NOTHING = {"prefixes": "no prefix matches", "learned": "nothing learned for this caller"}


@dataclass(frozen=True, slots=True)
class SourceStep:
    """What one source of ``order`` did for this caller."""

    name: str
    status: str
    """:data:`NAMED`, :data:`NOBODY`, :data:`NOT_CONSULTED` or :data:`NOT_ASKED`."""
    manager: str | None = None
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """``{"name", "status", "manager", "notes"}``."""
        return {
            "name": self.name,
            "status": self.status,
            "manager": self.manager,
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    """The decision and everything ``rules explain`` prints around it."""

    rules: Rules
    context: CallerContext
    decision: Decision
    sources: tuple[SourceStep, ...]
    local: datetime
    """The call's time in the rules' time zone."""
    day: str | None
    """What the calendar says of the day (``a day off (RU: New Year Holidays)``), if anything."""
    line_own: bool
    """True when the line (``--callee``) has its own fallback (``lines``)."""
    fallback: tuple[str, ...]
    otherwise: Otherwise
    no_answer: str
    """What happens when the chosen manager does not pick up."""
    hops: tuple[Target, ...]
    presence: str
    """Who is on a call, as far as explain knows."""


def explain(
    context: CallerContext,
    rules: Rules,
    sources: Mapping[str, CandidateSource],
    *,
    skipped: Mapping[str, str] | None = None,
    notes: Mapping[str, tuple[str, ...]] | None = None,
    presence: str = "",
) -> Explanation:
    """Decide ``context`` with the ``sources`` that could be consulted, and lay it out.

    ``skipped`` says why a source of ``order`` was not consulted (``not consulted (no --config)``);
    ``notes`` adds lines to a source's step (where a client entry came from). A source in neither
    is "not available".
    """
    skipped = skipped or {}
    notes = notes or {}
    chain = tuple(sources[name] for name in rules.order if name in sources)
    decision = decide(context, rules, chain)
    local = context.now.astimezone(rules.timezone)
    fallback, otherwise, line_own = rules.fallback_for(context.callee)
    plan, hops = no_answer_plan(rules, decision)
    return Explanation(
        rules=rules,
        context=context,
        decision=decision,
        sources=_steps(context, rules, sources, skipped, notes),
        local=local,
        day=describe_day(rules, local.date()),
        line_own=line_own,
        fallback=fallback,
        otherwise=otherwise,
        no_answer=plan,
        hops=hops,
        presence=presence,
    )


def _steps(
    context: CallerContext,
    rules: Rules,
    sources: Mapping[str, CandidateSource],
    skipped: Mapping[str, str],
    notes: Mapping[str, tuple[str, ...]],
) -> tuple[SourceStep, ...]:
    """Each source of ``order`` as :func:`router.routing.decide` walks them: with version 2 the
    first that names a manager decides, and the rest are not asked."""
    steps: list[SourceStep] = []
    first: tuple[str, str] | None = None
    for name in rules.order:
        extra = notes.get(name, ())
        if context.caller is None:
            steps.append(SourceStep(name, NOT_ASKED, None, ("the caller's number is unreadable",)))
        elif first is not None and rules.version >= 2:
            steps.append(SourceStep(name, NOT_ASKED, None, (f"{first[0]} named {first[1]} first",)))
        elif name in skipped:
            steps.append(SourceStep(name, NOT_CONSULTED, None, (skipped[name], *extra)))
        elif name not in sources:
            steps.append(SourceStep(name, NOT_CONSULTED, None, (NOT_AVAILABLE, *extra)))
        else:
            verdict = sources[name].resolve(context, rules)
            status = NOBODY if verdict.manager is None else NAMED
            told = verdict.reasons or (
                (_NOTHING.get(name, "nothing"),) if verdict.manager is None and not extra else ()
            )
            steps.append(SourceStep(name, status, verdict.manager, (*told, *extra)))
            if verdict.manager is not None and first is None:
                first = (name, verdict.manager)
    return tuple(steps)


def describe_day(rules: Rules, day: date) -> str | None:
    """What the rules' calendar says of ``day``: a day off, a moved or an extra working day."""
    calendar = rules.calendar
    if calendar is None:
        return None
    if day in calendar.workdays:
        return "an extra working day (workdays): the mon-fri hours apply"
    holiday = calendar.day_off(day)
    if holiday is not None:
        return f"a day off ({calendar.country}: {holiday})"
    if calendar.working(day):
        return f"a working {day:%A} by decree ({calendar.country}): the mon-fri hours apply"
    return None


def label(target: Target) -> str:
    """``petrova``, ``deputy petrova`` or ``fallback sidorov``."""
    if target.via is MatchKind.DEPUTY:
        return f"deputy {target.manager}"
    if target.via is MatchKind.FALLBACK:
        return f"fallback {target.manager}"
    return target.manager


def no_answer_plan(rules: Rules, decision: Decision) -> tuple[str, tuple[Target, ...]]:
    """What ``no_answer`` does when the first target does not pick up, and the hops it takes.

    The re-route (:mod:`router.reroute`) transfers the same call to the decision's next target,
    skipping those busy by then, at most ``max_hops`` times; explain names the targets available
    now. When none is left the PBX goes on with the call.
    """
    rule = rules.no_answer
    first = decision.target
    if first is None:
        return "nothing to re-route: the call is not transferred", ()
    if rule is None:
        return (
            f"not re-routed (no no_answer key): if {first.manager} does not answer, "
            "the PBX goes on with the call"
        ), ()
    after = f"no answer within {rule.after_s:g} s"
    hops = decision.targets[1 : 1 + rule.max_hops]
    if not hops:
        return f"{after} → nobody after {first.manager} to try: the PBX goes on with the call", ()
    steps = ", then ".join(label(target) for target in hops)
    limit = f"at most {rule.max_hops} hop{'s' if rule.max_hops != 1 else ''}"
    return f"{after} → {steps}; {limit}, then the PBX goes on with the call", hops


def to_json(explanation: Explanation) -> dict[str, Any]:
    """The ``--json`` shape: the decision's fields, then what explain adds."""
    e = explanation
    out = e.decision.to_json()
    out.update(
        {
            "deputy": e.decision.deputy,
            "at": e.local.isoformat(),
            "day": e.day,
            "callee": e.context.callee,
            "order": list(e.rules.order),
            "sources": [step.to_json() for step in e.sources],
            "fallback": {
                "managers": list(e.fallback),
                "otherwise": e.otherwise.value,
                "line": e.context.callee if e.line_own else None,
            },
            "no_answer": {
                "plan": e.no_answer,
                "after_s": e.rules.no_answer.after_s if e.rules.no_answer else None,
                "max_hops": e.rules.no_answer.max_hops if e.rules.no_answer else None,
                "next": [
                    {"manager": t.manager, "workplace": t.workplace, "via": t.via.value}
                    for t in e.hops
                ],
            },
            "presence": e.presence,
        }
    )
    return out


def to_lines(explanation: Explanation, caller_raw: str | None) -> list[str]:
    """The human-readable report."""
    e = explanation
    decision, rules = e.decision, e.rules
    caller = f"{caller_raw!r} (unreadable)" if caller_raw else "(none)"
    if decision.caller is not None:
        caller = f"{caller_raw} -> {decision.caller}"
    lines = [f"caller:    {caller}"]
    if e.context.callee is not None:
        whose = "its own fallback (lines)" if e.line_own else "the top-level fallback"
        lines.append(f"line:      {e.context.callee}: {whose}")
    day = f", {e.day}" if e.day else ""
    lines.append(f"at:        {e.local:%Y-%m-%d %H:%M %a} ({rules.timezone.key}){day}")
    if decision.action is Action.TRANSFER:
        for i, target in enumerate(decision.targets):
            head = "decision:  transfer to" if i == 0 else f"{'then:':<22}"
            name = rules.managers[target.manager].label
            lines.append(f"{head} {name} at {target.workplace} [{target.via}]")
    elif decision.action is Action.TERMINATE:
        lines.append(
            "decision:  terminate (terminateCall: the PBX routes the call its usual way now)"
        )
    else:
        lines.append("decision:  wait (no command: the PBX routes the call when parking ends)")
    lines.append(f"sources:   in order: {', '.join(rules.order)}")
    width = max((len(step.name) for step in e.sources), default=0) + 1
    for step in e.sources:
        head = f"  {step.name + ':':<{width}} "
        if step.status in (NAMED, NOBODY):
            lines.append(f"{head}{step.manager or NOBODY}")
            lines.extend(f"  {'':<{width}}   {note}" for note in step.notes)
        else:
            lines.append(f"{head}{step.status} ({'; '.join(step.notes)})")
    managers = ", ".join(e.fallback) if e.fallback else "none"
    lines.append(f"fallback:  {managers}; otherwise: {e.otherwise.value}")
    lines.append(f"no answer: {e.no_answer}")
    if e.presence:
        lines.append(f"on a call: {e.presence}")
    lines.append("why:")
    lines.extend(f"  - {reason}" for reason in decision.reasons)
    return lines
