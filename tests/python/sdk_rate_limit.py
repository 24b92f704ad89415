"""The official `openai` package against a gateway key whose request quota is one per window.

The first call uses the quota; the second gets 429 with `retry-after-ms`, and the SDK (max_retries=2) is
expected to wait that long and then succeed. Environment: PROMPTGATE_BASE_URL, PROMPTGATE_KEY (the gateway
key). Prints one JSON object: what each call returned and how long the second one took.
"""
import json
import os
import time

import openai

client = openai.OpenAI(
    base_url=os.environ["PROMPTGATE_BASE_URL"],
    api_key=os.environ["PROMPTGATE_KEY"],
    max_retries=2,
)


def ask():
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello"}],
    )
    return raw.parse().choices[0].message.content, raw.retries_taken


first, first_retries = ask()
started = time.monotonic()
second, second_retries = ask()
elapsed = time.monotonic() - started

print(json.dumps({
    "first": first,
    "first_retries": first_retries,
    "second": second,
    "second_retries": second_retries,
    "second_seconds": elapsed,
}))
