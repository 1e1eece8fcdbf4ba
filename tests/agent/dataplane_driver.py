"""Runs one DataPlane inside a network namespace for tests/agent/test_dataplane.py.

    ip netns exec NS python dataplane_driver.py DIR NAME

reads DIR/NAME.key (a node private key, `privkey:...`) and DIR/NAME.netmap.json
(a MapResponse, as NetMap.to_doc() writes it), starts a DataPlane on the TUN
NAME0 with a fake MagicDNS resolver, applies the netmap, and answers one JSON
request per connection on the Unix socket DIR/NAME.sock:

    {"cmd": "status"}                    -> DataPlane.status() (+ "endpoints": our discovered endpoints)
    {"cmd": "ping", "peer": "nodekey:…"} -> {"via": "DERP(lab)", "latency_ms": 1.2} | {"error": "…"}
    {"cmd": "netcheck"}                  -> DataPlane.netcheck() (netcheck.Report's JSON)
    {"cmd": "reload"}                    -> re-reads NAME.netmap.json into a fresh NetMap and applies it

The fake resolver answers `peer-b.tailnet.test.` (A) itself, as MagicDNS
answers tailnet names, and everything else "upstream" (`resolve`) with
192.0.2.99, so a test sees both paths. Runs until SIGTERM.
"""

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

from dnslib import QTYPE, RR, A, DNSRecord

from meshlet.control.netmap import NetMap
from meshlet.key import NodePrivate, NodePublic
from meshlet.wire import format_addr
from meshlet_agent.dataplane import DataPlane, PingError

LOCAL_NAME = "peer-b.tailnet.test."
LOCAL_ANSWER = "100.64.0.2"
UPSTREAM_ANSWER = "192.0.2.99"


class FakeResolver:
    def __init__(self) -> None:
        self.local = 0
        self.forwarded = 0

    def answer_local(self, query: bytes) -> bytes | None:
        q = DNSRecord.parse(query)
        if str(q.q.qname) != LOCAL_NAME or q.q.qtype != QTYPE.A:
            return None
        self.local += 1
        reply = q.reply()
        reply.add_answer(RR(LOCAL_NAME, QTYPE.A, rdata=A(LOCAL_ANSWER), ttl=600))
        return bytes(reply.pack())

    async def resolve(self, query: bytes) -> bytes:
        q = DNSRecord.parse(query)
        self.forwarded += 1
        await asyncio.sleep(0.01)  # as if upstream took a moment
        reply = q.reply()
        reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(UPSTREAM_ANSWER), ttl=60))
        return bytes(reply.pack())


def load_netmap(path: str) -> NetMap:
    nm = NetMap()
    with open(path, encoding="utf-8") as f:
        nm.apply(json.load(f))
    return nm


async def main(directory: str, name: str) -> None:
    with open(os.path.join(directory, name + ".key"), encoding="utf-8") as f:
        key = NodePrivate.from_text(f.read().strip())
    netmap_path = os.path.join(directory, name + ".netmap.json")
    resolver = FakeResolver()
    homes: list[int] = []
    dp = DataPlane(key, ifname=name + "0", resolver=resolver, on_home_region=homes.append,
                   derp_max_backoff_ms=500)  # fmt: skip
    await dp.start()
    dp.apply_netmap(load_netmap(netmap_path))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            req = json.loads(await reader.readline())
            out: dict[str, Any]
            if req["cmd"] == "status":
                out = dp.status()
                out["homes"] = homes
                out["disco"] = dp.disco_public.to_text()
                out["dns"] = {"local": resolver.local, "forwarded": resolver.forwarded}
                out["endpoints"] = [format_addr(*addr) for addr, _ in dp.magicsock.endpoints]
            elif req["cmd"] == "ping":
                try:
                    r = await dp.ping(NodePublic.from_text(req["peer"]), 5.0)
                    out = {"via": r.via, "latency_ms": r.latency_s * 1000, "endpoint": r.endpoint}
                except (PingError, TimeoutError) as e:
                    out = {"error": str(e) or type(e).__name__}
            elif req["cmd"] == "netcheck":
                out = await dp.netcheck()
            elif req["cmd"] == "reload":
                dp.apply_netmap(load_netmap(netmap_path))
                out = {"ok": True}
            else:
                out = {"error": "unknown command"}
            writer.write(json.dumps(out).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    sock_path = os.path.join(directory, name + ".sock")
    server = await asyncio.start_unix_server(handle, sock_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await dp.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
