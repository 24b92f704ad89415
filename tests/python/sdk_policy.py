"""Request enforcement seen by the official `openai` package: a blocked prompt raises ConflictError after
exactly one HTTP request (the SDK would retry a 409 without `x-should-retry: false`), a redacted one succeeds.

Environment: PROMPTGATE_BASE_URL. Prints one JSON object.
"""
import json
import os

import openai

sent = []
# The SDK's own HTTP client class (httpx or its successor, whichever this SDK version uses), with a hook that
# counts every request it sends.
http_client = openai.DefaultHttpxClient(event_hooks={"request": [lambda request: sent.append(str(request.url))]})
# Default retries left on: the point is that the gateway's answer stops them.
client = openai.OpenAI(base_url=os.environ["PROMPTGATE_BASE_URL"], api_key="sk-test", http_client=http_client)

out = {}
try:
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "deploy with key AKIAIOSFODNN7EXAMPLE please"}],
    )
    out["blocked"] = False
except openai.ConflictError as e:
    out["blocked"] = True
    out["status"] = e.status_code
    out["code"] = e.code
    out["message"] = e.message
    out["body"] = e.body
out["requests_for_blocked"] = len(sent)

sent.clear()
ok = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Email jane.doe@example.com about the launch"}],
)
out["redacted_answer"] = ok.choices[0].message.content
out["requests_for_redacted"] = len(sent)
print(json.dumps(out))
