"""YAML with limits: a config file or ``--set`` value is refused in well under a second, with
one line, when it is larger than a config can be, nests deeper than one would, or expands
through aliases (a "billion laughs" file of a few hundred bytes) past a sane number of nodes."""

from __future__ import annotations

from typing import Any

import yaml

from ajpq.core.configtypes import ConfigError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "load_yaml"]

MAX_BYTES = 1_000_000  # a config file is a few kilobytes
MAX_NODES = 100_000  # scalars, lists and mappings after expanding every alias
MAX_DEPTH = 64


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of ``root`` with every alias expanded (aliases share node objects: memoized, so
    this is linear in the document, not in its expansion); raises past the limits."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, expanded = stack.pop()
        if id(node) in sizes:
            continue
        if depth > MAX_DEPTH:
            raise ConfigError(f"nested deeper than {MAX_DEPTH} levels; a config is flatter")
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children = (
            [child for pair in node.value for child in pair]
            if isinstance(node, yaml.MappingNode)
            else list(node.value)
        )
        if not expanded:
            stack.append((node, depth, True))
            stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(child), 1) for child in children)
        if total > MAX_NODES:
            raise ConfigError(
                f"expands to more than {MAX_NODES} nodes (aliases of aliases?); a config is small"
            )
        sizes[id(node)] = total
    return sizes[id(root)]


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text`` (from ``source``, named in errors) as YAML within the limits above."""
    if len(text) > MAX_BYTES:
        raise ConfigError(
            f"{source}: {len(text)} bytes, over the {MAX_BYTES}-byte limit of a config"
        )
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return None
        _expanded_size(node)
        return yaml.load(text, Loader=yaml.SafeLoader)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"{source}: not valid YAML ({str(error).splitlines()[0][:200]})"
        ) from None
