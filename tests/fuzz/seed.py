#!/usr/bin/env python3
"""Writes the hand-made seeds of each target into corpus/<target>/ (named seed-*, kept by `cargo fuzz cmin`
only when they add coverage). Run from tests/fuzz/; the fuzzer grows the corpus from here. With target names
as arguments (`python3 seed.py realtime_events`), only those targets' seeds are written."""
import json
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
RULES = HERE.parent.parent / "rules"


ONLY = set(sys.argv[1:])


def write(target, name, data):
    if ONLY and target not in ONLY:
        return
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

# realtime_events: a planted text (shape byte, cut count, cuts, text) or raw lines (0xC0, then the events).
def planted(shape, cuts, text):
    return bytes([shape, len(cuts)]) + bytes(cuts) + text.encode()


def lane(n, length):
    return (n << 5) | length


def raw(events):
    return bytes([0xC0]) + "\n".join(e if isinstance(e, str) else json.dumps(e, separators=(",", ":"))
                                    for e in events).encode()


def rt_response(rid, iid, deltas, family="response.output_text", field="text"):
    addr = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
    text = "".join(deltas)
    item = {"id": iid, "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "text", "text": text}]}
    return ([{"type": "response.created", "response": {"id": rid, "object": "realtime.response",
                                                        "status": "in_progress", "output": []}},
             {"type": "response.output_item.added", "response_id": rid, "output_index": 0,
              "item": dict(item, status="in_progress", content=[])},
             dict(addr, type="response.content_part.added", part={"type": "text", "text": ""})]
            + [dict(addr, type=family + ".delta", delta=d) for d in deltas]
            + [dict(addr, type=family + ".done", **{field: text}),
               dict(addr, type="response.content_part.done", part={"type": "text", "text": text}),
               {"type": "response.output_item.done", "response_id": rid, "output_index": 0, "item": item},
               {"type": "conversation.item.done", "item": item},
               {"type": "response.done", "response": {"id": rid, "status": "completed", "output": [item],
                                                      "usage": {"total_tokens": 9, "input_tokens": 4,
                                                                "output_tokens": 5}}}])


write("realtime_events", "text-response", raw(
    [{"type": "session.created", "session": {"id": "sess_1", "model": "gpt-realtime"}}]
    + rt_response("resp_1", "item_1", ["Hello", " there, how", " can I help?"])))
call = {"response_id": "resp_1", "item_id": "item_1", "output_index": 0, "call_id": "call_1"}
args = json.dumps({"to": "jane.doe@example.com", "key": "AKIAIOSFODNN7EXAMPLE"})
write("realtime_events", "function-call", raw(
    [{"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}}]
    + [dict(call, type="response.function_call_arguments.delta", delta=p) for p in split(args, 7)]
    + [dict(call, type="response.function_call_arguments.done", name="send", arguments=args),
       {"type": "response.done", "response": {"id": "resp_1", "status": "completed", "output": []}}]))
write("realtime_events", "transcription", raw(
    [{"type": "conversation.item.input_audio_transcription.delta", "item_id": "item_9", "content_index": 0,
      "delta": p} for p in split("call me at +1 415 555 0100 about Project Bluebird", 5)]
    + [{"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_9",
        "content_index": 0, "transcript": "call me at +1 415 555 0100 about Project Bluebird"}]))
# Planted: shape 0x1C = output text with opening, closing and response.done; cuts of 1..5 bytes on lane 0.
write("realtime_events", "split-secret", planted(0x1C, [1, 2, 3, 5], "my key is AKIAIOSFODNN7EXAMPLE, ok"))
write("realtime_events", "split-email", planted(0x1D, [4, 1, 6], "mail jane.doe@example.com now"))
# Every lane in turn, on a text with a secret and an email (function-call family, indices as strings).
write("realtime_events", "every-lane", planted(0x16, [lane(n, 3) for n in range(8)],
                                                 "sk-proj-abcdefghijklmnopqrstuvwxyz0123 and jane.doe@example.com"))
write("realtime_events", "hostile-mix", raw([
    "not json at all",
    {"type": "response.output_text.delta", "response_id": "r1", "item_id": "i1", "output_index": 0,
     "content_index": 0, "delta": "key AKIAIOSF"},
    {"type": "response.output_text.done", "response_id": "r1", "item_id": "i1", "output_index": 0,
     "content_index": 0, "text": "key AKIAIOSF"},
    {"type": "response.output_text.delta", "response_id": "r1", "item_id": "i1", "output_index": "0",
     "content_index": 0, "delta": "ODNN7EXAMPLE"},
    {"type": "response.output_text.delta", "response_id": "r2", "item_id": "i2", "output_index": 0,
     "content_index": 0, "delta": "other", "event_id": 5},
    {"type": "response.done", "response": {"id": "r1", "status": "completed", "output": []}},
    {"type": "response.output_text.delta", "response_id": "r1", "item_id": "i1", "output_index": 0,
     "content_index": 0, "delta": "after done"},
    {"type": "response.output_audio.delta", "response_id": "r2", "delta": "AAAA", "note": "jane.doe@example.com"},
    {"type": "error", "error": {"message": "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"}},
    '{"type":"response.output_text.delta","response_id":"r3","response_id":"r4","delta":"dup"}',
    {"type": "input_audio_buffer.append", "audio": "AAAA", "instructions": "AKIAIOSFODNN7EXAMPLE"},
]))
