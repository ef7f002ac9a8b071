//! The API surfaces tollgate forwards, found from the request method and path.
//! Every other path is rejected before anything reaches the provider.

use http::Method;

/// A route the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    ChatCompletions,
    Responses,
    Completions,
    Embeddings,
    /// `GET /v1/models` and `GET /v1/models/{id}`.
    Models,
    /// `GET /v1/gateway/usage`, served by the gateway itself.
    GatewayUsage,
}

/// The reason a request matched no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    /// The path exists but not for this method; carries the allowed method.
    MethodNotAllowed(Method),
}

impl Route {
    /// Finds the route of a request. `path` excludes the query string.
    pub fn classify(method: &Method, path: &str) -> Result<Route, RouteError> {
        let (route, allowed) = match path {
            "/v1/chat/completions" => (Route::ChatCompletions, Method::POST),
            "/v1/responses" => (Route::Responses, Method::POST),
            "/v1/completions" => (Route::Completions, Method::POST),
            "/v1/embeddings" => (Route::Embeddings, Method::POST),
            "/v1/models" => (Route::Models, Method::GET),
            "/v1/gateway/usage" => (Route::GatewayUsage, Method::GET),
            _ if is_model_path(path) => (Route::Models, Method::GET),
            _ => return Err(RouteError::NotFound),
        };
        if *method == allowed {
            Ok(route)
        } else {
            Err(RouteError::MethodNotAllowed(allowed))
        }
    }

    /// Returns the route's name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::ChatCompletions => "chat_completions",
            Route::Responses => "responses",
            Route::Completions => "completions",
            Route::Embeddings => "embeddings",
            Route::Models => "models",
            Route::GatewayUsage => "gateway_usage",
        }
    }

    /// Returns whether requests on this route consume tokens and so need a JSON
    /// body, admission and settlement.
    pub fn is_metered(self) -> bool {
        matches!(
            self,
            Route::ChatCompletions | Route::Responses | Route::Completions | Route::Embeddings
        )
    }
}

/// `/v1/models/{id}` with one non-empty segment that cannot climb the path.
fn is_model_path(path: &str) -> bool {
    let Some(id) = path.strip_prefix("/v1/models/") else {
        return false;
    };
    !id.is_empty() && !id.contains('/') && id != "." && id != ".." && !id.contains('%')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_routes_are_found() {
        let cases = [
            (Method::POST, "/v1/chat/completions", Route::ChatCompletions),
            (Method::POST, "/v1/responses", Route::Responses),
            (Method::POST, "/v1/completions", Route::Completions),
            (Method::POST, "/v1/embeddings", Route::Embeddings),
            (Method::GET, "/v1/models", Route::Models),
            (Method::GET, "/v1/models/gpt-4o-mini", Route::Models),
            (Method::GET, "/v1/gateway/usage", Route::GatewayUsage),
        ];
        for (method, path, route) in cases {
            assert_eq!(Route::classify(&method, path), Ok(route), "{method} {path}");
        }
    }

    #[test]
    fn other_paths_are_not_found() {
        for path in [
            "/v1/files",
            "/v1/organization/users",
            "/v1/fine_tuning/jobs",
            "/v1/chat/completions/",
            "//v1/chat/completions",
            "/v1/models/",
            "/v1/models/a/b",
            "/v1/models/..",
            "/v1/models/%2e%2e",
            "/",
        ] {
            assert_eq!(
                Route::classify(&Method::GET, path),
                Err(RouteError::NotFound),
                "{path}"
            );
        }
    }

    #[test]
    fn wrong_method_names_allowed_method() {
        assert_eq!(
            Route::classify(&Method::GET, "/v1/chat/completions"),
            Err(RouteError::MethodNotAllowed(Method::POST))
        );
        assert_eq!(
            Route::classify(&Method::DELETE, "/v1/models/gpt-4o"),
            Err(RouteError::MethodNotAllowed(Method::GET))
        );
    }
}
