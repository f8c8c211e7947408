# -*- test-case-name: tests.conformance.test_hpack,tests.test_h2server -*-
"""The downstream HTTP/2 server's ``h2`` connection: h2 with RFC 9113's server rules.

Core module: a subclass of h2's sans-IO connection; no ``twisted``, ``grpc``,
``txaio``, ``socket`` or clock.

:class:`ServerConnection` is :class:`~eventgw.http2.LeanH2Connection` with three rules
of RFC 9113 in place of h2's own: HPACK failures are COMPRESSION_ERROR (section 4.3);
content-length is checked per stream by the server, as a stream error (section
8.1.1); frames the client sent before it saw one of our RST_STREAMs are discarded
(section 5.1).  :class:`~eventgw.downstream.h2server.H2ServerProtocol` drives it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError, StreamClosedError, StreamIDTooLowError
from h2.stream import StreamClosedBy
from hpack import Decoder, HPACKError, OversizedHeaderListError
from hyperframe.frame import RstStreamFrame

from eventgw.http2 import LeanH2Connection

if TYPE_CHECKING:
    from h2.events import Event
    from hyperframe.frame import DataFrame, HeadersFrame

__all__ = ["ServerConnection"]


class _CompressionError(ProtocolError):
    """A field block HPACK cannot decode (RFC 9113 section 4.3)."""

    error_code = ErrorCodes.COMPRESSION_ERROR


class _Decoder(Decoder):
    """hpack's decoder whose failures are COMPRESSION_ERROR, not h2's PROTOCOL_ERROR.

    RFC 9113 section 4.3: a decoding error in a field block is a connection error of
    type COMPRESSION_ERROR.  h2 wraps every HPACK error in a plain ``ProtocolError``
    (PROTOCOL_ERROR); raised as a ``ProtocolError`` of our own, the error passes
    h2's wrapper and h2 sends its GOAWAY with the right code.  A header list over the
    limit stays hpack's own error, which h2 answers with ENHANCE_YOUR_CALM.
    """

    def decode(self, data: bytes, raw: bool = False) -> Any:
        try:
            return super().decode(data, raw)
        except OversizedHeaderListError:
            raise
        except (HPACKError, IndexError) as exc:
            raise _CompressionError(f"cannot decode the field block: {exc}") from exc


class ServerConnection(LeanH2Connection):
    """h2's connection with three server rules of RFC 9113 in place of h2's own.

    * HPACK errors are COMPRESSION_ERROR (section 4.3), see :class:`_Decoder`.

    * Content-length: h2 treats DATA that does not add up to the content-length as a
      connection error; section 8.1.1 makes it a stream error, which
      :meth:`~eventgw.downstream.h2stream.H2Stream.data_received` raises itself (and
      before a target can forward a complete request).
    * Frames after our RST_STREAM: h2 answers every DATA or HEADERS frame on a stream
      we reset with another RST_STREAM (STREAM_CLOSED).  Section 5.1 ("closed") says
      frames the client sent before it saw our RST_STREAM are processed minimally and
      discarded -- DATA still counted toward the connection window, which h2 does --
      so a client whose upload we stopped early (RST_STREAM NO_ERROR, section 8.1)
      or refused gets no error for what was already in flight.
    """

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        decoder = _Decoder()
        decoder.max_header_list_size = self.decoder.max_header_list_size
        decoder.max_allowed_table_size = self.decoder.max_allowed_table_size
        self.decoder = decoder

    def _receive_data_frame(self, frame: DataFrame) -> tuple[list[Any], list[Event]]:
        stream = self.streams.get(frame.stream_id)
        if stream is not None:
            stream._expected_content_length = None
        return super()._receive_data_frame(frame)

    def _handle_data_on_closed_stream(
        self, events: list[Event], exc: StreamClosedError, frame: DataFrame
    ) -> tuple[list[Any], list[Event]]:
        frames, events = super()._handle_data_on_closed_stream(events, exc, frame)
        if self._stream_closed_by(frame.stream_id) is StreamClosedBy.SEND_RST_STREAM:
            frames = [f for f in frames if not isinstance(f, RstStreamFrame)]
        return frames, events

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Any], list[Event]]:
        try:
            return super()._receive_headers_frame(frame)
        except (StreamClosedError, StreamIDTooLowError):
            # h2 decoded the block first, so HPACK stays in step.
            if self._stream_closed_by(frame.stream_id) is StreamClosedBy.SEND_RST_STREAM:
                return [], []
            raise
