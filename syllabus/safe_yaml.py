"""YAML for untrusted text: safe types only, and a cap on the size aliases expand to.

An alias (`*name`) reuses a node, so a kilobyte of nested aliases expands to ~10^20 paths for any
code that walks the result (a "billion laughs"). PyYAML builds an alias as a shared object, cheaply;
what explodes is every walk after it (validation, dumping). So the composed node graph is measured
first, each alias counted at its anchor's expanded size (memoised: linear in the graph), and a
document that expands past `MAX_NODES` is refused before anything is constructed. Aliases that
`yaml.safe_dump` writes for a shared object stay readable.
"""

from __future__ import annotations

import yaml

MAX_NODES = 4_000_000  # a 32 MiB task of short examples is well under a million


def _expanded(node: yaml.Node, memo: dict[int, int]) -> int:
    if (size := memo.get(id(node))) is not None:
        return size
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded(k, memo) + _expanded(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def load(text: str, max_nodes: int = MAX_NODES) -> object:
    """`yaml.safe_load`, refusing (yaml.YAMLError) a document whose aliases expand past `max_nodes`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if (size := _expanded(node, {})) > max_nodes:
            raise yaml.YAMLError(f"its aliases expand to {size:.3g} nodes; at most {max_nodes} are allowed")
        return loader.construct_document(node)
    finally:
        loader.dispose()
