//! The mock's OpenAI answers: realistic shapes, deterministic content.

use serde::Deserialize;
use serde_json::{json, Value};

use super::http1::{Request, Responder};
use super::{Behaviour, MockState};

const DEFAULT_ANSWER: &str = "Hello! This is the promptgate mock upstream answering your request.";
const FILLER: &[u8] =
    b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ";

/// The few request fields the mock looks at; everything else is skipped without being built.
#[derive(Deserialize, Default)]
struct Peek {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    logprobs: bool,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Answers an API request. Returns `false` if the connection was deliberately cut.
pub async fn answer(
    req: &Request,
    b: &Behaviour,
    state: &MockState,
    out: &mut Responder<'_>,
) -> std::io::Result<bool> {
    if let Some(status) = b.status {
        let message = b
            .content
            .clone()
            .unwrap_or_else(|| format!("mock error {status}"));
        let body = json!({"error": {"message": message, "type": "server_error", "param": null, "code": "mock_error"}});
        out.json(status, body.to_string().as_bytes()).await?;
        return Ok(true);
    }
    let peek: Peek = if req.body.is_empty() {
        Peek::default()
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(p) => p,
            Err(e) => {
                let body = json!({"error": {"message": format!("mock: invalid JSON body: {e}"), "type": "invalid_request_error", "param": null, "code": "invalid_json"}});
                out.json(400, body.to_string().as_bytes()).await?;
                return Ok(true);
            }
        }
    };
    let model = peek.model.clone().unwrap_or_else(|| "mock-gpt".to_string());
    if let (Some(events), true) = (&b.events, peek.stream || req.method == "GET") {
        return stream_events(events, b, out).await;
    }
    if let (Some(writes), true) = (&b.sse, peek.stream || req.method == "GET") {
        let events: Vec<Value> = writes.iter().map(|w| Value::String(w.clone())).collect();
        return stream_events(&events, b, out).await;
    }
    let text = answer_text(req, b);
    match (req.method.as_str(), req.path.trim_end_matches('/')) {
        ("POST", "/v1/chat/completions") if peek.stream => {
            stream_chat(&model, &text, &peek, b, state, out).await
        }
        ("POST", "/v1/chat/completions") => {
            let n = peek.n.unwrap_or(1).clamp(1, 16);
            // Token log-probabilities, one entry per space-separated token, when asked for.
            let logprobs = if peek.logprobs {
                let tokens: Vec<Value> = text
                    .split_inclusive(' ')
                    .map(|t| json!({"token": t, "logprob": -0.5, "bytes": t.as_bytes(), "top_logprobs": []}))
                    .collect();
                json!({"content": tokens, "refusal": null})
            } else {
                Value::Null
            };
            let choices: Vec<Value> = (0..n)
                .map(|i| json!({"index": i, "message": {"role": "assistant", "content": text, "refusal": null}, "logprobs": logprobs, "finish_reason": "stop"}))
                .collect();
            let mut body = json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000u64, "model": model,
                "choices": choices, "usage": usage(req, &text), "system_fingerprint": "fp_mock"
            });
            if b.echo {
                body["echo"] = echo(req);
            }
            out.json(200, body.to_string().as_bytes())
                .await
                .map(|()| true)
        }
        ("POST", "/v1/completions") if peek.stream => {
            stream_completion(&model, &text, b, state, out).await
        }
        ("POST", "/v1/completions") => {
            let body = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000u64, "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}], "usage": usage(req, &text)});
            out.json(200, body.to_string().as_bytes())
                .await
                .map(|()| true)
        }
        ("POST", "/v1/embeddings") => {
            let embedding: Vec<f64> = match b.embedding_dims {
                Some(n) => (0..n).map(|i| ((i % 97) as f64 - 48.0) / 1000.0).collect(),
                None => vec![
                    0.0123, -0.0456, 0.0789, 0.1011, -0.1213, 0.1415, 0.1617, -0.1819,
                ],
            };
            let body = json!({"object": "list", "model": model,
                "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
                "usage": {"prompt_tokens": req.body.len() / 4, "total_tokens": req.body.len() / 4}});
            out.json(200, body.to_string().as_bytes())
                .await
                .map(|()| true)
        }
        ("POST", "/v1/responses") if peek.stream => {
            stream_response(&model, &text, b, state, out).await
        }
        // Retrieving a stored response, streamed again (`GET /v1/responses/{id}?stream=true`).
        ("GET", p)
            if p.starts_with("/v1/responses/")
                && req
                    .query
                    .as_deref()
                    .is_some_and(|q| q.contains("stream=true")) =>
        {
            stream_response(&model, &text, b, state, out).await
        }
        ("POST", "/v1/responses") => {
            let body = json!({"id": "resp_mock", "object": "response", "created_at": 1_700_000_000u64, "status": "completed", "model": model,
                "output": [{"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
                            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                "usage": {"input_tokens": req.body.len() / 4, "output_tokens": text.len() / 4, "total_tokens": (req.body.len() + text.len()) / 4}});
            out.json(200, body.to_string().as_bytes())
                .await
                .map(|()| true)
        }
        ("POST", "/v1/moderations") => {
            let body = json!({"id": "modr-mock", "model": "omni-moderation-latest",
                "results": [{"flagged": false, "categories": {}, "category_scores": {}}]});
            out.json(200, body.to_string().as_bytes())
                .await
                .map(|()| true)
        }
        ("GET", "/v1/models") => {
            let body = json!({"object": "list", "data": [{"id": "mock-gpt", "object": "model", "created": 1_700_000_000u64, "owned_by": "promptgate"}]});
            out.json(200, body.to_string().as_bytes())
                .await
                .map(|()| true)
        }
        _ => {
            let body = json!({"error": {"message": format!("mock: no route {} {}", req.method, req.path), "type": "invalid_request_error", "param": null, "code": "not_found"}});
            out.json(404, body.to_string().as_bytes())
                .await
                .map(|()| true)
        }
    }
}

