"""Realtime benchmark client (driven by benches/realtime.sh): per-delta latency through the gateway against the
mock directly, in alternating rounds of the same run, then idle sessions held open through the gateway and the
gateway's memory for them.

Each text delta the mock sends carries the wall-clock time it was written (`"sent_at_us"`, the mock's `stamp`
script option); the client subtracts it from the time the delta arrived. Direct and through-the-gateway rounds
use the same client, mock and script, so the difference is what the gateway adds (its frame handling, the
inspection of every event, the hold-back).

Usage: python3 benches/realtime.py MOCK_URL GATEWAY_URL GATEWAY_PID [ROUNDS] [RESPONSES] [DELTAS] [SESSIONS]
Prints Markdown.
"""

import asyncio
import json
import statistics
import sys
import time
import urllib.request

import websockets

MOCK, GW, GW_PID = sys.argv[1], sys.argv[2], int(sys.argv[3])
ROUNDS = int(sys.argv[4]) if len(sys.argv) > 4 else 3
RESPONSES = int(sys.argv[5]) if len(sys.argv) > 5 else 20
DELTAS = int(sys.argv[6]) if len(sys.argv) > 6 else 50
SESSIONS = int(sys.argv[7]) if len(sys.argv) > 7 else 1000
WORDS = "the quarterly report covers revenue growth across regions and the plan for next year".split()


def ws(url):
    return url.replace("http://", "ws://", 1) + "/v1/realtime?model=gpt-realtime"


def script():
    deltas = [WORDS[i % len(WORDS)] + " " for i in range(DELTAS)]
    body = json.dumps({"deltas": deltas, "delay_ms": 2, "stamp": True}).encode()
    req = urllib.request.Request(MOCK + "/__mock/realtime/script", data=body, method="POST")
    req.add_header("content-type", "application/json")
    urllib.request.urlopen(req).read()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def latencies(url):
    """Microseconds from the mock writing each text delta to the client reading it, over RESPONSES responses."""
    out = []
    headers = {"Authorization": "Bearer sk-bench-client"}
    async with websockets.connect(url, additional_headers=headers, max_size=None, compression=None) as c:
        await c.recv()  # session.created
        for _ in range(RESPONSES):
            script()
            await c.send(json.dumps({"type": "response.create"}))
            while True:
                m = json.loads(await c.recv())
                now = time.time_ns() // 1000
                if m["type"] == "response.output_text.delta" and "sent_at_us" in m:
                    out.append(now - m["sent_at_us"])
                if m["type"] == "response.done":
                    break
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


async def idle_sessions():
    headers = {"Authorization": "Bearer sk-bench-client"}
    before = rss_kb(GW_PID)
    conns = []
    for _ in range(SESSIONS):
        c = await websockets.connect(ws(GW), additional_headers=headers, max_size=None, compression=None)
        await c.recv()
        conns.append(c)
    await asyncio.sleep(1)
    after = rss_kb(GW_PID)
    for c in conns:
        await c.close()
    return before, after


async def main():
    print("| round | direct p50 (µs) | direct p99 (µs) | gateway p50 (µs) | gateway p99 (µs) | added p50 (µs) | added p99 (µs) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in range(1, ROUNDS + 1):
        d = await latencies(ws(MOCK))
        g = await latencies(ws(GW))
        dp50, dp99, gp50, gp99 = pct(d, 50), pct(d, 99), pct(g, 50), pct(g, 99)
        print(f"| {r} | {dp50} | {dp99} | {gp50} | {gp99} | {gp50 - dp50} | {gp99 - dp99} |")
    before, after = await idle_sessions()
    print()
    print(f"Idle sessions: {SESSIONS} held open through the gateway (each past its `session.created`): gateway RSS "
          f"{before / 1024:.1f} MB before, {after / 1024:.1f} MB with them open — "
          f"{(after - before) / 1024:.1f} MB for the sessions, {(after - before) / SESSIONS:.1f} KB each.")


asyncio.run(main())
