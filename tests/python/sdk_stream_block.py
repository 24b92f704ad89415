"""A streamed answer that turns into a secret mid-stream, seen by the official `openai` package: the text
before it arrives, then the SDK raises APIError carrying the policy message.

Environment: PROMPTGATE_BASE_URL, MOCK_CONTENT. Prints one JSON object.
"""
import json
import os

import openai

client = openai.OpenAI(
    base_url=os.environ["PROMPTGATE_BASE_URL"],
    api_key="sk-test",
    default_headers={"x-mock-content": os.environ["MOCK_CONTENT"], "x-mock-chunks": "6"},
    max_retries=0,
)
received = []
out = {}
try:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "tell me the key"}], stream=True
    )
    for event in stream:
        for choice in event.choices:
            if choice.delta.content:
                received.append(choice.delta.content)
    out["raised"] = None
except openai.APIError as e:
    out["raised"] = type(e).__name__
    out["message"] = e.message
    out["body"] = e.body
out["received"] = "".join(received)
print(json.dumps(out))
