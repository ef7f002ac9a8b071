//! Reading a metered request's JSON body: validation of the fields the
//! gateway relies on, the user's policies, the reservation estimate, and the
//! rewrite that asks the upstream for streamed usage.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::api::Route;
use crate::errors::GatewayError;
use crate::estimate;
use crate::policy::{self, Policies};

/// The fields the gateway read from a request body, and the body to forward.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectedRequest {
    pub model: String,
    pub stream: bool,
    /// The largest max output field of the forwarded body, if any; it
    /// applies to each choice.
    pub max_output_tokens: Option<u64>,
    /// Choices the upstream generates: the largest of `n` and `best_of`, 1
    /// when neither is set.
    pub choices: u64,
    /// Input tokens: counted exactly when a `max_input_tokens` check needed
    /// the tokenizer, else estimated.
    pub input_tokens: u64,
    /// True when the gateway added `stream_options.include_usage`, so the
    /// usage-only chunk must be removed from what the client receives.
    pub strip_usage_chunk: bool,
    /// The body to send upstream: the original bytes unless rewritten.
    pub body: Bytes,
}

/// Returns whether [`inspect`] may need the tokenizer for this body, which takes
/// about a millisecond per 10 KB, so the caller can move the work off the
/// request threads.
pub fn needs_token_count(body: &[u8], policies: &Policies) -> bool {
    policies
        .max_input_tokens
        .is_some_and(|limit| body.len() as u64 > limit)
}

/// Validates a metered request, applies the user's policies and returns the
/// body to forward.
pub fn inspect(
    route: Route,
    body: Bytes,
    policies: &Policies,
) -> Result<InspectedRequest, GatewayError> {
    let mut json: Value = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("The request body is not valid JSON: {e}."), None))?;
    let Some(object) = json.as_object_mut() else {
        return Err(invalid(
            "The request body must be a JSON object.".to_string(),
            None,
        ));
    };

    // Validate the fields the gateway reads.
    reject_duplicate_keys(&body)?;
    let model = read_model(object)?;
    let stream = read_stream(object)?;
    read_max_output(route, object)?;
    let choices = read_choices(route, object)?;

    // Apply the policies that decide or rewrite.
    policy::check_model(policies, &model)?;
    let mut changed = false;
    if let Some(rule) = &policies.system_prompt {
        changed |= policy::apply_system_prompt(route, object, rule);
    }
    if let Some(cap) = policies.max_output_tokens {
        changed |= policy::clamp_max_output(route, object, cap);
    }
    let max_output_tokens = read_max_output(route, object)?;
    let streams_chunks = matches!(route, Route::ChatCompletions | Route::Completions);
    let strip_usage_chunk = stream && streams_chunks && add_include_usage(object)?;
    changed |= strip_usage_chunk;

    let body = if changed {
        Bytes::from(serde_json::to_vec(&json).map_err(|_| GatewayError::Internal)?)
    } else {
        body
    };

    // A token is at least one byte, so a body no longer than the limit in
    // bytes is within it; only longer bodies are counted exactly.
    let input_tokens = match policies.max_input_tokens {
        Some(limit) if body.len() as u64 > limit => {
            let tokens = estimate::exact_input_tokens(&json);
            if tokens > limit {
                return Err(GatewayError::ContextLengthExceeded { tokens, limit });
            }
            tokens
        }
        _ => estimate::input_tokens(&json),
    };

    Ok(InspectedRequest {
        model,
        stream,
        max_output_tokens,
        choices,
        input_tokens,
        strip_usage_chunk,
        body,
    })
}

fn read_model(object: &Map<String, Value>) -> Result<String, GatewayError> {
    match object.get("model") {
        Some(Value::String(model)) if !model.is_empty() => Ok(model.clone()),
        Some(Value::String(_)) | None => Err(invalid(
            "Missing required parameter: 'model'.".to_string(),
            Some("model"),
        )),
        Some(other) => Err(invalid(
            format!("'model' must be a string, got {}.", json_type(other)),
            Some("model"),
        )),
    }
}

