# -*- test-case-name: tests.test_config_environ -*-
"""``${VAR}`` and ``${VAR:-default}`` in the configuration file's string values.

Core module: imports PyYAML and the standard library; the environment is a mapping it
is given, never read here.

The references are expanded in the YAML document's *nodes*, after parsing and before
the values are built, so a reference behaves as if its value had been written in its
place:

* only string values are expanded -- mapping keys never are, list items are;
* an unquoted value is typed after expansion as YAML types an unquoted value
  (``tls: ${PORT}`` with ``PORT=9443`` is the integer 9443, ``${FLAG}`` with
  ``FLAG=false`` the boolean, an empty expansion is null, i.e. the key's default);
  a quoted value (``"${PORT}"``) stays a string;
* ``${NAME}`` is the variable's value; a variable that is not set is an error naming
  the key and the variable.  ``${NAME:-default}`` is the default when the variable is
  unset *or empty* (the shell's and Docker Compose's rule); the default is literal
  text, up to the first ``}``;
* ``$$`` is one literal ``$`` (so ``$${NAME}`` is the text ``${NAME}``), and any other
  ``$`` not followed by ``{`` is kept as it is (``pa$word``, ``cost: 5$``);
* a malformed reference (``${}``, ``${1X}``, a ``${`` without its ``}``) is an error
  naming the key.

Names are ``[A-Za-z_][A-Za-z0-9_]*``.  Expansion is one pass: a value coming from the
environment is never expanded again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

import yaml

from eventgw.errors import ConfigError

__all__ = ["expand_node", "expand_text"]

_STR_TAG: Final = "tag:yaml.org,2002:str"
# ``$$``, or ``${`` NAME [ ``:-`` default ] ``}``, or a ``${`` that is neither.
_TOKEN: Final = re.compile(
    r"\$\$|\$\{(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bad>))"
)


def expand_text(text: str, environ: Mapping[str, str], key: str) -> str:
    """``text`` with its references replaced; ``key`` names the value in errors."""
    if "$" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name")
        if name is None:
            rest = text[match.start():]
            shown = rest[: rest.find("}") + 1] if "}" in rest else rest
            raise ConfigError(
                key, f"malformed reference {shown!r} (expected ${{NAME}} or ${{NAME:-default}})"
            )
        default = match.group("default")
        value = environ.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            raise ConfigError(key, f"environment variable {name} is not set")
        return value

    return _TOKEN.sub(replace, text)


def expand_node(
    node: yaml.Node, resolver: yaml.resolver.BaseResolver, environ: Mapping[str, str]
) -> None:
    """Expand every string scalar below ``node`` in place (keys excepted).

    ``resolver`` (the loader that composed ``node``) re-types unquoted values.
    """
    _expand(node, resolver, environ, "", set())


def _expand(
    node: yaml.Node,
    resolver: yaml.resolver.BaseResolver,
    environ: Mapping[str, str],
    key: str,
    seen: set[int],
) -> None:
    # An alias is the same node object in several places: expand it once.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        if node.tag != _STR_TAG or "$" not in node.value:
            return
        value = expand_text(node.value, environ, key or "<top level>")
        if value == node.value:
            return
        node.value = value
        if node.style is None:  # unquoted: typed like any unquoted value
            node.tag = resolver.resolve(  # type: ignore[no-untyped-call]
                yaml.ScalarNode, value, (True, False)
            )
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _expand(item, resolver, environ, f"{key}[{index}]", seen)
    elif isinstance(node, yaml.MappingNode):
        for name_node, value_node in node.value:
            name = name_node.value if isinstance(name_node, yaml.ScalarNode) else "?"
            _expand(value_node, resolver, environ, f"{key}.{name}" if key else str(name), seen)
