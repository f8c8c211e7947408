"""Protocol detection by ALPN token and by the first bytes of a cleartext connection."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from eventgw.downstream.sniff import PREFACE, Protocol, by_alpn, by_first_bytes


class ByAlpnTests(SynchronousTestCase):
    def test_h2(self) -> None:
        """ALPN h2 (bytes or str) selects HTTP/2."""
        self.assertIs(by_alpn(b"h2"), Protocol.H2)
        self.assertIs(by_alpn("h2"), Protocol.H2)

    def test_everything_else_is_http1(self) -> None:
        """http/1.1, no ALPN, or an unknown token select HTTP/1.1."""
        for token in (b"http/1.1", None, b"", b"h2c", b"spdy/3"):
            self.assertIs(by_alpn(token), Protocol.HTTP1)


class ByFirstBytesTests(SynchronousTestCase):
    def test_full_preface(self) -> None:
        """The complete preface, with or without frames after it, is HTTP/2."""
        self.assertIs(by_first_bytes(PREFACE), Protocol.H2)
        self.assertIs(by_first_bytes(PREFACE + b"\x00\x00\x00\x04"), Protocol.H2)

    def test_every_proper_prefix_needs_more(self) -> None:
        """Byte by byte, every proper prefix of the preface waits for more."""
        for end in range(len(PREFACE)):
            self.assertIs(by_first_bytes(PREFACE[:end]), Protocol.NEED_MORE)

    def test_http1_request(self) -> None:
        """An HTTP/1.1 request line is decided on its first differing byte."""
        self.assertIs(by_first_bytes(b"GET / HTTP/1.1\r\n"), Protocol.HTTP1)
        self.assertIs(by_first_bytes(b"G"), Protocol.HTTP1)
        # "PRI" is a prefix of both; "PRIX" is not the preface.
        self.assertIs(by_first_bytes(b"PRIX"), Protocol.HTTP1)

    @given(st.binary(max_size=64))
    def test_decision_is_consistent(self, data: bytes) -> None:
        """Once decided, more bytes never change the decision."""
        first = by_first_bytes(data)
        later = by_first_bytes(data + b"more bytes")
        if first is not Protocol.NEED_MORE:
            self.assertIs(later, first)
