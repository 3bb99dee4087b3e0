"""Exit codes of ``mtt-router``: one meaning each, the same in every command.

- :attr:`Exit.OK` (0): success.
- :attr:`Exit.FAILED` (1): the thing asked for failed or was invalid: a rules file with problems,
  MTT or Redis refusing or not answering, a port already taken, a call that missed its window.
- :attr:`Exit.USAGE` (2): bad usage (an invalid flag, a command group without its action) or an
  invalid config, its problems printed one per line on stderr. argparse exits 2 too.
- :attr:`Exit.INTERRUPTED` (130): stopped with Ctrl-C (128 + SIGINT, as shells report it).
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """The exit code a command handler returns (an ``int``: ``sys.exit`` takes it as is)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    INTERRUPTED = 130
