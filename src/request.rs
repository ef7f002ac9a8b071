//! Reading a metered request's JSON body: validation of the fields the
//! gateway relies on, the reservation estimate, and the rewrite that asks the
//! upstream for streamed usage.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::api::Route;
use crate::errors::GatewayError;
use crate::estimate;

/// What the gateway learned from a request body, and the body to forward.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectedRequest {
    pub model: String,
    pub stream: bool,
    /// The largest max output field the request set, if any.
    pub max_output_tokens: Option<u64>,
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// True when the gateway added `stream_options.include_usage`, so the
    /// usage-only chunk must be removed from what the client receives.
    pub strip_usage_chunk: bool,
    /// The body to send upstream: the original bytes unless rewritten.
    pub body: Bytes,
}

/// Max output fields of each API, in the order they are read.
fn max_output_fields(route: Route) -> &'static [&'static str] {
    match route {
        Route::ChatCompletions => &["max_completion_tokens", "max_tokens"],
        Route::Completions => &["max_tokens"],
        Route::Responses => &["max_output_tokens"],
        _ => &[],
    }
}

/// Validates and, where needed, rewrites the body of a metered request.
pub fn inspect(route: Route, body: Bytes) -> Result<InspectedRequest, GatewayError> {
    let mut json: Value = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("The request body is not valid JSON: {e}."), None))?;
    let Some(object) = json.as_object_mut() else {
        return Err(invalid(
            "The request body must be a JSON object.".to_string(),
            None,
        ));
    };

    let model = match object.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        Some(Value::String(_)) | None => {
            return Err(invalid(
                "Missing required parameter: 'model'.".to_string(),
                Some("model"),
            ))
        }
        Some(other) => {
            return Err(invalid(
                format!("'model' must be a string, got {}.", json_type(other)),
                Some("model"),
            ))
        }
    };

    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(other) => {
            return Err(invalid(
                format!("'stream' must be a boolean, got {}.", json_type(other)),
                Some("stream"),
            ))
        }
    };

    let mut max_output_tokens: Option<u64> = None;
    for field in max_output_fields(route) {
        let value = match object.get(*field) {
            None | Some(Value::Null) => continue,
            Some(value) => value,
        };
        let tokens = value.as_u64().filter(|&tokens| tokens > 0).ok_or_else(|| {
            invalid(
                format!("'{field}' must be a positive integer, got {value}."),
                Some(field),
            )
        })?;
        max_output_tokens = Some(max_output_tokens.map_or(tokens, |max| max.max(tokens)));
    }

    let input_tokens = estimate::input_tokens(&json);

    let wants_usage_rewrite =
        stream && matches!(route, Route::ChatCompletions | Route::Completions);
    let strip_usage_chunk = wants_usage_rewrite && add_include_usage(&mut json)?;
    let body = if strip_usage_chunk {
        Bytes::from(serde_json::to_vec(&json).map_err(|_| GatewayError::Internal)?)
    } else {
        body
    };

    Ok(InspectedRequest {
        model,
        stream,
        max_output_tokens,
        input_tokens,
        strip_usage_chunk,
        body,
    })
}

/// Sets `stream_options.include_usage = true`. Returns whether the body
/// changed, that is whether the client had not asked for usage itself.
fn add_include_usage(json: &mut Value) -> Result<bool, GatewayError> {
    let Some(object) = json.as_object_mut() else {
        return Ok(false);
    };
    let options = object
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    if options.is_null() {
        *options = Value::Object(Map::new());
    }
    let Some(options) = options.as_object_mut() else {
        return Err(invalid(
            "'stream_options' must be an object.".to_string(),
            Some("stream_options"),
        ));
    };

    match options.get("include_usage") {
        Some(Value::Bool(true)) => Ok(false),
        None | Some(Value::Null) | Some(Value::Bool(false)) => {
            options.insert("include_usage".to_string(), Value::Bool(true));
            Ok(true)
        }
        Some(other) => Err(invalid(
            format!(
                "'stream_options.include_usage' must be a boolean, got {}.",
                json_type(other)
            ),
            Some("stream_options.include_usage"),
        )),
    }
}

fn invalid(message: String, param: Option<&str>) -> GatewayError {
    GatewayError::InvalidRequest {
        message,
        param: param.map(str::to_string),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect_json(route: Route, text: &str) -> Result<InspectedRequest, GatewayError> {
        inspect(route, Bytes::from(text.to_string()))
    }

    fn param_of(error: GatewayError) -> Option<String> {
        match error {
            GatewayError::InvalidRequest { param, .. } => param,
            other => panic!("expected an invalid request, got {other:?}"),
        }
    }

    #[test]
    fn plain_request_is_forwarded_unchanged() {
        let text = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
        let inspected = inspect_json(Route::ChatCompletions, text).unwrap();
        assert_eq!(inspected.body, text.as_bytes());
        assert_eq!(inspected.model, "gpt-4o-mini");
        assert!(!inspected.stream);
        assert!(!inspected.strip_usage_chunk);
    }

    #[test]
    fn chat_stream_gets_include_usage() {
        let text = r#"{"model":"m","stream":true,"messages":[]}"#;
        let inspected = inspect_json(Route::ChatCompletions, text).unwrap();
        assert!(inspected.strip_usage_chunk);
        let forwarded: Value = serde_json::from_slice(&inspected.body).unwrap();
        assert_eq!(forwarded["stream_options"]["include_usage"], true);
        assert_eq!(forwarded["model"], "m");
    }

    #[test]
    fn client_include_usage_is_kept() {
        let text = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let inspected = inspect_json(Route::ChatCompletions, text).unwrap();
        assert!(!inspected.strip_usage_chunk);
        assert_eq!(inspected.body, text.as_bytes());
    }

    #[test]
    fn include_usage_false_is_overridden_and_stripped() {
        let text = r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#;
        let inspected = inspect_json(Route::Completions, text).unwrap();
        assert!(inspected.strip_usage_chunk);
    }

    #[test]
    fn responses_stream_is_not_rewritten() {
        let text = r#"{"model":"m","stream":true,"input":"hi","max_output_tokens":50}"#;
        let inspected = inspect_json(Route::Responses, text).unwrap();
        assert!(!inspected.strip_usage_chunk);
        assert_eq!(inspected.max_output_tokens, Some(50));
    }

    #[test]
    fn largest_max_output_field_wins() {
        let text = r#"{"model":"m","max_tokens":100,"max_completion_tokens":300}"#;
        let inspected = inspect_json(Route::ChatCompletions, text).unwrap();
        assert_eq!(inspected.max_output_tokens, Some(300));
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            (r#"{"model":5}"#, "model"),
            (r#"{"messages":[]}"#, "model"),
            (r#"{"model":"m","stream":"yes"}"#, "stream"),
            (r#"{"model":"m","max_tokens":0}"#, "max_tokens"),
            (r#"{"model":"m","max_tokens":-3}"#, "max_tokens"),
            (
                r#"{"model":"m","max_completion_tokens":1.5}"#,
                "max_completion_tokens",
            ),
            (
                r#"{"model":"m","stream":true,"stream_options":[]}"#,
                "stream_options",
            ),
        ];
        for (text, field) in cases {
            let error = inspect_json(Route::ChatCompletions, text).unwrap_err();
            assert_eq!(param_of(error).as_deref(), Some(field), "{text}");
        }
    }

    #[test]
    fn non_object_bodies_are_rejected() {
        for text in ["[]", "\"text\"", "{", ""] {
            let error = inspect_json(Route::Embeddings, text).unwrap_err();
            assert_eq!(error.status(), 400, "{text}");
        }
    }
}
