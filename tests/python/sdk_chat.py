"""Drives the gateway with the official `openai` package: one plain and one streamed chat completion.

Environment: PROMPTGATE_BASE_URL (e.g. http://127.0.0.1:8080/v1), MOCK_CONTENT (the answer the mock is told to
send), PROMPTGATE_CA_FILE (optional: for an https:// base URL, the only CA trusted). Prints one JSON object with
what the SDK returned.
"""
import json
import os
import ssl

import openai

ca_file = os.environ.get("PROMPTGATE_CA_FILE")
client = openai.OpenAI(
    base_url=os.environ["PROMPTGATE_BASE_URL"],
    api_key="sk-test-not-a-real-key",
    default_headers={"x-mock-content": os.environ["MOCK_CONTENT"], "x-mock-chunks": "5"},
    max_retries=0,
    # The SDK's own HTTP client class (httpx or its successor, whichever this SDK version uses).
    http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=ca_file)) if ca_file else None,
)

plain = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Say hello"}],
)
chunks = []
with client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Say hello, streamed"}],
    stream=True,
) as stream:
    for event in stream:
        for choice in event.choices:
            if choice.delta.content:
                chunks.append(choice.delta.content)

print(json.dumps({
    "plain": plain.choices[0].message.content,
    "plain_request_id": plain._request_id,
    "stream": "".join(chunks),
    "stream_events": len(chunks),
    "sdk_version": openai.__version__,
}))
