#!/usr/bin/env python3
"""Helpers of the fault scripts (standard library only), one subcommand each:

  storm-writer    rewrite a rule file every INTERVAL (two valid versions alternating, every 5th write an
                  invalid one) while polling the live version on /healthz
  events          read an audit directory: per rules_version counts, malformed lines, duplicate event ids
  audit-snap      after a kill: record every complete event line written since the last snapshot, and whether
                  the file ended in a torn (newline-less) line
  audit-verify    after the last restart: every recorded line still there, byte for byte; no duplicate ids
  slowloris       slow heads, slow bodies and header floods against the gateway, with a normal client beside
  rss             sample a process's VmRSS every N seconds into a file

Every subcommand prints plain `key value` lines or a markdown table that the shell scripts read.
"""

import argparse
import glob
import hashlib
import json
import os
import socket
import statistics
import sys
import threading
import time
import urllib.request


def segments(audit_dir):
    """The audit segments in order (events-00000001.jsonl, ...)."""
    return sorted(glob.glob(os.path.join(audit_dir, "events-*.jsonl")))


def live_version(admin_url):
    with urllib.request.urlopen(admin_url + "/healthz", timeout=5) as r:
        return json.load(r)["rules"]["version"]


# --- reload storm -------------------------------------------------------------------------------------------


def storm_writer(a):
    """Writes a.target every a.interval seconds for a.duration seconds: write i (from 1) is the invalid
    version when i % 5 == 0, else the valid versions alternate. rename mode writes a temporary file next to
    the target and renames it over (what deploy tools do); inplace mode truncates and rewrites the file (what
    `cat >` and some editors do). Polls /healthz after every write and counts the live versions seen."""
    texts = {name: open(path, "rb").read() for name, path in (("a", a.a), ("b", a.b), ("invalid", a.invalid))}
    writes = {"a": 0, "b": 0, "invalid": 0}
    seen = {}
    poll_errors = 0
    valid = ["a", "b"]
    end = time.monotonic() + a.duration
    i = 0
    nxt = time.monotonic()
    while time.monotonic() < end:
        i += 1
        kind = "invalid" if i % 5 == 0 else valid[i % 2]
        if a.mode == "rename":
            tmp = os.path.join(os.path.dirname(a.target), "." + os.path.basename(a.target) + ".tmp")
            with open(tmp, "wb") as f:
                f.write(texts[kind])
            os.rename(tmp, a.target)
        else:
            with open(a.target, "wb") as f:
                f.write(texts[kind])
        writes[kind] += 1
        try:
            v = live_version(a.admin)
            seen[v] = seen.get(v, 0) + 1
        except OSError:
            poll_errors += 1
        nxt += a.interval
        time.sleep(max(0.0, nxt - time.monotonic()))
    # Leave a valid version in place, so the last word is a good one.
    with open(a.target, "wb") as f:
        f.write(texts["a"])
    for k, n in writes.items():
        print(f"writes_{k} {n}")
    print(f"poll_errors {poll_errors}")
    for v, n in seen.items():
        print(f"live {v} {n}")