fn answer_text(req: &Request, b: &Behaviour) -> String {
    match &b.lead {
        Some(lead) => format!("{lead}{}", body_text(req, b)),
        None => body_text(req, b),
    }
}

fn body_text(req: &Request, b: &Behaviour) -> String {
    if b.echo {
        return String::from_utf8_lossy(&req.body).into_owned();
    }
    if let Some(c) = &b.content {
        return c.clone();
    }
    if let Some(size) = b.chunk_bytes {
        let total = size * b.chunks;
        return FILLER
            .iter()
            .cycle()
            .take(total)
            .map(|&c| c as char)
            .collect();
    }
    DEFAULT_ANSWER.to_string()
}

fn usage(req: &Request, text: &str) -> Value {
    let prompt = req.body.len() / 4;
    let completion = text.len().div_ceil(4);
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn echo(req: &Request) -> Value {
    json!({
        "method": req.method, "path": req.path, "query": req.query,
        "headers": req.headers, "body": String::from_utf8_lossy(&req.body),
    })
}

/// Splits `text` into `n` pieces of about equal size, on character boundaries.
fn pieces(text: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for i in 1..=n {
        let mut end = if i == n {
            text.len()
        } else {
            text.len() * i / n
        };
        while !text.is_char_boundary(end) {
            end += 1;
        }
        end = end.max(start);
        out.push(&text[start..end]);
        start = end;
    }
    out
}

/// Paces a streamed answer: the `head` events, then the events of each of `steps` steps (`delay` apart; the
/// `hold` and `reset_after` behaviours apply here), then the `tail` events and `[DONE]`.
/// The fixed parts of a paced stream: events before the steps, events after them, and whether `[DONE]` ends it.
struct Frame {
    head: Vec<Value>,
    tail: Vec<Value>,
    done: bool,
}

async fn paced(
    steps: usize,
    b: &Behaviour,
    state: &MockState,
    out: &mut Responder<'_>,
    frame_of: Frame,
    per_step: impl Fn(usize) -> Vec<Value>,
) -> std::io::Result<bool> {
    let Frame { head, tail, done } = frame_of;
    let frame = |events: Vec<Value>| -> String {
        events.iter().map(|e| format!("data: {e}\n\n")).collect()
    };
    out.sse_start().await?;
    out.sse_raw(frame(head).as_bytes()).await?;
    for i in 0..steps {
        if i > 0 && !b.delay.is_zero() {
            tokio::time::sleep(b.delay).await;
        }
        if b.reset_after == Some(i) {
            return Ok(false);
        }
        out.sse_raw(frame(per_step(i)).as_bytes()).await?;
        if i == 0 {
            if let Some(token) = &b.hold {
                state.wait_release(token).await;
            }
        }
    }
    let end = if done { "data: [DONE]\n\n" } else { "" };
    out.sse_raw(format!("{}{end}", frame(tail)).as_bytes())
        .await?;
    out.sse_end().await?;
    Ok(true)
}

/// A stream of exactly the `x-mock-events` events (no `[DONE]` unless one of them is), paced.
async fn stream_events(
    events: &[Value],
    b: &Behaviour,
    out: &mut Responder<'_>,
) -> std::io::Result<bool> {
    out.sse_start().await?;
    for (i, e) in events.iter().enumerate() {
        if i > 0 && !b.delay.is_zero() {
            tokio::time::sleep(b.delay).await;
        }
        if b.reset_after == Some(i) {
            return Ok(false);
        }
        let bytes = match e {
            // `x-mock-sse`: written as it is.
            Value::String(s) if b.sse.is_some() => s.clone(),
            Value::String(s) => format!("data: {s}\n\n"),
            other => format!("data: {other}\n\n"),
        };
        out.sse_raw(bytes.as_bytes()).await?;
    }
    out.sse_end().await?;
    Ok(true)
}

/// The delta carrying `piece` in the field `x-mock-delta-field` names (a dotted path; `content` by default).
fn delta_with(b: &Behaviour, piece: &str) -> Value {
    let field = b.delta_field.as_deref().unwrap_or("content");
    field
        .rsplit('.')
        .fold(Value::String(piece.to_string()), |v, k| json!({ k: v }))
}

/// The pieces a text is streamed in: cut at the `split_at` offsets if given, else `chunks` even pieces.
fn split<'t>(text: &'t str, b: &Behaviour) -> Vec<&'t str> {
    match &b.split_at {
        Some(cuts) => {
            let mut out = Vec::new();
            let mut start = 0;
            for &c in cuts {
                let c = c.clamp(start, text.len());
                if text.is_char_boundary(c) {
                    out.push(&text[start..c]);
                    start = c;
                }
            }
            out.push(&text[start..]);
            out
        }
        None => pieces(text, b.chunks),
    }
}

async fn stream_completion(
    model: &str,
    text: &str,
    b: &Behaviour,
    state: &MockState,
    out: &mut Responder<'_>,
) -> std::io::Result<bool> {
    let event = |piece: &str, finish: Value| {
        json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000u64, "model": model,
               "choices": [{"index": 0, "text": piece, "logprobs": null, "finish_reason": finish}]})
    };
    let tail = vec![event("", json!("stop"))];
    let parts = split(text, b);
    let frame = Frame {
        head: Vec::new(),
        tail,
        done: true,
    };
    paced(parts.len(), b, state, out, frame, |i| {
        vec![event(parts[i], Value::Null)]
    })
    .await
}

/// A Responses API stream: `response.created`, one `response.output_text.delta` per piece, then
/// `response.output_text.done` and `response.completed` (no `[DONE]`: that API does not send one).
async fn stream_response(
    model: &str,
    text: &str,
    b: &Behaviour,
    state: &MockState,
    out: &mut Responder<'_>,
) -> std::io::Result<bool> {
    let parts = split(text, b);
    let head = vec![
        json!({"type": "response.created", "response": {"id": "resp_mock", "object": "response", "status": "in_progress", "model": model}}),
    ];
    let delta = |piece: &str| json!({"type": "response.output_text.delta", "item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": piece});
    let tail = vec![
        json!({"type": "response.output_text.done", "item_id": "msg_mock", "output_index": 0, "content_index": 0, "text": text}),
        json!({"type": "response.completed", "response": {"id": "resp_mock", "object": "response", "status": "completed", "model": model,
            "output": [{"type": "message", "id": "msg_mock", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
            "usage": {"input_tokens": 10, "output_tokens": text.len().div_ceil(4), "total_tokens": 10 + text.len().div_ceil(4)}}}),
    ];
    let frame = Frame {
        head,
        tail,
        done: false,
    };
    paced(parts.len(), b, state, out, frame, |i| vec![delta(parts[i])]).await
}

async fn stream_chat(
    model: &str,
    text: &str,
    peek: &Peek,
    b: &Behaviour,
    state: &MockState,
    out: &mut Responder<'_>,
) -> std::io::Result<bool> {
    // One text per choice: the same answer `n` times, or the `x-mock-choices` answers.
    let texts: Vec<String> = match &b.choices {
        Some(c) if !c.is_empty() => c.clone(),
        _ => vec![text.to_string(); peek.n.unwrap_or(1).clamp(1, 16)],
    };
    let n = texts.len();
    let include_usage = peek
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let chunk = |choices: Value| {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000u64,
               "model": model, "system_fingerprint": "fp_mock", "choices": choices})
    };
    let role: Vec<Value> = (0..n)
        .map(|i| json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}))
        .collect();
    let parts: Vec<Vec<&str>> = texts.iter().map(|t| split(t, b)).collect();
    let tool_parts: Vec<Vec<&str>> = b.tool_args.iter().flatten().map(|a| split(a, b)).collect();
    let steps = parts
        .iter()
        .chain(&tool_parts)
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    let per_step = |i: usize| -> Vec<Value> {
        let mut events: Vec<Value> = parts
            .iter()
            .enumerate()
            .filter_map(|(c, p)| p.get(i).map(|piece| (c, piece)))
            .map(|(c, piece)| chunk(json!([{"index": c, "delta": delta_with(b, piece), "logprobs": null, "finish_reason": null}])))
            .collect();
        for (t, p) in tool_parts.iter().enumerate() {
            if let Some(piece) = p.get(i) {
                let call = if i == 0 {
                    json!({"index": t, "id": format!("call_{t}"), "type": "function", "function": {"name": "tool", "arguments": piece}})
                } else {
                    json!({"index": t, "function": {"arguments": piece}})
                };
                events.push(chunk(json!([{"index": 0, "delta": {"tool_calls": [call]}, "logprobs": null, "finish_reason": null}])));
            }
        }
        events
    };
    let finish: Vec<Value> = (0..n)
        .map(|i| json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": "stop"}))
        .collect();
    let mut tail = vec![chunk(Value::Array(finish))];
    if include_usage {
        let prompt = 10;
        let completion = texts.iter().map(|t| t.len().div_ceil(4)).sum::<usize>();
        let mut u = chunk(json!([]));
        u["usage"] = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
        tail.push(u);
    }
    let frame = Frame {
        head: vec![chunk(Value::Array(role))],
        tail,
        done: true,
    };
    paced(steps, b, state, out, frame, per_step).await
}

#[cfg(test)]
mod tests {
    use super::pieces;

    #[test]
    fn pieces_cover_the_text_on_char_boundaries() {
        for n in 1..12 {
            let t = "héllo wörld ✓ ok";
            let p = pieces(t, n);
            assert_eq!(p.len(), n);
            assert_eq!(p.concat(), t);
        }
    }
}
