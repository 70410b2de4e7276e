"""Parent/children flows: a tree of jobs sent in one call, where each parent depends on its
children and so runs after the last of them, reading their results (``job.results``).

A node is ``(queue, data)``, ``(queue, data, options)``, or a mapping with the keys ``queue``,
``data``, ``options`` and ``children`` (nodes again, to any depth).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from conveyor.errors import InvalidOption
from conveyor.options import JobSpec

FlowNode = tuple[str, Any] | tuple[str, Any, Mapping[str, Any]] | Mapping[str, Any]
NODE_KEYS = frozenset({"queue", "data", "options", "children"})
MakeSpec = Callable[[str, Any, Mapping[str, Any]], JobSpec]


def _node(node: object) -> tuple[str, Any, dict[str, Any], Sequence[object]]:
    if isinstance(node, Mapping):
        unknown = set(node) - NODE_KEYS
        if unknown:
            raise InvalidOption(
                f"unknown flow node key(s) {', '.join(sorted(map(str, unknown)))}: "
                f"use {', '.join(sorted(NODE_KEYS))}"
            )
        if "queue" not in node:
            raise InvalidOption("a flow node needs a queue")
        children = node.get("children") or ()
        return node["queue"], node.get("data"), dict(node.get("options") or {}), children
    if isinstance(node, tuple) and len(node) in (2, 3):
        options = dict(node[2]) if len(node) == 3 and node[2] is not None else {}
        return node[0], node[1], options, ()
    raise InvalidOption(
        f"a flow node is (queue, data), (queue, data, options) or a mapping, got {node!r}"
    )


def flatten(parent: FlowNode, children: Iterable[FlowNode], make_spec: MakeSpec) -> list[JobSpec]:
    """Validate the tree and return one spec per job, every child before its parent and the
    root parent last; each parent's ``depends_on`` holds its children's ids (after any it was
    given)."""
    specs: list[JobSpec] = []

    def add(node: object, extra_children: Sequence[object]) -> JobSpec:
        queue, data, options, own_children = _node(node)
        kids = [add(child, ()) for child in [*own_children, *extra_children]]
        if kids:
            given = options.get("depends_on") or []
            if isinstance(given, str) or not isinstance(given, Iterable):
                raise InvalidOption("depends_on must be a list of job ids")
            options["depends_on"] = [*given, *(k.id for k in kids)]
        spec = make_spec(queue, data, options)
        specs.append(spec)
        return spec

    add(parent, list(children))
    return specs
