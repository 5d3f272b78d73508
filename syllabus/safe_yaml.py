"""YAML for untrusted text: safe types only, and no aliases.

An alias (`*name`) reuses a node, so a kilobyte of nested aliases expands to ~10^20 paths for any
code that walks the result (a "billion laughs"); a task or recipe never needs one. The composer
refuses the first alias before anything is expanded, so parsing stays linear in the input.
"""

from __future__ import annotations

import yaml


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"aliases (*{event.anchor}) are not allowed", event.start_mark)
        return super().compose_node(parent, index)


def load(text: str) -> object:
    """`yaml.safe_load` that refuses aliases (yaml.YAMLError)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass: safe types only
