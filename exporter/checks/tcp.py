"""TCP checks (`scheme: tcp`): healthy once the connection is established; nothing is sent.

As HAProxy's plain `check` without `option httpchk`, and blackbox_exporter's `tcp` prober without
a query: proves that the port accepts connections, and costs less than an HTTP check.
"""

from __future__ import annotations

import socket

from exporter.checks.engine import PROBE_KINDS, OptionsProbe, describe_failure, os_error
from exporter.checks.http import InvalidRequest, invalid_request
from exporter.model import FailureReason


class TcpProbe(OptionsProbe):
    """Connects, and ends healthy as soon as the connection is established."""

    def _request(self) -> bytes:
        invalid = invalid_request(self._target, with_path=False)
        if invalid is not None:
            raise InvalidRequest(invalid)
        return b""

    def _send(self) -> None:
        """Called once connect() began, and again when the socket is writable: established,
        failed, or still under way."""
        sock = self._sock
        assert sock is not None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._connect_failed(os_error(code))
            return
        try:
            sock.getpeername()
        except OSError:  # ENOTCONN: the handshake is still under way
            self._watch(reading=False)
            return
        self._connected = True
        self._finish()

    def _verdict(self) -> tuple[FailureReason | None, str | None]:
        if self._failure is None:
            return None, None
        return describe_failure(self._failure, self._target, self._timeout)


PROBE_KINDS["tcp"] = TcpProbe
