"""The JSON Schema of the configuration file, generated from the models.

Core module: builds text from :class:`~eventgw.config.model.GatewayFile`; run as
``python -m eventgw.config.schema`` it prints it.  The committed copy is regenerated with

    python -m eventgw.config.schema > eventgw/config/gateway.schema.json

and ``tests/test_config.py`` fails while it is stale.  An editor with the YAML language
server validates and completes a configuration file that starts with
``# yaml-language-server: $schema=<path or URL of gateway.schema.json>``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Final

from eventgw.config.model import GatewayFile

__all__ = ["SCHEMA_DIALECT", "SCHEMA_FILE", "main", "schema", "schema_text"]

SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

#: Where the committed schema lives (inside the package, so it is installed with it).
SCHEMA_FILE: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gateway.schema.json")


def schema() -> dict[str, Any]:
    """The schema as a JSON-ready mapping."""
    return {"$schema": SCHEMA_DIALECT, **GatewayFile.model_json_schema()}


def schema_text() -> str:
    """The schema exactly as committed: two-space indented JSON and a final newline."""
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(schema_text())


if __name__ == "__main__":
    main()
