#!/usr/bin/env python3
"""Writes the hand-made seeds of each target into corpus/<target>/ (named seed-*, kept by `cargo fuzz cmin`
only when they add coverage). Run from tests/fuzz/; the fuzzer grows the corpus from here."""
import json
import os
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
RULES = HERE.parent.parent / "rules"


def write(target, name, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


def chat_stream(pieces, index=0, eol="\n"):
    out = ""
    for p in pieces:
        ev = {"id": "c1", "object": "chat.completion.chunk",
              "choices": [{"index": index, "delta": {"content": p}, "finish_reason": None}]}
        out += "data: " + json.dumps(ev) + eol + eol
    return out + "data: [DONE]" + eol + eol


def responses_stream(pieces):
    out = ""
    for p in pieces:
        ev = {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": p}
        out += "event: response.output_text.delta\ndata: " + json.dumps(ev) + "\n\n"
    return out + 'event: response.completed\ndata: {"type":"response.completed"}\n\n'


def tool_stream(pieces):
    out = ""
    for p in pieces:
        ev = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}}]}
        out += "data: " + json.dumps(ev) + "\n\n"
    return out


def split(text, n):
    return [text[i:i + n] for i in range(0, len(text), n)]


def framed(stream, lens):
    """The sse_stream input: a count of read lengths, the lengths, then the upstream bytes."""
    return bytes([len(lens)]) + bytes(lens) + stream.encode()


# sse_stream: values split across deltas and across reads.
values = ["my key is AKIAIOSFODNN7EXAMPLE ok", "mail jane.doe@example.com now",
          "card 4111 1111 1111 1111 end", "about Project Bluebird today", "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789AB"]
for vi, v in enumerate(values):
    for piece in (1, 3, 7):
        write("sse_stream", f"chat-{vi}-{piece}", framed(chat_stream(split(v, piece)), [1, 5, 13]))
    write("sse_stream", f"crlf-{vi}", framed(chat_stream(split(v, 4), eol="\r\n"), [2]))
    write("sse_stream", f"responses-{vi}", framed(responses_stream(split(v, 5)), [9, 1]))
    write("sse_stream", f"tool-{vi}", framed(tool_stream(split(json.dumps({"q": v}), 6)), []))
write("sse_stream", "comment", framed(": keepalive\n\nretry: 10\n\n" + chat_stream(["hi"]), [3]))
write("sse_stream", "unterminated", framed('data: {"choices":[{"index":0,"delta":{"content":"AKIAIOSF', [4]))
write("sse_stream", "escaped", framed('data: {"choices":[{"index":0,"delta":{"content":"\\u0041KIAIOSFODNN7EXAMPLE"}}]}\n\n', [1]))

# json_redaction: request bodies with values to redact and block, escaped, nested, in keys.
bodies = [
    {"model": "m", "messages": [{"role": "user", "content": "mail jane.doe@example.com and 4111 1111 1111 1111"}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "ssn 123-45-6789, call +1 415 555 0100"}]}]},
    {"model": "m", "messages": [{"role": "user", "content": "key AKIAIOSFODNN7EXAMPLE"}]},
    {"model": "m", "input": "IBAN DE89 3704 0044 0532 0130 00 please"},
    {"model": "m", "tools": [{"type": "function", "function": {"name": "f", "parameters": {"x@y.io": 1}}}],
     "messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": json.dumps({"to": "a.b@c.de"})}}]}]},
    {"prompt": ["jane\u200b.doe@example.com", "４１１１ １１１１ １１１１ １１１１"]},
]
for i, b in enumerate(bodies):
    write("json_redaction", f"body-{i}", json.dumps(b))
    write("json_redaction", f"ascii-{i}", json.dumps(b, ensure_ascii=True, separators=(",", ":")))
write("json_redaction", "escapes", '{"messages":[{"content":"j\\u0061ne@ex\\u0061mple.com \\ud83d\\ude00 x\\/y@z.io"}]}')
write("json_redaction", "deep", '[' * 70 + ']' * 70)

# rule_files: the shipped rule files and a few variants.
for f in sorted(RULES.glob("*.toml")):
    write("rule_files", f.stem, f.read_bytes())
write("rule_files", "terms", '[[rule]]\nid = "t"\nkeywords = { terms_file = "terms.txt" }\naction = "block"\n'
      'examples = { match = ["about Project Bluebird"], no_match = ["bluebirds"] }\n')
write("rule_files", "inline-terms", '[[rule]]\nid = "k"\nkeywords = { terms = ["Straße", "ﬁx"] }\naction = "redact"\n'
      'replacement = "[X]"\nexamples = { match = ["die STRASSE"], no_match = [] }\n')

# normalize_spans: text with everything the views change.
texts = [
    "jane\u200b.doe@exa\u200dmple.com — ŞTRAẞE ﬁ ４１ \ufeff",
    "e\u0301 A\u030a \u212b \u2126 \u00bd \u2163 ﬀ ﬃ",
    "card ４１１１\u2009１１１１\u00a0１１１１\u2014１１１１",
    "İstanbul ΣΊΣΥΦΟΣ ǅ ß ẞ \u0130\u0307",
    "\u180e\u2060\u00ad\u034f\ufe0f\U000e0001 mix",
    "\ud7a3\u1100\u1161\u11a8 한국어 \u3000 全角ＡＢＣ",
    "AKIA\u200bIOSFODNN7EXAMPLE",
]
for i, t in enumerate(texts):
    write("normalize_spans", f"text-{i}", t.encode("utf-8", "surrogatepass"))
write("normalize_spans", "invalid-utf8", b"ab\xff\xfe c\xc3 \xe2\x80 d@e.fg")
