"""Fuzz target: the configuration loader on arbitrary YAML text.

Run from the repository root::

    PYTHONPATH=$PWD .venv/bin/python fuzz/config_loader.py -runs=1000000 \
        -dict=fuzz/config_loader.dict fuzz/corpus/config_loader

The input, decoded as UTF-8 (undecodable bytes replaced), is the whole file given to
:func:`eventgw.config.load_config`.

Property checked on every input: the loader returns a configuration or raises
:class:`~eventgw.errors.ConfigError` -- nothing else -- and the error's text is one
line that starts with the key (or the source) it names.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["eventgw"]):
    from eventgw.config import load_config
    from eventgw.errors import ConfigError


def check(data: bytes) -> None:
    """Load one input; anything but a well-formed ConfigError is a finding."""
    text = data.decode("utf-8", "replace")
    try:
        load_config(text, source="gateway.yaml")
    except ConfigError as error:
        line = str(error)
        assert error.key, line
        assert line.startswith(f"{error.key}: "), line
        assert "\n" not in line and "\r" not in line, line


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
