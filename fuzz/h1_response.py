"""Fuzz target: the upstream HTTP/1.1 client's response parser.

Run from the repository root::

    PYTHONPATH=$PWD .venv/bin/python fuzz/h1_response.py -runs=1000000 \
        -dict=fuzz/http1.dict fuzz/corpus/h1_response

Input layout: first byte: bits 0-2 are ``k``, the number of piece sizes that follow
(each plus one, cycled over the stream; ``k == 0`` is one piece), bit 3 makes the
requests ``HEAD`` instead of ``GET``, bit 4 ends the stream with the upstream closing
the connection.  The rest is what the upstream sends.  Whenever a response ends and
the connection is reusable, the next request is sent and parsing goes on.

Properties checked on every input:

* only :class:`eventgw.errors.ResponseError` comes out of the codec;
* the responses (body pieces joined) are the same whether the bytes arrive in one piece
  or in the input's pieces, and so is whether the exchange ends in an error.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["eventgw"]):
    from eventgw.errors import ResponseError
    from eventgw.upstream.h1client import NEED_DATA, ClientConnection, Data, Ended, ResponseHead

Outcome = list[ResponseHead | Data | Ended]
MAX_HEAD = 4096
MAX_REQUESTS = 8


def decode(data: bytes) -> tuple[list[int], bool, bool, bytes]:
    """Piece sizes, HEAD?, close at the end?, and the stream encoded in ``data``."""
    if not data:
        return [], False, False, b""
    flags = data[0]
    count = flags & 7
    sizes = [size + 1 for size in data[1 : 1 + count]]
    return sizes, bool(flags & 8), bool(flags & 16), data[1 + count :]


def pieces_of(stream: bytes, sizes: list[int]) -> list[bytes]:
    """``stream`` cut into pieces of the given sizes, cycled; one piece if none."""
    if not sizes:
        return [stream] if stream else []
    out: list[bytes] = []
    at = 0
    index = 0
    while at < len(stream):
        size = sizes[index % len(sizes)]
        out.append(stream[at : at + size])
        at += size
        index += 1
    return out


def run(pieces: list[bytes], head: bool, close: bool) -> tuple[Outcome, str | None]:
    """Exchange requests over one connection; the events (bodies joined) and any error."""
    conn = ClientConnection(max_head_bytes=MAX_HEAD)
    method = b"HEAD" if head else b"GET"
    conn.send_request(method, b"/", b"up.test", [], content_length=0)
    requests = 1
    events: Outcome = []
    stopped = False
    try:
        for piece in [*pieces, b""] if close else pieces:
            conn.receive_data(piece)
            while not stopped:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, Data) and events and isinstance(events[-1], Data):
                    events[-1] = Data(data=events[-1].data + event.data)
                elif not (isinstance(event, Data) and not event.data):
                    events.append(event)
                if isinstance(event, Ended):
                    # The pieces after the end decide whether the connection is
                    # reusable; only the fully-received case is compared.
                    if requests < MAX_REQUESTS and conn.reusable:
                        conn.start_next_cycle()
                        conn.send_request(method, b"/", b"up.test", [], content_length=0)
                        requests += 1
                    else:
                        stopped = True
    except ResponseError as error:
        return events, str(error)
    return events, None


def check(data: bytes) -> None:
    """The properties above for one input; raises AssertionError on a violation."""
    sizes, head, close, stream = decode(data)
    whole, whole_error = run([stream] if stream else [], head, close)
    piecewise, piece_error = run(pieces_of(stream, sizes), head, close)
    if whole_error is None and piece_error is None:
        # Reuse depends on whether stray bytes had arrived yet when a response ended,
        # so a stream cut into pieces may go on to more responses than the whole one.
        assert piecewise[: len(whole)] == whole or whole[: len(piecewise)] == piecewise, (
            whole,
            piecewise,
        )
    else:
        common = min(len(whole), len(piecewise))
        assert whole[:common] == piecewise[:common], (whole, piecewise)


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