/// Reads the number of choices generated: `n` (Chat Completions and Completions)
/// and `best_of` (Completions), each a positive integer.
fn read_choices(route: Route, object: &Map<String, Value>) -> Result<u64, GatewayError> {
    let fields: &[&str] = match route {
        Route::ChatCompletions => &["n"],
        Route::Completions => &["n", "best_of"],
        _ => &[],
    };
    let mut choices = 1;
    for field in fields {
        let value = match object.get(*field) {
            None | Some(Value::Null) => continue,
            Some(value) => value,
        };
        let count = value.as_u64().filter(|&count| count > 0).ok_or_else(|| {
            invalid(
                format!("'{field}' must be a positive integer, got {value}."),
                Some(field),
            )
        })?;
        choices = choices.max(count);
    }
    Ok(choices)
}

/// Rejects a repeated top-level key. The gateway reads the last copy of a
/// key and forwards the body as sent, so a provider that reads the first
/// copy could see another `model` or max output than the one checked.
fn reject_duplicate_keys(body: &[u8]) -> Result<(), GatewayError> {
    struct TopLevelKeys;

    impl<'de> serde::Deserialize<'de> for TopLevelKeys {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_map(TopLevelKeys)
        }
    }

    impl<'de> serde::de::Visitor<'de> for TopLevelKeys {
        type Value = TopLevelKeys;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Err(serde::de::Error::custom(format!("duplicate key '{key}'")));
                }
            }
            Ok(TopLevelKeys)
        }
    }

    serde_json::from_slice::<TopLevelKeys>(body)
        .map(|_| ())
        .map_err(|e| {
            let message = e.to_string();
            let key = message
                .split('\'')
                .nth(1)
                .filter(|_| message.starts_with("duplicate key"))
                .map(str::to_string);
            invalid(
                format!("The request body repeats a key: {message}. Send each key once."),
                key.as_deref(),
            )
        })
}

fn read_stream(object: &Map<String, Value>) -> Result<bool, GatewayError> {
    match object.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(stream)) => Ok(*stream),
        Some(other) => Err(invalid(
            format!("'stream' must be a boolean, got {}.", json_type(other)),
            Some("stream"),
        )),
    }
}

