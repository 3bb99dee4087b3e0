"""``mtt-router demo``'s scripted calls: rules version 2 at work after the random mix.

Two short stories on the example rules, played through the simulator against the running daemon:

- **learned**: a caller in no list dials the service line (its own fallback: Petrova first) and
  talks to Petrova; his next call, to the main number, goes to Petrova by what ``learn``
  remembered (without it he would reach the duty manager);
- **no answer**: a client of Ivanov calls while Ivanov's phone rings unanswered; after
  ``no_answer.after_s`` the daemon transfers the same call on to his deputy, who answers.

The demo shortens the example's ``learn.min_talk_s`` and ``no_answer.after_s`` (10 s and 20 s) so
the stories take about two seconds (:func:`demo_rules_text`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from router.rules.model import Rules
from router.simulator import SimCall, Simulator

DEMO_TIMINGS = (("  min_talk_s: 10 ", "  min_talk_s: 0.2"), ("  after_s: 20 ", "  after_s: 1"))
"""The example's lines the demo replaces, and with what."""
DEMO_TIMINGS_NOTE = (
    "learn.min_talk_s 0.2 s and no_answer.after_s 1 s; the example says 10 s and 20 s"
)
LEARNED_CALLER = "79995550001"
"""A number in no list and under no prefix of the example."""
STORY_TIMEOUT_S = 15.0


def demo_rules_text(example: str) -> str:
    """The example rules with the demo's short timings (each line must be there, once)."""
    for old, new in DEMO_TIMINGS:
        if example.count(old) != 1:
            raise ValueError(f"the example rules no longer have {old.strip()!r}")
        start = example.index(old)
        end = example.index("#", start)  # keep the comment where it was
        example = example[:start] + new.ljust(end - start) + example[end:]
    return example


@dataclass
class Story:
    """What the two stories showed (``None`` where a call did not get that far)."""

    line: str
    main: str
    learned_caller: str
    taught_by: str | None = None
    then_sent_to: str | None = None
    rerouted_caller: str = ""
    transfers: tuple[str, ...] = ()
    answered_by: str | None = None
    after_s: float = 0.0

    @property
    def learned_ok(self) -> bool:
        """The second call went to the manager the first one talked to."""
        return self.taught_by is not None and self.then_sent_to == self.taught_by

    @property
    def rerouted_ok(self) -> bool:
        """Transferred twice, and answered where the re-route sent it."""
        return len(self.transfers) >= 2 and self.answered_by == self.transfers[-1]

    def to_json(self) -> dict[str, Any]:
        """The demo's ``--json`` ``story``."""
        return {
            "learned": {
                "caller": self.learned_caller,
                "line": self.line,
                "taught_by": self.taught_by,
                "then_sent_to": self.then_sent_to,
                "ok": self.learned_ok,
            },
            "no_answer": {
                "caller": self.rerouted_caller,
                "after_s": self.after_s,
                "transfers": list(self.transfers),
                "answered_by": self.answered_by,
                "ok": self.rerouted_ok,
            },
        }

    def lines(self) -> list[str]:
        """The human-readable account."""
        first = self.transfers[0] if self.transfers else "nobody"
        moved = ", then ".join(self.transfers[1:]) or "nobody"
        return [
            f"learned:   {self.learned_caller} called line {self.line} and talked to "
            f"{self.taught_by or 'nobody'}; his next call, to {self.main}, went to "
            f"{self.then_sent_to or 'nobody'} [learned]"
            + ("" if self.learned_ok else "  [not as expected]"),
            f"no answer: {self.rerouted_caller} was transferred to {first}, whose phone rang "
            f"unanswered for {self.after_s:g} s; the daemon moved the call on to {moved}, and "
            f"{self.answered_by or 'nobody'} answered"
            + ("" if self.rerouted_ok else "  [not as expected]"),
        ]


async def play(sim: Simulator, rules: Rules) -> Story:
    """Both stories, one after the other, on an idle PBX."""
    numbers = sorted(sim.pbx.numbers)
    line = next(n for n in numbers if n in rules.lines)
    main = next(n for n in numbers if n not in rules.lines)
    by_workplace = {m.workplace: m.id for m in rules.managers.values()}
    story = Story(line=line, main=main, learned_caller=LEARNED_CALLER)
    async with asyncio.timeout(STORY_TIMEOUT_S):
        first = await _done(sim.start_call(LEARNED_CALLER, line))
        story.taught_by = by_workplace.get(first.workplace or "")
        second = sim.start_call(LEARNED_CALLER, main)
        await second.wait_outcome()
        if second.command is not None and second.command.workplace is not None:
            story.then_sent_to = by_workplace.get(second.command.workplace)
        await _done(second)
        # A listed client whose manager has a deputy; his phone rings unanswered.
        caller, manager = next((n, m) for n, m in rules.clients.items() if rules.managers[m].deputy)
        story.rerouted_caller = caller
        story.after_s = rules.no_answer.after_s if rules.no_answer is not None else 0.0
        never = {rules.managers[manager].workplace: None}
        call = await _done(sim.start_call(caller, main, answer=never))
        story.transfers = tuple(
            by_workplace.get(c.workplace or "", "?")
            for c in call.commands
            if c.kind == "transfer" and c.accepted
        )
        story.answered_by = by_workplace.get(call.workplace or "")
    return story


async def _done(call: SimCall) -> SimCall:
    """Until the call's last notification was answered by the daemon."""
    return await call.wait_done()
