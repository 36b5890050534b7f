"""An HTTP/3 client for the tests and the benchmark, on aioquic (PyPI,
installed into .local/venv by scripts/setup.sh).

  h3client.py get  PORT PATH [--sni NAME]
      one GET over QUIC to 127.0.0.1:PORT; prints {"status", "headers", "body"}
  h3client.py upload PORT PATH [--bytes N] [--sni NAME]
      one POST of a multipart form with a file of N bytes; prints as get
  h3client.py load PORT PATH --seconds S --streams N [--sni NAME]
      N requests in flight on one connection for S seconds (a closed loop);
      prints {"requests", "failed", "rps", "p50_ms", "p99_ms"}
  h3client.py hold PORT PATH --connections N [--sni NAME]
      opens N QUIC connections one after another, each keeping its first
      GET's connection open until all N tried; prints {"answered", "refused"}

The server's certificate is not verified: the tests use self-signed ones.
Exits 1 with the reason on stderr when the connection fails.
"""

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent


class Client(QuicConnectionProtocol):
    """Tracks each request's stream until its answer has ended."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiting = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        for ev in self.h3.handle_event(event):
            answer = self.waiting.get(getattr(ev, "stream_id", None))
            if answer is None:
                continue
            done, parts = answer
            if isinstance(ev, HeadersReceived):
                parts["headers"].extend(ev.headers)
            elif isinstance(ev, DataReceived):
                parts["body"] += ev.data
            if getattr(ev, "stream_ended", False) and not done.done():
                done.set_result(parts)

    async def get(self, authority: str, path: str) -> dict:
        return await self.request(authority, path, b"GET", [], b"")

    async def request(self, authority, path, method, headers, body) -> dict:
        stream = self._quic.get_next_available_stream_id()
        self.h3.send_headers(
            stream,
            [
                (b":method", method),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ]
            + headers,
            end_stream=not body,
        )
        if body:
            self.h3.send_data(stream, body, end_stream=True)
        done = asyncio.get_running_loop().create_future()
        self.waiting[stream] = (done, {"headers": [], "body": b""})
        self.transmit()
        try:
            parts = await asyncio.wait_for(done, 5)
        finally:
            self.waiting.pop(stream, None)
        headers = {k.decode(): v.decode() for k, v in parts["headers"]}
        return {
            "status": int(headers.get(":status", "0")),
            "headers": headers,
            "body": parts["body"].decode(errors="replace"),
        }


def configuration(sni: str) -> QuicConfiguration:
    # A server that never answers ends the attempt after 5 s, not 60.
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, idle_timeout=5.0)
    config.verify_mode = ssl.CERT_NONE
    config.server_name = sni
    return config


async def one(port: int, path: str, sni: str) -> dict:
    async with connect(
        "127.0.0.1", port, configuration=configuration(sni), create_protocol=Client
    ) as client:
        return await client.get(sni, path)


async def upload(port: int, path: str, sni: str, size: int) -> dict:
    # A multipart form with one file of `size` bytes, as a browser sends it.
    boundary = b"vpsie-lb-upload"
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
        + bytes(i % 251 for i in range(size))
        + b"\r\n--" + boundary + b"--\r\n"
    )
    headers = [
        (b"content-type", b"multipart/form-data; boundary=" + boundary),
        (b"content-length", str(len(body)).encode()),
        (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
        (b"accept", b"text/html"),
    ]
    async with connect(
        "127.0.0.1", port, configuration=configuration(sni), create_protocol=Client
    ) as client:
        return await client.request(sni, path, b"POST", headers, body)


async def load(port: int, path: str, sni: str, seconds: float, streams: int) -> dict:
    latencies, failed = [], 0
    async with connect(
        "127.0.0.1", port, configuration=configuration(sni), create_protocol=Client
    ) as client:
        end = time.monotonic() + seconds

        async def worker():
            nonlocal failed
            while time.monotonic() < end:
                start = time.monotonic()
                try:
                    answer = await client.get(sni, path)
                    ok = answer["status"] == 200
                except Exception:
                    ok = False
                if ok:
                    latencies.append(time.monotonic() - start)
                else:
                    failed += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(streams)))
        took = time.monotonic() - started
    latencies.sort()
    at = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0
    return {
        "requests": len(latencies),
        "failed": failed,
        "rps": len(latencies) / took,
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
    }


async def hold(port: int, path: str, sni: str, connections: int) -> dict:
    answered, refused = 0, 0
    async with contextlib.AsyncExitStack() as held:
        for _ in range(connections):
            try:
                client = await held.enter_async_context(
                    connect("127.0.0.1", port, configuration=configuration(sni), create_protocol=Client)
                )
                ok = (await client.get(sni, path))["status"] == 200
            except Exception:
                ok = False
            if ok:
                answered += 1
            else:
                refused += 1
    return {"answered": answered, "refused": refused}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["get", "upload", "load", "hold"])
    parser.add_argument("port", type=int)
    parser.add_argument("path")
    parser.add_argument("--sni", default="localhost")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--bytes", type=int, default=1024 * 1024)
    args = parser.parse_args()
    try:
        if args.mode == "get":
            out = asyncio.run(one(args.port, args.path, args.sni))
        elif args.mode == "upload":
            out = asyncio.run(upload(args.port, args.path, args.sni, args.bytes))
        elif args.mode == "hold":
            out = asyncio.run(hold(args.port, args.path, args.sni, args.connections))
        else:
            out = asyncio.run(load(args.port, args.path, args.sni, args.seconds, args.streams))
    except Exception as e:  # the reason, for the test's message
        print(f"h3client: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
