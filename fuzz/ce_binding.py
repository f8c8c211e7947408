"""Fuzz target: the CloudEvents HTTP binding, in all three content modes.

Run from the repository root::

    PYTHONPATH=$PWD .venv/bin/python fuzz/ce_binding.py -runs=1000000 \
        -dict=fuzz/ce_binding.dict fuzz/corpus/ce_binding

Input layout: the first byte picks the mode (``% 4``): 0 binary, 1 structured, 2 batch,
3 binary with the ``content-type`` taken from the headers as they are (so any media
type, CloudEvents ones included, reaches :func:`parse_event`).  For the binary modes
the rest is header lines (``name: value``, LF-separated; names lower-cased) up to the
first empty line, then the body; for the JSON modes the rest is the body.

Property checked on every input: only the gateway's own
:class:`~eventgw.errors.GatewayError` subclasses come out; an event that parses
serializes.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["eventgw", "cloudevents"]):
    from eventgw.errors import GatewayError
    from eventgw.events.cloudevents import STRUCTURED_CONTENT_TYPE, parse_batch, parse_event
    from eventgw.exchange import Headers


def headers_and_body(rest: bytes) -> tuple[Headers, bytes]:
    """Header lines up to the first empty line, then the body."""
    head, _, body = rest.partition(b"\n\n")
    headers: Headers = []
    for line in head.split(b"\n"):
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return headers, body


def check(data: bytes) -> None:
    """Parse one input; anything but a GatewayError propagates (a finding)."""
    if not data:
        return
    mode = data[0] % 4
    rest = data[1:]
    try:
        if mode == 1:
            parse_event([(b"content-type", STRUCTURED_CONTENT_TYPE.encode())], rest)
            events = []
        elif mode == 2:
            events = parse_batch(rest)
        else:
            headers, body = headers_and_body(rest)
            if mode == 0:
                headers = [(n, v) for n, v in headers if n != b"content-type"]
                headers.append((b"content-type", b"application/json"))
            events = [parse_event(headers, body)]
        for event in events:
            event.SerializeToString()
    except GatewayError:
        pass



def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
