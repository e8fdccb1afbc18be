"""N concurrent HTTP/1.1 GETs of one file, each verified by sha256: the benchmark's nginx client.

Each client is a thread with a blocking socket that reads the body with ``recv_into``
into one reusable 1 MiB buffer and hashes it; nothing is stored (like ``perceus-sim
--discard``). ``hashlib`` and ``recv_into`` release the GIL, so the clients use every
core — as fast a plain-HTTP client as Python makes, so nginx is not held back by it.

``python -m perceus.bench.httpget --url http://127.0.0.1:PORT/image --clients N
--sha256 HEX`` prints one JSON object: ok, failed, failures, bytes, wall_s, mb_per_s.
"""

import argparse
import hashlib
import json
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

BUFFER = 1 << 20
MAX_HEADER = 16 << 10


def _headers(head: bytes) -> int:
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 200"):
        raise ValueError(f"status {lines[0]!r}")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return int(value.strip())
    raise ValueError("no Content-Length")


def get(host: str, port: int, path: str, timeout: float) -> tuple[str, int]:
    """GET ``path``: (sha256 hex of the body, its length)."""
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    digest = hashlib.sha256()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = bytearray()
        while (end := head.find(b"\r\n\r\n")) < 0:
            n = sock.recv_into(view)
            if not n or len(head) > MAX_HEADER:
                raise ValueError("no complete response header")
            head += view[:n]
        size = left = _headers(bytes(head[:end]))
        body = head[end + 4 :]
        digest.update(body[:left])
        left -= min(len(body), left)
        while left:
            n = sock.recv_into(view, min(BUFFER, left))
            if not n:
                raise ConnectionError(f"closed with {left} bytes to go")
            digest.update(view[:n])
            left -= n
    return digest.hexdigest(), size


def run(url: str, clients: int, sha256: str, timeout: float) -> dict:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    results: list[object] = [None] * clients

    def client(i: int) -> None:
        try:
            results[i] = get(host, port, path, timeout)
        except Exception as exc:  # noqa: BLE001 - a failed client is counted, not fatal
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    failures, total = [], 0
    for result in results:
        if isinstance(result, BaseException):
            failures.append(f"{type(result).__name__}: {result}")
        elif result[0] != sha256:  # type: ignore[index]
            failures.append(f"sha256 mismatch: {result[0]}")  # type: ignore[index]
        else:
            total += result[1]  # type: ignore[index]
    return {
        "ok": clients - len(failures),
        "failed": len(failures),
        "failures": failures[:5],
        "bytes": total,
        "wall_s": wall,
        "mb_per_s": total / wall / 1e6 if wall else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="httpget", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--sha256", required=True)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    summary = run(args.url, args.clients, args.sha256, args.timeout)
    print(json.dumps(summary))
    return 0 if not summary["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
