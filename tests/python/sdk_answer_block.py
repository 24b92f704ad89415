"""A non-streamed answer carrying a secret, seen by the official `openai` package: ConflictError after one
HTTP request (the gateway says `x-should-retry: false`).

Environment: PROMPTGATE_BASE_URL, MOCK_CONTENT. Prints one JSON object.
"""
import json
import os

import openai

sent = []
client = openai.OpenAI(
    base_url=os.environ["PROMPTGATE_BASE_URL"],
    api_key="sk-test",
    default_headers={"x-mock-content": os.environ["MOCK_CONTENT"]},
    http_client=openai.DefaultHttpxClient(event_hooks={"request": [lambda r: sent.append(1)]}),
)
out = {}
try:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "the key?"}])
    out["raised"] = None
except openai.ConflictError as e:
    out["raised"] = "ConflictError"
    out["message"] = e.message
    out["code"] = e.code
out["requests"] = len(sent)
print(json.dumps(out))
