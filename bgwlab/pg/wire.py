"""A minimal PostgreSQL client: protocol 3.0 over a Unix socket, trust auth, simple queries.

Just enough for the harness, with no dependency: connect, run a query, read rows as text,
see the server's notices and errors, and notice -- crisply, as an exception -- when the
server drops the connection (a crash-restart does that to every backend).

The throwaway cluster (:mod:`bgwlab.pg.server`) listens on a Unix socket only and trusts
local connections, so no password exchange is implemented.
"""

from __future__ import annotations

import os
import socket
import struct

__all__ = ["Connection", "PgError", "ConnectionLost", "socket_path"]

PROTOCOL_3_0 = 196608


class PgError(Exception):
    """An ErrorResponse from the server: ``fields`` maps its one-letter codes (S, C, M, ...)."""

    def __init__(self, fields: dict[str, str], notices: list[dict] | None = None):
        self.fields = fields
        self.notices = notices or []
        super().__init__(f"{fields.get('S', 'ERROR')}: {fields.get('M', '?')}"
                         + (f" (SQLSTATE {fields['C']})" if "C" in fields else ""))

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")


class ConnectionLost(Exception):
    """The server closed the connection.  ``messages``: what it said before (notices, errors)."""

    def __init__(self, messages: list[dict]):
        self.messages = messages
        said = "; ".join(f"{m.get('S', '')}: {m.get('M', '')}" for m in messages) or "nothing"
        super().__init__(f"the server closed the connection (it said: {said})")


def socket_path(socket_dir, port: int = 5432) -> str:
    return os.path.join(os.fspath(socket_dir), f".s.PGSQL.{port}")


def _fields(payload: bytes) -> dict[str, str]:
    out = {}
    for part in payload.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return out


class Connection:
    """One session.  ``query(sql)`` returns rows (tuples of str or None); ``pid`` is the
    backend's pid; ``notices`` collects NoticeResponses as field dicts.  `timeout` bounds
    connecting, `query_timeout` (default: none) every read after that."""

    def __init__(self, socket_dir, *, user: str = "postgres", database: str = "postgres",
                 port: int = 5432, timeout: float | None = 60.0,
                 query_timeout: float | None = None):
        self.notices: list[dict] = []
        self.pid: int | None = None
        self.parameters: dict[str, str] = {}
        self._buf = b""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(socket_path(socket_dir, port))
            body = struct.pack("!i", PROTOCOL_3_0)
            for k, v in (("user", user), ("database", database), ("application_name", "bgwlab")):
                body += k.encode() + b"\0" + v.encode() + b"\0"
            body += b"\0"
            self._sock.sendall(struct.pack("!i", len(body) + 4) + body)
            self._read_until_ready(startup=True)
            self._sock.settimeout(query_timeout)  # None: a probe call may take minutes
        except BaseException:
            self._sock.close()
            raise

    # -- the protocol --------------------------------------------------------------------
    def _recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _message(self) -> tuple[bytes, bytes]:
        head = self._recv_exact(5)
        kind, length = head[:1], struct.unpack("!i", head[1:])[0]
        return kind, self._recv_exact(length - 4)

    def _read_until_ready(self, startup: bool = False):
        rows: list[tuple] = []
        columns: list[str] = []
        error = None
        said: list[dict] = []
        try:
            while True:
                kind, payload = self._message()
                if kind == b"R":
                    code = struct.unpack("!i", payload[:4])[0]
                    if code != 0:
                        raise PgError({"S": "FATAL", "M": f"authentication method {code} is not "
                                       "supported by bgwlab's client: the cluster must trust "
                                       "local connections"})
                elif kind == b"K":
                    self.pid = struct.unpack("!i", payload[:4])[0]
                elif kind == b"S":
                    k, v, _ = payload.split(b"\0", 2)
                    self.parameters[k.decode()] = v.decode()
                elif kind == b"T":
                    n = struct.unpack("!h", payload[:2])[0]
                    pos, columns = 2, []
                    for _ in range(n):
                        end = payload.index(b"\0", pos)
                        columns.append(payload[pos:end].decode())
                        pos = end + 1 + 18
                elif kind == b"D":
                    n = struct.unpack("!h", payload[:2])[0]
                    pos, row = 2, []
                    for _ in range(n):
                        ln = struct.unpack("!i", payload[pos:pos + 4])[0]
                        pos += 4
                        if ln < 0:
                            row.append(None)
                        else:
                            row.append(payload[pos:pos + ln].decode("utf-8", "replace"))
                            pos += ln
                    rows.append(tuple(row))
                elif kind == b"E":
                    error = _fields(payload)
                    said.append(error)
                    if startup:
                        raise PgError(error, self.notices)
                elif kind == b"N":
                    notice = _fields(payload)
                    self.notices.append(notice)
                    said.append(notice)
                elif kind == b"Z":
                    break
                # C (command complete), I (empty query), 1/2/3, ... : nothing to keep
        except (EOFError, ConnectionResetError, BrokenPipeError) as e:
            self.close()
            raise ConnectionLost(said) from e
        if error is not None:
            raise PgError(error, self.notices)
        self.columns = columns
        return rows

    # -- API -----------------------------------------------------------------------------
    def send(self, sql: str) -> None:
        """Send a query without reading its result (see :meth:`result`)."""
        data = sql.encode() + b"\0"
        try:
            self._sock.sendall(b"Q" + struct.pack("!i", len(data) + 4) + data)
        except (BrokenPipeError, ConnectionResetError) as e:
            self.close()
            raise ConnectionLost([]) from e

    def result(self, timeout: float | None = None) -> list[tuple]:
        """Read the result of the query sent last."""
        if timeout is not None:
            self._sock.settimeout(timeout)
        return self._read_until_ready()

    def query(self, sql: str) -> list[tuple]:
        self.send(sql)
        return self.result()

    def value(self, sql: str):
        rows = self.query(sql)
        return rows[0][0] if rows else None

    def dicts(self, sql: str) -> list[dict]:
        rows = self.query(sql)
        return [dict(zip(self.columns, r)) for r in rows]

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            try:
                self._sock.sendall(b"X\0\0\0\4")
            except OSError:
                pass
            self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