/// Reads the largest max output field set, after checking each is a
/// positive integer.
fn read_max_output(route: Route, object: &Map<String, Value>) -> Result<Option<u64>, GatewayError> {
    let mut max_output_tokens: Option<u64> = None;
    for field in policy::max_output_fields(route) {
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
    Ok(max_output_tokens)
}

/// Sets `stream_options.include_usage = true`. Returns whether the body
/// changed, that is whether the client had not asked for usage itself.
fn add_include_usage(object: &mut Map<String, Value>) -> Result<bool, GatewayError> {
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
        inspect(route, Bytes::from(text.to_string()), &Policies::default())
    }

    fn inspect_with(
        route: Route,
        text: &str,
        policies: &Policies,
    ) -> Result<InspectedRequest, GatewayError> {
        inspect(route, Bytes::from(text.to_string()), policies)
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

    #[test]
    fn disallowed_model_is_rejected() {
        let policies = Policies {
            models: Some(policy::ModelList(vec!["gpt-4o-mini".into()])),
            ..Policies::default()
        };
        let error =
            inspect_with(Route::Responses, r#"{"model":"o3","input":"x"}"#, &policies).unwrap_err();
        assert_eq!(error.status(), 403);
        assert!(inspect_with(Route::Responses, r#"{"model":"gpt-4o-mini"}"#, &policies).is_ok());
    }

    #[test]
    fn output_cap_is_forwarded_and_reserved() {
        let policies = Policies {
            max_output_tokens: Some(300),
            ..Policies::default()
        };
        let text = r#"{"model":"m","max_tokens":128000,"messages":[]}"#;
        let inspected = inspect_with(Route::ChatCompletions, text, &policies).unwrap();
        assert_eq!(inspected.max_output_tokens, Some(300));
        let forwarded: Value = serde_json::from_slice(&inspected.body).unwrap();
        assert_eq!(forwarded["max_tokens"], 300);
        assert!(forwarded.get("max_completion_tokens").is_none());
    }

    #[test]
    fn short_body_skips_token_count() {
        let policies = Policies {
            max_input_tokens: Some(1000),
            ..Policies::default()
        };
        let text = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        assert!(!needs_token_count(text.as_bytes(), &policies));
        let inspected = inspect_with(Route::ChatCompletions, text, &policies).unwrap();
        assert_eq!(
            inspected.input_tokens,
            estimate::input_tokens(&serde_json::from_str(text).unwrap())
        );
    }

    #[test]
    fn long_input_is_counted_and_rejected() {
        let policies = Policies {
            max_input_tokens: Some(1000),
            ..Policies::default()
        };
        // "hello " repeats are one token each in o200k_base.
        let under = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "hello ".repeat(900)
        );
        assert!(needs_token_count(under.as_bytes(), &policies));
        let inspected = inspect_with(Route::ChatCompletions, &under, &policies).unwrap();
        assert!(
            (900..=1000).contains(&inspected.input_tokens),
            "{}",
            inspected.input_tokens
        );

        let over = under.replace(&"hello ".repeat(900), &"hello ".repeat(1100));
        let error = inspect_with(Route::ChatCompletions, &over, &policies).unwrap_err();
        match error {
            GatewayError::ContextLengthExceeded { tokens, limit } => {
                assert!(tokens > 1000);
                assert_eq!(limit, 1000);
            }
            other => panic!("expected context_length_exceeded, got {other:?}"),
        }
    }

    #[test]
    fn system_prompt_rule_rewrites_body() {
        let policies = Policies {
            system_prompt: Some(policy::SystemPrompt {
                action: policy::SystemPromptAction::Overwrite,
                content: "Gateway rules.".into(),
            }),
            ..Policies::default()
        };
        let text = r#"{"model":"m","messages":[{"role":"system","content":"mine"},{"role":"user","content":"q"}]}"#;
        let inspected = inspect_with(Route::ChatCompletions, text, &policies).unwrap();
        let forwarded: Value = serde_json::from_slice(&inspected.body).unwrap();
        assert_eq!(forwarded["messages"][0]["content"], "Gateway rules.");
        assert_eq!(forwarded["messages"].as_array().unwrap().len(), 2);
        assert!(!inspected.strip_usage_chunk);
    }

    #[test]
    fn duplicate_top_level_keys_are_rejected() {
        let text = r#"{"model":"gpt-4o","model":"gpt-4o-mini","messages":[]}"#;
        let error = inspect_json(Route::ChatCompletions, text).unwrap_err();
        assert_eq!(param_of(error).as_deref(), Some("model"));

        let nested = r#"{"model":"m","metadata":{"a":1,"b":2},"messages":[]}"#;
        assert!(inspect_json(Route::ChatCompletions, nested).is_ok());
    }

    #[test]
    fn choices_come_from_n_and_best_of() {
        let chat = inspect_json(Route::ChatCompletions, r#"{"model":"m","n":4}"#).unwrap();
        assert_eq!(chat.choices, 4);
        let legacy =
            inspect_json(Route::Completions, r#"{"model":"m","n":2,"best_of":5}"#).unwrap();
        assert_eq!(legacy.choices, 5);
        let responses = inspect_json(Route::Responses, r#"{"model":"m","n":9}"#).unwrap();
        assert_eq!(responses.choices, 1);
        let error = inspect_json(Route::ChatCompletions, r#"{"model":"m","n":0}"#).unwrap_err();
        assert_eq!(param_of(error).as_deref(), Some("n"));
    }
}
