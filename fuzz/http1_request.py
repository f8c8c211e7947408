"""Fuzz target: the HTTP/1.1 request parser, fed in pieces the input chooses.

Run from the repository root::

    PYTHONPATH=$PWD .venv/bin/python fuzz/http1_request.py -runs=1000000 \
        -dict=fuzz/http1.dict fuzz/corpus/http1_request

Input layout: the low three bits of the first byte are ``k``; the next ``k`` bytes are
piece sizes (each plus one), cycled over the rest of the input, which is the byte
stream of one connection.  ``k == 0`` feeds the stream in one piece.

Properties checked on every input:

* only :class:`eventgw.errors.RequestError` comes out of the parser;
* the events (body pieces joined) are the same whether the stream arrives in one piece
  or in the input's pieces, and so is whether the stream ends in an error.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["eventgw"]):
    from eventgw.downstream.http1parse import (
        NEED_DATA,
        PAUSED,
        BodyData,
        Event,
        RequestParser,
    )
    from eventgw.errors import RequestError

MAX_HEADER = 4096
MAX_BODY = 1 << 16


def split(data: bytes) -> tuple[list[int], bytes]:
    """The piece sizes and the stream encoded in ``data``."""
    if not data:
        return [], b""
    count = data[0] & 7
    sizes = [size + 1 for size in data[1 : 1 + count]]
    return sizes, data[1 + count :]


def pieces_of(stream: bytes, sizes: list[int]) -> list[bytes]:
    """``stream`` cut into pieces of the given sizes, cycled; one piece if none."""
    if not sizes:
        return [stream]
    out: list[bytes] = []
    at = 0
    index = 0
    while at < len(stream):
        size = sizes[index % len(sizes)]
        out.append(stream[at : at + size])
        at += size
        index += 1
    return out


def run(pieces: list[bytes]) -> tuple[list[Event], RequestError | None]:
    """Feed ``pieces``, pipelining on; the events (bodies joined) and any error."""
    parser = RequestParser(MAX_HEADER, MAX_BODY)
    events: list[Event] = []
    try:
        for piece in pieces:
            parser.receive_data(piece)
            while True:
                event = parser.next_event()
                if event is NEED_DATA:
                    break
                if event is PAUSED:
                    parser.start_next()
                    continue
                assert not isinstance(event, type(NEED_DATA))
                if isinstance(event, BodyData) and events and isinstance(events[-1], BodyData):
                    events[-1] = BodyData(events[-1].data + event.data)
                elif not (isinstance(event, BodyData) and not event.data):
                    events.append(event)
    except RequestError as error:
        return events, error
    return events, None


def check(data: bytes) -> None:
    """The properties above for one input; raises AssertionError on a violation."""
    sizes, stream = split(data)
    whole, whole_error = run([stream])
    piecewise, piece_error = run(pieces_of(stream, sizes))
    if whole_error is None and piece_error is None:
        assert whole == piecewise, (whole, piecewise)
    else:
        # A stream that fails must fail however it arrives, after the same events.
        assert (whole_error is None) == (piece_error is None), (whole_error, piece_error)
        common = min(len(whole), len(piecewise))
        assert whole[: common] == piecewise[: common], (whole, piecewise)


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
