"""A realtime session through the gateway with the official openai SDK's client (`client.realtime.connect`).

Prints JSON: the first event's type, the text of a response to a text item (round trip), the error event a
secret in a conversation item gets, and the item the upstream echoed for an item with an email address.
Environment: PROMPTGATE_BASE_URL (the gateway's /v1), PROMPTGATE_KEY (the key to present), SECRET, EMAIL_TEXT.
"""

import json
import os

from openai import OpenAI


def user_text(text):
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def until(conn, *types):
    """The next event of one of `types` (skipping the rest)."""
    for _ in range(1000):
        ev = conn.recv()
        if ev.type in types:
            return ev
    raise RuntimeError(f"no event of {types}")


client = OpenAI(
    base_url=os.environ["PROMPTGATE_BASE_URL"],
    api_key=os.environ.get("PROMPTGATE_KEY", "sk-test-client"),
    max_retries=0,
)
out = {}
with client.realtime.connect(model="gpt-realtime") as conn:
    out["first"] = conn.recv().type

    conn.conversation.item.create(item=user_text("Hello realtime"))
    until(conn, "conversation.item.created")
    conn.response.create()
    text = []
    while True:
        ev = until(conn, "response.output_text.delta", "response.done", "error")
        if ev.type == "response.output_text.delta":
            text.append(ev.delta)
        else:
            out["response_end"] = ev.type
            break
    out["text"] = "".join(text)

    conn.conversation.item.create(item=user_text("my key is " + os.environ["SECRET"]), event_id="evt_secret")
    err = until(conn, "error", "conversation.item.created")
    out["secret"] = err.model_dump()

    conn.conversation.item.create(item=user_text(os.environ["EMAIL_TEXT"]))
    created = until(conn, "conversation.item.created", "error")
    out["email"] = created.model_dump()

print(json.dumps(out))
