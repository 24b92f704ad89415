//! Classification of a request path into a closed set of routes. The set doubles as the `route` metric label,
//! so it must stay small and never contain raw paths.

/// What a request path addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Route {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Moderations,
    Models,
    /// Any other path under `/v1/`.
    OtherV1,
    /// Outside `/v1`: answered by the gateway with 404, never forwarded.
    #[default]
    NotFound,
}

impl Route {
    /// Classifies a path (without the query string).
    pub fn classify(path: &str) -> Route {
        let Some(rest) = path.strip_prefix("/v1") else {
            return Route::NotFound;
        };
        if rest.is_empty() {
            return Route::OtherV1;
        }
        let Some(rest) = rest.strip_prefix('/') else {
            // `/v1foo` is not under `/v1`.
            return Route::NotFound;
        };
        let rest = rest.trim_end_matches('/');
        match rest {
            "chat/completions" => Route::ChatCompletions,
            "completions" => Route::Completions,
            "embeddings" => Route::Embeddings,
            "moderations" => Route::Moderations,
            "responses" => Route::Responses,
            _ if rest == "models" || rest.starts_with("models/") => Route::Models,
            _ => Route::OtherV1,
        }
    }

    /// The metric label: a closed set of static names.
    pub fn label(self) -> &'static str {
        match self {
            Route::ChatCompletions => "chat_completions",
            Route::Completions => "completions",
            Route::Embeddings => "embeddings",
            Route::Responses => "responses",
            Route::Moderations => "moderations",
            Route::Models => "models",
            Route::OtherV1 => "other_v1",
            Route::NotFound => "not_found",
        }
    }

    pub fn is_forwarded(self) -> bool {
        self != Route::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::Route::{self, *};

    #[test]
    fn classify_table() {
        let cases = [
            ("/v1/chat/completions", ChatCompletions),
            ("/v1/chat/completions/", ChatCompletions),
            ("/v1/completions", Completions),
            ("/v1/embeddings", Embeddings),
            ("/v1/responses", Responses),
            ("/v1/moderations", Moderations),
            ("/v1/models", Models),
            ("/v1/models/gpt-4o", Models),
            ("/v1/files", OtherV1),
            ("/v1", OtherV1),
            ("/v1x/chat/completions", NotFound),
            ("/", NotFound),
            ("/healthz", NotFound),
            ("/chat/completions", NotFound),
        ];
        for (path, want) in cases {
            assert_eq!(Route::classify(path), want, "{path}");
        }
    }
}
