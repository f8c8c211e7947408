"""RFC 7541 (h2spec "hpack/*"): the downstream HTTP/2 server's HPACK decoding.

Raw-frame transcripts against the real
:class:`~eventgw.downstream.h2server.H2ServerProtocol` (``tests/conformance/frames.py``):
each case sends one HEADERS frame (and a CONTINUATION where named) whose field block
is built byte by byte.  RFC 9113 section 4.3: a field block that cannot be decoded is a
connection error COMPRESSION_ERROR, answered with GOAWAY.  All in memory.

========================================  =============  ====================  =========
case                                      RFC 7541       RFC requires          we do
========================================  =============  ====================  =========
indexed field, index 0                    6.1            decoding error        GOAWAY (9)
indexed field beyond the tables           2.3.3          decoding error        GOAWAY (9)
literal with a name index beyond          2.3.3          decoding error        GOAWAY (9)
size update above SETTINGS_HEADER_TAB...  4.2, 6.3       decoding error        GOAWAY (9)
size update not at the block start        4.2            decoding error        GOAWAY (9)
Huffman string with EOS                   5.2            decoding error        GOAWAY (9)
Huffman padding longer than 7 bits        5.2            decoding error        GOAWAY (9)
Huffman padding not all ones              5.2            decoding error        GOAWAY (9)
integer beyond any limit                  5.1            decoding error        GOAWAY (9)
truncated integer                         5.1            decoding error        GOAWAY (9)
string length beyond the block            5.2            decoding error        GOAWAY (9)
size updates at the start, within limit   4.2            accepted              200
incremental indexing, then the index      6.2.1          accepted              200
valid Huffman string                      5.2            accepted              200
block split across CONTINUATION           RFC 9113 4.3   accepted              200
========================================  =============  ====================  =========

(9) COMPRESSION_ERROR.  h2 reports every HPACK failure as PROTOCOL_ERROR; the server's
decoder (``eventgw.downstream.h2server._Decoder``) makes it COMPRESSION_ERROR.  No case
deviates from what the RFCs require.
"""

from __future__ import annotations

from collections.abc import Callable

from h2.errors import ErrorCodes
from twisted.trial.unittest import SynchronousTestCase

from tests.conformance.frames import (
    Case,
    RawClient,
    hpack_indexed,
    hpack_integer,
    hpack_literal,
    hpack_size_update,
    install_cases,
    request,
)

COMPRESSION = ("goaway", ErrorCodes.COMPRESSION_ERROR)
OK = ("status", 200)

# The request's fields as literals without indexing: no dynamic-table state involved.
BASE = b"".join(hpack_literal(name, value) for name, value in request())


def _huffman(encoded: bytes) -> bytes:
    """A string literal with the H bit set and ``encoded`` as its Huffman bytes."""
    return hpack_integer(len(encoded), 7, 0x80) + encoded


def _block(block: bytes, continuation: bytes | None = None) -> Callable[[RawClient], None]:
    def send(client: RawClient) -> None:
        if continuation is None:
            client.send(client.headers(1, block=block))
        else:
            client.send(client.headers(1, block=block, end_headers=False),
                        client.continuation(1, continuation))

    return send


CASES = [
    Case("indexed_index_zero", "RFC 7541 6.1", _block(hpack_indexed(0) + BASE), COMPRESSION,
         "hpack/6.1/1"),
    Case("indexed_beyond_static_table", "RFC 7541 2.3.3", _block(BASE + hpack_indexed(62)),
         COMPRESSION, "hpack/2.3.3/1"),
    Case("indexed_far_beyond", "RFC 7541 2.3.3", _block(BASE + hpack_indexed(5000)),
         COMPRESSION),
    Case("literal_name_index_beyond", "RFC 7541 2.3.3",
         _block(BASE + hpack_integer(70, 4) + b"\x01a"), COMPRESSION, "hpack/2.3.3/2"),
    Case("size_update_above_settings", "RFC 7541 6.3",
         _block(hpack_size_update(4097) + BASE), COMPRESSION, "hpack/6.3/1"),
    Case("size_update_at_block_end", "RFC 7541 4.2", _block(BASE + hpack_size_update(0)),
         COMPRESSION, "hpack/4.2/1"),
    Case("size_update_after_a_field", "RFC 7541 4.2",
         _block(BASE[: len(hpack_literal(b":method", b"GET"))] + hpack_size_update(100)
                + BASE[len(hpack_literal(b":method", b"GET")) :]), COMPRESSION),
    Case("huffman_with_eos", "RFC 7541 5.2",
         _block(BASE + hpack_literal(b"x-a", b"", raw_value=_huffman(b"\xff\xff\xff\xff"))),
         COMPRESSION, "hpack/5.2/1"),
    Case("huffman_padding_over_7_bits", "RFC 7541 5.2",
         _block(BASE + hpack_literal(b"x-a", b"", raw_value=_huffman(b"\x1f\xff"))),
         COMPRESSION, "hpack/5.2/2"),
    Case("huffman_padding_not_ones", "RFC 7541 5.2",
         _block(BASE + hpack_literal(b"x-a", b"", raw_value=_huffman(b"\x18"))),
         COMPRESSION, "hpack/5.2/3"),
    Case("integer_overflow", "RFC 7541 5.1",
         _block(BASE + b"\xff" + b"\xff" * 10 + b"\x01"), COMPRESSION),
    Case("integer_truncated", "RFC 7541 5.1", _block(BASE + b"\x00\x7f\xff"), COMPRESSION),
    Case("string_length_beyond_block", "RFC 7541 5.2",
         _block(BASE + b"\x00\x03x-a" + hpack_integer(200, 7) + b"abc"), COMPRESSION),
    Case("name_length_beyond_block", "RFC 7541 5.2",
         _block(BASE + b"\x00" + hpack_integer(50, 7) + b"x-a"), COMPRESSION),
    Case("size_updates_at_block_start", "RFC 7541 4.2",
         _block(hpack_size_update(0) + hpack_size_update(4096) + BASE), OK),
    Case("incremental_indexing_then_index", "RFC 7541 6.2.1",
         _block(BASE + b"\x40\x03x-a\x01b" + hpack_indexed(62)), OK),
    Case("valid_huffman", "RFC 7541 5.2",
         _block(BASE + hpack_literal(b"x-a", b"", raw_value=_huffman(b"\x1f"))), OK),
    Case("block_across_continuation", "RFC 9113 4.3", _block(BASE[:5], BASE[5:]), OK),
    Case("string_across_continuation", "RFC 9113 4.3",
         _block(BASE + b"\x00\x03x-a\x05ab", b"cde"), OK),
]


class HpackTests(SynchronousTestCase):
    """RFC 7541, one test per case of the table above."""

    install_cases(locals(), CASES)

    def test_case_count(self) -> None:
        """Every case has its own name."""
        self.assertEqual(len(CASES), 19)
        self.assertEqual(len({case.name for case in CASES}), len(CASES))

    def test_oversized_header_list_stays_enhance_your_calm(self) -> None:
        """A header list beyond the hard limit is h2's ENHANCE_YOUR_CALM, not a
        decoding error."""
        client = RawClient()
        big = [(b"x-big", b"a" * 8000) for _ in range(40)]
        block = client.encoder.encode(request(extra=big))
        size = 16000
        frames = [client.headers(1, block=block[:size], end_headers=False)]
        for offset in range(size, len(block), size):
            last = offset + size >= len(block)
            frames.append(client.continuation(1, block[offset : offset + size],
                                              end_headers=last))
        client.send(*frames)
        goaway = client.goaway()
        assert goaway is not None
        self.assertEqual(goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
