"""Length-prefixed pickle messages between the pool, the fork server and workers.

Only our own processes speak this protocol: the sandboxed program never holds
one of these sockets (they are closed before it starts), so unpickling is safe.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

_HEADER = struct.Struct("<I")


def send(sock: socket.socket, message: Any) -> None:
  payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
  sock.sendall(_HEADER.pack(len(payload)) + payload)


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
  chunks = []
  while n:
    chunk = sock.recv(min(n, 1 << 20))
    if not chunk:
      return None
    chunks.append(chunk)
    n -= len(chunk)
  return b"".join(chunks)


def recv(sock: socket.socket) -> Any:
  """The next message; raises EOFError when the other side has gone."""
  header = _recv_exactly(sock, _HEADER.size)
  if header is None:
    raise EOFError("peer closed the connection")
  payload = _recv_exactly(sock, _HEADER.unpack(header)[0])
  if payload is None:
    raise EOFError("peer closed the connection mid-message")
  return pickle.loads(payload)


def send_with_fds(sock: socket.socket, message: Any, fds: list[int]) -> None:
  """One message plus file descriptors over a SOCK_SEQPACKET socket."""
  socket.send_fds(sock, [pickle.dumps(message)], fds)


def recv_with_fds(sock: socket.socket, max_fds: int = 4) -> tuple[Any, list[int]]:
  data, fds, _, _ = socket.recv_fds(sock, 1 << 16, max_fds)
  if not data:
    raise EOFError("peer closed the connection")
  return pickle.loads(data), fds
