#!/usr/bin/env python3
"""Time to first token of a streamed chat completion, measured at the client (standard library only).

    python3 benches/ttft.py URL SAMPLES MODEL [NAME:VALUE ...]

Sends SAMPLES streamed chat completions (after one warm-up) one after the other over one keep-alive
connection to URL (the gateway's base, `/v1/chat/completions` is appended), with the extra request headers
given. Each sample's time runs from the request's send to the first `data:` event whose
`choices[0].delta.content` is non-empty — not to the response head, nor to an opening event that only
carries the role. Prints one line: `median_ms min_ms max_ms text_digest`, where text_digest is the first 12
hex digits of the SHA-256 of the streamed text (every sample must stream the same text and end with
`[DONE]`, or the script fails), so the caller can check each path delivered the answer whole and unchanged.
"""
import hashlib
import http.client
import json
import statistics
import sys
import time
import urllib.parse


def one(conn, path, body, headers):
    """One streamed request: (seconds to the first content delta, the whole streamed text)."""
    start = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"status {resp.status}: {resp.read(300)!r}")
    first, text, done = None, [], False
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            continue
        event = json.loads(data)
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                if first is None:
                    first = time.perf_counter() - start
                text.append(piece)
    if first is None or not done:
        raise SystemExit("a stream ended without content or without [DONE]")
    return first, "".join(text)


def main():
    url, samples, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    for pair in sys.argv[4:]:
        name, value = pair.split(":", 1)
        headers[name] = value
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    path = parsed.path.rstrip("/") + "/v1/chat/completions"
    body = json.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": "Say hello."}]}).encode()
    one(conn, path, body, headers)
    times, texts = [], set()
    for _ in range(samples):
        t, text = one(conn, path, body, headers)
        times.append(t * 1000)
        texts.add(text)
    if len(texts) != 1:
        raise SystemExit("the samples streamed different texts")
    digest = hashlib.sha256(texts.pop().encode()).hexdigest()[:12]
    print(f"{statistics.median(times):.2f} {min(times):.2f} {max(times):.2f} {digest}")


if __name__ == "__main__":
    main()