def events(a):
    """Counts the events of an audit directory by rules_version; a line that is not one JSON object with one
    string rules_version counts as malformed."""
    per_version = {}
    malformed = 0
    ids = set()
    duplicates = 0
    total = 0
    statuses = {}
    for seg in segments(a.dir):
        with open(seg, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    malformed += 1
                    continue
                total += 1
                try:
                    ev = json.loads(line)
                except ValueError:
                    malformed += 1
                    continue
                v = ev.get("rules_version") if isinstance(ev, dict) else None
                if not isinstance(v, str) or not v:
                    malformed += 1
                    continue
                per_version[v] = per_version.get(v, 0) + 1
                st = ev.get("status")
                statuses[st] = statuses.get(st, 0) + 1
                eid = ev.get("event_id")
                if eid in ids:
                    duplicates += 1
                ids.add(eid)
    print(f"total {total}")
    print(f"malformed {malformed}")
    print(f"duplicates {duplicates}")
    for v, n in sorted(per_version.items()):
        print(f"version {v} {n}")
    for s, n in sorted(statuses.items(), key=lambda kv: str(kv[0])):
        print(f"status {s} {n}")


# --- kill loop ----------------------------------------------------------------------------------------------


def load_state(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"offsets": {}, "torn": 0, "snaps": 0, "recorded": 0, "unparseable": 0}


def audit_snap(a):
    """Called after each kill -9, before the restart. Reads each segment from where the last snapshot's
    complete lines ended; every complete line after that is recorded (event_id → SHA-256 of the line) in
    a.ids; a tail without a newline is a torn line (counted; the restart cuts it off)."""
    st = load_state(a.state)
    torn_now = 0
    with open(a.ids, "a") as out:
        for seg in segments(a.dir):
            name = os.path.basename(seg)
            off = st["offsets"].get(name, 0)
            with open(seg, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                if size < off:
                    # The file is shorter than the complete lines recorded from it: verify will name them.
                    print(f"shrunk {name} {off} {size}")
                    continue
                f.seek(off)
                data = f.read()
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines():
                try:
                    eid = json.loads(line)["event_id"]
                except (ValueError, KeyError, TypeError):
                    st["unparseable"] += 1
                    continue
                out.write(f"{eid} {hashlib.sha256(line).hexdigest()}\n")
                st["recorded"] += 1
            if end < len(data):
                torn_now += 1
            st["offsets"][name] = off + end
    st["torn"] += torn_now
    st["snaps"] += 1
    with open(a.state, "w") as f:
        json.dump(st, f)
    print(f"torn {torn_now}")


def audit_verify(a):
    """Reads the whole directory after the last restart: every line parseable, no event_id twice, and every
    line recorded before a kill still present with the same bytes."""
    st = load_state(a.state)
    final = {}
    duplicates = 0
    unparseable = 0
    torn_final = 0
    for seg in segments(a.dir):
        with open(seg, "rb") as f:
            data = f.read()
        if data and not data.endswith(b"\n"):
            torn_final += 1
        for line in data.splitlines():
            try:
                eid = json.loads(line)["event_id"]
            except (ValueError, KeyError, TypeError):
                unparseable += 1
                continue
            if eid in final:
                duplicates += 1
            final[eid] = hashlib.sha256(line).hexdigest()
    missing = changed = 0
    with open(a.ids) as f:
        for row in f:
            eid, digest = row.split()
            got = final.get(eid)
            if got is None:
                missing += 1
            elif got != digest:
                changed += 1
    print(f"snapshots {st['snaps']}")
    print(f"recorded_before_kills {st['recorded']}")
    print(f"unparseable_before_kills {st['unparseable']}")
    print(f"torn_at_kills {st['torn']}")
    print(f"final_events {len(final)}")
    print(f"final_unparseable {unparseable}")
    print(f"final_torn {torn_final}")
    print(f"missing {missing}")
    print(f"changed {changed}")
    print(f"duplicates {duplicates}")


# --- slowloris ----------------------------------------------------------------------------------------------

HEAD = (
    "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\ncontent-type: application/json\r\n"
    "content-length: {n}\r\n\r\n"
)


def read_status(sock):
    """The status code of what the gateway answered, or 'closed' (EOF or reset without a status line)."""
    buf = b""
    try:
        while b"\r\n" not in buf and len(buf) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    except OSError:
        pass
    if buf.startswith(b"HTTP/1.") and len(buf) >= 12:
        return buf[9:12].decode("ascii", "replace")
    return "closed"


class Results:
    def __init__(self):
        self.lock = threading.Lock()
        self.rows = {}

    def add(self, kind, lived, got):
        with self.lock:
            self.rows.setdefault(kind, []).append((lived, got))


def drip(kind, payload, prefix, host, port, drip_s, stop, results):
    """One slow client: sends `prefix` at once, then `payload` one byte every drip_s seconds, until the
    gateway answers or closes; records how long the connection lived from its first dribbled byte, and
    what it got. Starts over until `stop` is set."""
    while not stop.is_set():
        try:
            s = socket.create_connection((host, port), timeout=5)
        except OSError:
            results.add(kind, 0.0, "connect_failed")
            time.sleep(1)
            continue
        got = None
        start = time.monotonic()
        try:
            if prefix:
                s.sendall(prefix)
                start = time.monotonic()
            for i in range(len(payload)):
                s.sendall(payload[i : i + 1])
                # Wait drip_s for the gateway to speak: an answer or a close ends this connection.
                s.settimeout(drip_s)
                try:
                    chunk = s.recv(4096, socket.MSG_PEEK)
                except socket.timeout:
                    continue
                got = read_status(s) if chunk else "closed"
                break
        except OSError:
            got = "closed"
        lived = time.monotonic() - start
        s.close()
        results.add(kind, lived, got or "completed")


def flood(kind, head, host, port, stop, results):
    """One flooding client: sends an oversized head (or one with too many headers) at once, reads what
    comes back, and starts over."""
    while not stop.is_set():
        start = time.monotonic()
        try:
            s = socket.create_connection((host, port), timeout=10)
            try:
                s.sendall(head)
            except OSError:
                pass  # the gateway may answer and close before it has read everything
            got = read_status(s)
            s.close()
        except OSError:
            got = "connect_failed"
        results.add(kind, time.monotonic() - start, got)


def normal_client(host, port, body, stop, results):
    """A well-behaved client: one chat request a second on a fresh connection; records latency and status."""
    req = (HEAD.format(n=len(body)).replace("Host: gateway", f"Host: {host}:{port}")).encode() + body
    while not stop.is_set():
        start = time.monotonic()
        try:
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(req)
            got = read_status(s)
            s.close()
        except OSError:
            got = "error"
        results.add("normal", time.monotonic() - start, got)
        stop.wait(max(0.0, 1.0 - (time.monotonic() - start)))


def pct(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def slowloris(a):
    host, port = a.host, a.port
    results = Results()
    stop = threading.Event()
    threads = []
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello " * 40}]}).encode()
    slow_head = HEAD.format(n=len(body)).encode()
    for _ in range(a.slow_heads):
        threads.append(threading.Thread(target=drip, args=("slow head", slow_head, b"", host, port, a.drip, stop, results)))
    for _ in range(a.slow_bodies):
        threads.append(
            threading.Thread(target=drip, args=("slow body", body, slow_head, host, port, a.drip, stop, results))
        )
    big = "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nx-filler: " + "a" * (70 * 1024) + "\r\n\r\n"
    many = "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n" + "".join(
        f"x-h{i}: v\r\n" for i in range(150)
    ) + "\r\n"
    for _ in range(a.flooders):
        threads.append(threading.Thread(target=flood, args=("70 KiB head", big.encode(), host, port, stop, results)))
        threads.append(threading.Thread(target=flood, args=("150 headers", many.encode(), host, port, stop, results)))
    threads.append(threading.Thread(target=normal_client, args=(host, port, body, stop, results)))
    for t in threads:
        t.daemon = True
        t.start()
    time.sleep(a.duration)
    stop.set()
    # Slow clients still mid-connection finish within their timeout; wait for them (bounded).
    deadline = time.monotonic() + max(a.header_timeout, a.body_timeout) + a.drip + 5
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = sum(t.is_alive() for t in threads)

    ok = True
    limits = {"slow head": a.header_timeout + a.slack, "slow body": a.body_timeout + a.slack}
    expect = {
        "slow head": {"408", "closed"},
        "slow body": {"408", "closed"},
        "70 KiB head": {"431", "closed"},
        "150 headers": {"431", "closed"},
    }
    print("| connections | count | got | lived p50 s | lived max s | limit s | verdict |")
    print("|---|---:|---|---:|---:|---:|---|")
    for kind in ("slow head", "slow body", "70 KiB head", "150 headers"):
        rows = results.rows.get(kind, [])
        got = {}
        for _, g in rows:
            got[g] = got.get(g, 0) + 1
        lived = [l for l, _ in rows]
        limit = limits.get(kind)
        good = bool(rows) and set(got) <= expect[kind] and (limit is None or max(lived) <= limit)
        ok &= good
        print(
            f"| {kind} | {len(rows)} | {', '.join(f'{k} ×{v}' for k, v in sorted(got.items()))} | "
            f"{pct(lived, 50):.2f} | {max(lived, default=0):.2f} | {limit if limit else '—'} | "
            f"{'pass' if good else 'FAIL'} |"
        )
    rows = results.rows.get("normal", [])
    lat = [l * 1000 for l, g in rows if g == "200"]
    failed = sum(1 for _, g in rows if g != "200")
    p50, p99 = pct(lat, 50), pct(lat, 99)
    good = bool(rows) and failed == 0 and p99 <= a.max_p99_ms
    ok &= good
    print()
    print("| normal client | requests | failed | p50 ms | p99 ms | max ms | p99 limit ms | verdict |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    print(
        f"| one request/s | {len(rows)} | {failed} | {p50:.1f} | {p99:.1f} | {max(lat, default=0):.1f} | "
        f"{a.max_p99_ms} | {'pass' if good else 'FAIL'} |"
    )
    if alive:
        print(f"\n{alive} client threads still running at the end (a connection the gateway never cut)")
        ok = False
    sys.exit(0 if ok else 1)


# --- soak ---------------------------------------------------------------------------------------------------


def rss(a):
    """Appends `seconds_since_start vmrss_kib rssanon_kib rssfile_kib open_fds` to a.out every a.every seconds
    while a.pid lives. RssAnon is the heap and stacks; RssFile mostly the binary's pages as code paths are
    first run: the split tells allocation growth from pages touched once."""
    start = time.monotonic()
    nxt = start
    with open(a.out, "a") as out:
        while True:
            try:
                with open(f"/proc/{a.pid}/status") as f:
                    fields = dict(l.split(":", 1) for l in f if ":" in l)
                kib = [int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile")]
                fds = len(os.listdir(f"/proc/{a.pid}/fd"))
            except (OSError, KeyError, ValueError):
                return
            out.write(f"{time.monotonic() - start:.0f} {kib[0]} {kib[1]} {kib[2]} {fds}\n")
            out.flush()
            nxt += a.every
            time.sleep(max(0.0, nxt - time.monotonic()))


def rss_report(a):
    """Reads the samples; the property: every sample after the warm-up within ±a.band of the first one after
    it. Prints a table of at most ~16 rows and the min / max / first / last."""
    samples = []
    extra = {}
    with open(a.samples) as f:
        for line in f:
            t, kib, anon, file_, fds = line.split()
            samples.append((float(t), int(kib)))
            extra[float(t)] = (int(anon), int(file_), int(fds))
    after = [(t, k) for t, k in samples if t >= a.warmup]
    if not after:
        print("no samples after the warm-up")
        sys.exit(1)
    ref = after[0][1]
    lo, hi = ref * (1 - a.band), ref * (1 + a.band)
    step = max(1, len(samples) // 15)
    print("| t (s) | RSS MiB | vs first after warm-up | anon MiB | file MiB | open fds |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i, (t, k) in enumerate(samples):
        if i % step == 0 or i == len(samples) - 1:
            mark = " (warm-up)" if t < a.warmup else ""
            anon, file_, fds = extra[t]
            print(f"| {t:.0f} | {k / 1024:.1f} | {k / ref:.3f}{mark} | {anon / 1024:.1f} | {file_ / 1024:.1f} | {fds} |")
    ks = [k for _, k in after]
    within = all(lo <= k <= hi for k in ks)
    print()
    print(
        f"after warm-up ({a.warmup:.0f} s, {len(ks)} samples): first {ks[0] / 1024:.1f} MiB, last "
        f"{ks[-1] / 1024:.1f} MiB, min {min(ks) / 1024:.1f} MiB, max {max(ks) / 1024:.1f} MiB; "
        f"band ±{a.band * 100:.0f}% of the first = {lo / 1024:.1f}–{hi / 1024:.1f} MiB: "
        f"{'within' if within else 'OUTSIDE'}"
    )
    sys.exit(0 if within else 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("storm-writer")
    s.add_argument("--target", required=True)
    s.add_argument("--a", required=True)
    s.add_argument("--b", required=True)
    s.add_argument("--invalid", required=True)
    s.add_argument("--admin", required=True)
    s.add_argument("--duration", type=float, required=True)
    s.add_argument("--interval", type=float, default=0.1)
    s.add_argument("--mode", choices=["rename", "inplace"], default="rename")
    s.set_defaults(func=storm_writer)

    s = sub.add_parser("events")
    s.add_argument("dir")
    s.set_defaults(func=events)

    for name, func in (("audit-snap", audit_snap), ("audit-verify", audit_verify)):
        s = sub.add_parser(name)
        s.add_argument("--dir", required=True)
        s.add_argument("--state", required=True)
        s.add_argument("--ids", required=True)
        s.set_defaults(func=func)

    s = sub.add_parser("slowloris")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--duration", type=float, default=30)
    s.add_argument("--drip", type=float, default=5)
    s.add_argument("--slow-heads", type=int, default=48)
    s.add_argument("--slow-bodies", type=int, default=16)
    s.add_argument("--flooders", type=int, default=2)
    s.add_argument("--header-timeout", type=float, required=True)
    s.add_argument("--body-timeout", type=float, required=True)
    s.add_argument("--slack", type=float, default=2)
    s.add_argument("--max-p99-ms", type=float, default=1000)
    s.set_defaults(func=slowloris)

    s = sub.add_parser("rss")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--every", type=float, default=10)
    s.set_defaults(func=rss)

    s = sub.add_parser("rss-report")
    s.add_argument("samples")
    s.add_argument("--warmup", type=float, default=60)
    s.add_argument("--band", type=float, default=0.10)
    s.set_defaults(func=rss_report)

    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
