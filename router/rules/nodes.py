"""Walking composed YAML nodes with line numbers: the loader's reading primitives.

PyYAML's *constructor* would lose lines and silently merge duplicate keys; these helpers read the
composed node tree instead and report every problem as ``(line, message)``.
"""

from __future__ import annotations

from collections.abc import Iterator

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

NULL_TAG = "tag:yaml.org,2002:null"
INT_TAG = "tag:yaml.org,2002:int"
MERGE_TAG = "tag:yaml.org,2002:merge"


def line_of(node: Node) -> int:
    """The 1-based line where ``node`` starts."""
    return int(node.start_mark.line) + 1


class Checker:
    """Collects problems while walking the node tree; helpers return None after reporting one."""

    def __init__(self) -> None:
        self.problems: list[tuple[int, str]] = []

    def fail(self, node: Node, message: str) -> None:
        """Record a problem on ``node``'s line."""
        self.problems.append((line_of(node), message))

    def items(self, node: Node | None, where: str) -> Iterator[tuple[ScalarNode, Node]]:
        """Key/value nodes of a mapping (null = empty); reports non-mappings and duplicate keys."""
        if node is None or (isinstance(node, ScalarNode) and node.tag == NULL_TAG):
            return
        if not isinstance(node, MappingNode):
            self.fail(node, f"{where} must be a mapping")
            return
        first_line: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode) or key.tag == NULL_TAG:
                self.fail(key, f"{where}: keys must be plain text")
                continue
            if key.tag == MERGE_TAG:
                self.fail(key, f"{where}: merge keys (<<) are not supported")
                continue
            if key.value in first_line:
                first = first_line[key.value]
                self.fail(key, f'duplicate key "{key.value}" in {where} (first on line {first})')
                continue  # the first one counts, as a reader of the file would expect
            first_line[key.value] = line_of(key)
            yield key, value

    def text(self, node: Node, where: str) -> str | None:
        """A scalar's text as written; reports lists, mappings and empty values."""
        if isinstance(node, ScalarNode) and node.tag != NULL_TAG and node.value.strip():
            return str(node.value).strip()
        if isinstance(node, ScalarNode):
            self.fail(node, f"{where} must not be empty")
        else:
            self.fail(node, f"{where} must be a single value, not a list or mapping")
        return None

    def texts(self, node: Node, where: str) -> list[tuple[Node, str]]:
        """A scalar or a list of scalars, as (node, text) pairs."""
        if isinstance(node, SequenceNode):
            pairs = [(item, self.text(item, f"an item of {where}")) for item in node.value]
            return [(item, text) for item, text in pairs if text is not None]
        text = self.text(node, where)
        return [] if text is None else [(node, text)]


def value_of(entry: tuple[ScalarNode, Node] | None) -> Node | None:
    """The value node of a ``(key, value)`` entry, or None for a missing entry."""
    return None if entry is None else entry[1]


def is_null(node: Node) -> bool:
    """Whether ``node`` is an empty value (``key:`` or ``key: ~``)."""
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG
