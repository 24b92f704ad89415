//! Token usage as the upstream reports it: Chat and Completions (`prompt_tokens`, `completion_tokens`) and the
//! Responses API (`input_tokens`, `output_tokens`).

use serde_json::Value;

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    /// Reads a `usage` object; `None` if it has no counts.
    pub fn from_value(v: &Value) -> Option<Self> {
        let n = |names: &[&str]| names.iter().find_map(|k| v.get(*k).and_then(Value::as_u64));
        let prompt = n(&["prompt_tokens", "input_tokens"]);
        let completion = n(&["completion_tokens", "output_tokens"]);
        let total = n(&["total_tokens"]);
        if prompt.is_none() && completion.is_none() && total.is_none() {
            return None;
        }
        let (p, c) = (prompt.unwrap_or(0), completion.unwrap_or(0));
        Some(Self {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: total.unwrap_or(p + c),
        })
    }

    /// The top-level `usage` of a JSON answer, if any.
    pub fn from_body(body: &[u8]) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Answer {
            usage: Option<Value>,
        }
        let a: Answer = serde_json::from_slice(body).ok()?;
        a.usage.as_ref().and_then(Self::from_value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_shapes() {
        let chat =
            br#"{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        assert_eq!(Usage::from_body(chat).map(|u| u.total_tokens), Some(7));
        let responses = serde_json::json!({"input_tokens": 5, "output_tokens": 6});
        assert_eq!(
            Usage::from_value(&responses).map(|u| u.total_tokens),
            Some(11)
        );
        assert_eq!(Usage::from_body(br#"{"choices":[]}"#), None);
    }
}
