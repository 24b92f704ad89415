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

    /// Routes under `/v1` are forwarded; anything else is answered 404 by the gateway.
    pub fn is_forwarded(self) -> bool {
        self != Route::NotFound
    }

    /// The OpenAI API routes whose request bodies the gateway knows: they must be JSON.
    pub fn has_json_body(self) -> bool {
        matches!(
            self,
            Route::ChatCompletions
                | Route::Completions
                | Route::Embeddings
                | Route::Responses
                | Route::Moderations
        )
    }

    /// Answers carry generated text: a JSON answer is held and inspected before its status line is written,
    /// a streamed one is filtered event by event.
    pub fn carries_text(self) -> bool {
        matches!(
            self,
            Route::ChatCompletions | Route::Completions | Route::Responses
        )
    }

    /// Answers may be server-sent events: the generating routes, and unknown ones (e.g. retrieving a stored
    /// response with `GET /v1/responses/{id}?stream=true`).
    pub fn streams(self) -> bool {
        self.carries_text() || self == Route::OtherV1
    }

    /// A `POST` to this route names the model it runs on (a key scoped to models must name one).
    pub fn names_model(self) -> bool {
        matches!(
            self,
            Route::ChatCompletions | Route::Completions | Route::Embeddings | Route::Responses
        )
    }

    /// `/v1` routes the gateway has no knowledge of: `inspect.unknown_routes` says what happens to them.
    pub fn is_unknown(self) -> bool {
        matches!(self, Route::Models | Route::OtherV1)
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

    #[test]
    fn capabilities_table() {
        // (route, JSON body, carries text, streams, names a model, unknown)
        let cases = [
            (ChatCompletions, true, true, true, true, false),
            (Completions, true, true, true, true, false),
            (Responses, true, true, true, true, false),
            (Embeddings, true, false, false, true, false),
            (Moderations, true, false, false, false, false),
            (Models, false, false, false, false, true),
            (OtherV1, false, false, true, false, true),
            (NotFound, false, false, false, false, false),
        ];
        for (r, json, text, streams, model, unknown) in cases {
            assert_eq!(
                (
                    r.has_json_body(),
                    r.carries_text(),
                    r.streams(),
                    r.names_model(),
                    r.is_unknown()
                ),
                (json, text, streams, model, unknown),
                "{r:?}"
            );
        }
    }
}
