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

from typing import TYPE_CHECKING, Any, Final

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import StreamReset
from h2.exceptions import (
    FrameDataMissingError,
    NoSuchStreamError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
)
from h2.stream import StreamClosedBy
from hpack import Decoder, HPACKError, OversizedHeaderListError
from hyperframe.frame import HeadersFrame, PriorityFrame, RstStreamFrame, SettingsFrame

from eventgw.http2 import LeanFrameBuffer, LeanH2Connection

if TYPE_CHECKING:
    from h2.events import Event
    from hyperframe.frame import DataFrame, Frame

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


class _StreamErrorFrame(PriorityFrame):
    """Stands for a frame that is a stream error, found by :class:`_ServerFrameBuffer`
    before hyperframe would parse (and reject) it; ``error_code`` says which."""

    error_code: ErrorCodes = ErrorCodes.PROTOCOL_ERROR


# Frame types and the SETTINGS ACK flag (RFC 9113 section 6), for the header peek below.
_PRIORITY_TYPE: Final = 0x2
_SETTINGS_TYPE: Final = 0x4
_WINDOW_UPDATE_TYPE: Final = 0x8
_ACK_FLAG: Final = 0x1


class _ServerFrameBuffer(LeanFrameBuffer):
    """The lean frame buffer, with three frames told apart before hyperframe parses them.

    hyperframe rejects all three with an ``InvalidDataError``/``InvalidFrameError`` that
    h2 turns into a connection error of the wrong kind; RFC 9113 asks for:

    * a SETTINGS ACK with a payload: a connection error FRAME_SIZE_ERROR (section 6.5);
    * a PRIORITY frame not 5 octets long: a *stream* error FRAME_SIZE_ERROR (6.3);
    * a WINDOW_UPDATE of 0 on a stream: a *stream* error PROTOCOL_ERROR (6.9).

    The two stream errors are consumed here and handed on as a
    :class:`_StreamErrorFrame` through h2's header-block check (so inside a header
    block they are still the connection error section 6.10 requires).
    """

    def __next__(self) -> Any:
        data = self._data
        if len(data) >= 9:
            length = int.from_bytes(data[0:3], "big")
            frame_type, flags = data[3], data[4]
            stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
            if frame_type == _SETTINGS_TYPE and flags & _ACK_FLAG and length:
                raise FrameDataMissingError("SETTINGS ACK with a payload")
            if stream_id and len(data) >= 9 + length and length <= self.max_frame_size:
                code = None
                if frame_type == _PRIORITY_TYPE and length != 5:
                    code = ErrorCodes.FRAME_SIZE_ERROR
                elif frame_type == _WINDOW_UPDATE_TYPE and length == 4:
                    if not int.from_bytes(data[9:13], "big") & 0x7FFFFFFF:
                        code = ErrorCodes.PROTOCOL_ERROR
                if code is not None:
                    del data[: 9 + length]
                    frame = _StreamErrorFrame(stream_id)
                    frame.error_code = code
                    passed = self._update_header_buffer(frame)
                    return passed if passed is not None else self.__next__()
        return super().__next__()


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
        self.incoming_buffer = _ServerFrameBuffer(server=not self.config.client_side)
        self._settings_seen = False
        self._after_our_reset = False

    def _receive_frame(self, frame: Frame) -> list[Event]:
        if not self._settings_seen:
            if not isinstance(frame, SettingsFrame) or "ACK" in frame.flags:
                raise ProtocolError("the client preface is not followed by SETTINGS")
            self._settings_seen = True
        if isinstance(frame, _StreamErrorFrame):
            return self._stream_error(frame.stream_id, frame.error_code)
        if isinstance(frame, RstStreamFrame) and frame.stream_id not in self.streams:
            try:
                self._get_stream_by_id(frame.stream_id)
            except NoSuchStreamError:
                raise ProtocolError("RST_STREAM on an idle stream") from None
            except StreamClosedError:
                pass
        if isinstance(frame, PriorityFrame) and frame.depends_on == frame.stream_id:
            return self._stream_error(frame.stream_id, ErrorCodes.PROTOCOL_ERROR)
        if (
            isinstance(frame, HeadersFrame)
            and "PRIORITY" in frame.flags
            and frame.depends_on == frame.stream_id
        ):
            # The header block must still be decoded to keep HPACK in step; then the
            # stream is reset and its request never surfaces.
            frame.depends_on = 0
            events = super()._receive_frame(frame)
            stream = self.streams.get(frame.stream_id)
            if stream is None or stream.closed:
                return events  # h2 already answered it (a closed stream)
            return self._stream_error(frame.stream_id, ErrorCodes.PROTOCOL_ERROR)
        return super()._receive_frame(frame)

    def _stream_error(self, stream_id: int, code: ErrorCodes) -> list[Event]:
        """RST_STREAM ``code`` on ``stream_id``, and the event that says so (which the
        server counts against its reset budget)."""
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.closed:
            self.reset_stream(stream_id, code)
        else:
            frame = RstStreamFrame(stream_id)
            frame.error_code = code
            self._prepare_for_sending([frame])
        return [StreamReset(stream_id=stream_id, error_code=code, remote_reset=False)]


    def _receive_data_frame(self, frame: DataFrame) -> tuple[list[Any], list[Event]]:
        stream = self.streams.get(frame.stream_id)
        if stream is not None:
            stream._expected_content_length = None
        # Asked before h2 handles the frame: h2 itself marks a stream "closed by our
        # reset" when it answers a frame that arrives in the wrong state.
        self._after_our_reset = self._reset_by_us(frame.stream_id)
        return super()._receive_data_frame(frame)

    def _handle_data_on_closed_stream(
        self, events: list[Event], exc: StreamClosedError, frame: DataFrame
    ) -> tuple[list[Any], list[Event]]:
        frames, events = super()._handle_data_on_closed_stream(events, exc, frame)
        if self._after_our_reset:
            frames = [f for f in frames if not isinstance(f, RstStreamFrame)]
        return frames, events

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Any], list[Event]]:
        after_our_reset = self._reset_by_us(frame.stream_id)
        try:
            return super()._receive_headers_frame(frame)
        except (StreamClosedError, StreamIDTooLowError):
            # h2 decoded the block first, so HPACK stays in step.
            if after_our_reset:
                return [], []
            raise

    def _reset_by_us(self, stream_id: int) -> bool:
        """Whether ``stream_id`` is a stream we have already reset."""
        return self._stream_closed_by(stream_id) is StreamClosedBy.SEND_RST_STREAM
