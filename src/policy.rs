//! Request policies: the model allow-list, input and output token limits,
//! the system prompt rule, and request-rate and concurrency limits.
//!
//! Policies are set gateway-wide and overridden per user, field by field.
//! This module contains the types and the rewrites of a JSON request body; the
//! rate and concurrency counters live in [`crate::limits`].

use serde_json::{Map, Value};

use crate::api::Route;
use crate::errors::GatewayError;

/// The policies in force for one user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    /// Models the user may call; `None` allows every model.
    pub models: Option<ModelList>,
    /// Largest input, in tokens, a request may carry.
    pub max_input_tokens: Option<u64>,
    /// Largest output, in tokens, a request may ask for; inserted when the
    /// request sets none.
    pub max_output_tokens: Option<u64>,
    pub system_prompt: Option<SystemPrompt>,
    pub requests_per_minute: Option<u32>,
    pub max_concurrent_requests: Option<u32>,
}

impl Policies {
    /// `self` with every field that `overrides` sets replaced.
    pub fn overridden_by(&self, overrides: &Policies) -> Policies {
        Policies {
            models: overrides.models.clone().or_else(|| self.models.clone()),
            max_input_tokens: overrides.max_input_tokens.or(self.max_input_tokens),
            max_output_tokens: overrides.max_output_tokens.or(self.max_output_tokens),
            system_prompt: overrides
                .system_prompt
                .clone()
                .or_else(|| self.system_prompt.clone()),
            requests_per_minute: overrides.requests_per_minute.or(self.requests_per_minute),
            max_concurrent_requests: overrides
                .max_concurrent_requests
                .or(self.max_concurrent_requests),
        }
    }
}

/// A model allow-list. An entry ending in `*` matches every model name that
/// starts with the part before it; `*` alone matches every model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelList(pub Vec<String>);

impl ModelList {
    pub fn allows(&self, model: &str) -> bool {
        self.0.iter().any(|entry| match entry.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => entry == model,
        })
    }
}

/// The action taken on the system prompt of each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemPromptAction {
    /// Drop the client's system and developer instructions.
    Remove,
    /// Replace the client's instructions with the configured content.
    Overwrite,
    /// Put the configured content after the client's instructions.
    Append,
    /// Put the configured content before the client's instructions.
    Prepend,
}

impl SystemPromptAction {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "remove" => Some(SystemPromptAction::Remove),
            "overwrite" => Some(SystemPromptAction::Overwrite),
            "append" => Some(SystemPromptAction::Append),
            "prepend" => Some(SystemPromptAction::Prepend),
            _ => None,
        }
    }
}

/// The system prompt rule: an action and, except for `remove`, its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPrompt {
    pub action: SystemPromptAction,
    pub content: String,
}

/// Rejects a model the user may not call.
pub fn check_model(policies: &Policies, model: &str) -> Result<(), GatewayError> {
    match &policies.models {
        Some(list) if !list.allows(model) => Err(GatewayError::ModelNotAllowed {
            model: model.to_string(),
            allowed: list.0.clone(),
        }),
        _ => Ok(()),
    }
}

/// Max output fields of each API that may carry a client's cap.
pub fn max_output_fields(route: Route) -> &'static [&'static str] {
    match route {
        Route::ChatCompletions => &["max_completion_tokens", "max_tokens"],
        Route::Completions => &["max_tokens"],
        Route::Responses => &["max_output_tokens"],
        _ => &[],
    }
}

/// Inserts or lowers the max output field so no field exceeds `cap`.
///
/// Chat Completions gets `max_completion_tokens` (the current field), and a
/// client's older `max_tokens` is lowered too; Responses gets
/// `max_output_tokens`; legacy Completions gets `max_tokens`. Returns
/// whether the body changed.
pub fn clamp_max_output(route: Route, body: &mut Map<String, Value>, cap: u64) -> bool {
    let fields = max_output_fields(route);
    let Some(primary) = fields.first() else {
        return false;
    };

    let mut changed = false;
    let mut any_set = false;
    for field in fields {
        if let Some(current) = body.get(*field).and_then(Value::as_u64) {
            any_set = true;
            if current > cap {
                body.insert(field.to_string(), Value::from(cap));
                changed = true;
            }
        }
    }
    if !any_set {
        body.insert(primary.to_string(), Value::from(cap));
        changed = true;
    }
    changed
}

/// Applies the system prompt rule. Returns whether the body changed.
pub fn apply_system_prompt(
    route: Route,
    body: &mut Map<String, Value>,
    rule: &SystemPrompt,
) -> bool {
    match route {
        Route::ChatCompletions => rewrite_chat_messages(body, rule),
        Route::Responses => rewrite_responses_instructions(body, rule),
        _ => false,
    }
}

fn is_instruction_message(message: &Value) -> bool {
    matches!(
        message.get("role").and_then(Value::as_str),
        Some("system" | "developer")
    )
}

fn system_message(content: &str) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), Value::from("system"));
    message.insert("content".into(), Value::from(content));
    Value::Object(message)
}

/// Chat Completions: instructions are the `system` and `developer` messages.
fn rewrite_chat_messages(body: &mut Map<String, Value>, rule: &SystemPrompt) -> bool {
    let Some(messages) = body.get_mut("messages").and_then(Value::as_array_mut) else {
        return false;
    };

    match rule.action {
        SystemPromptAction::Remove => {
            let before = messages.len();
            messages.retain(|message| !is_instruction_message(message));
            messages.len() != before
        }
        SystemPromptAction::Overwrite => {
            messages.retain(|message| !is_instruction_message(message));
            messages.insert(0, system_message(&rule.content));
            true
        }
        SystemPromptAction::Prepend => {
            messages.insert(0, system_message(&rule.content));
            true
        }
        SystemPromptAction::Append => {
            // After the leading instructions, before the conversation.
            let position = messages
                .iter()
                .take_while(|message| is_instruction_message(message))
                .count();
            messages.insert(position, system_message(&rule.content));
            true
        }
    }
}

/// Responses: instructions are the `instructions` field, and `system` or
/// `developer` messages in an `input` list.
fn rewrite_responses_instructions(body: &mut Map<String, Value>, rule: &SystemPrompt) -> bool {
    let joined = |first: &str, second: &str| {
        if first.is_empty() {
            second.to_string()
        } else if second.is_empty() {
            first.to_string()
        } else {
            format!("{first}\n\n{second}")
        }
    };
    let existing = body
        .get("instructions")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();

    match rule.action {
        SystemPromptAction::Remove | SystemPromptAction::Overwrite => {
            let mut changed = body.remove("instructions").is_some();
            if let Some(items) = body.get_mut("input").and_then(Value::as_array_mut) {
                let before = items.len();
                items.retain(|item| !is_instruction_message(item));
                changed |= items.len() != before;
            }
            if rule.action == SystemPromptAction::Overwrite {
                body.insert("instructions".into(), Value::from(rule.content.as_str()));
                changed = true;
            }
            changed
        }
        SystemPromptAction::Prepend => {
            body.insert(
                "instructions".into(),
                Value::from(joined(&rule.content, &existing)),
            );
            true
        }
        SystemPromptAction::Append => {
            body.insert(
                "instructions".into(),
                Value::from(joined(&existing, &rule.content)),
            );
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn rule(action: SystemPromptAction) -> SystemPrompt {
        SystemPrompt {
            action,
            content: "Be brief.".into(),
        }
    }

    #[test]
    fn model_list_matches_exact_and_prefix() {
        let list = ModelList(vec!["gpt-4o-mini".into(), "gpt-5*".into()]);
        assert!(list.allows("gpt-4o-mini"));
        assert!(list.allows("gpt-5-codex"));
        assert!(!list.allows("gpt-4o"));
        assert!(!list.allows("o3"));
        assert!(ModelList(vec!["*".into()]).allows("anything"));
    }

    #[test]
    fn check_model_names_allowed_models() {
        let policies = Policies {
            models: Some(ModelList(vec!["gpt-4o-mini".into()])),
            ..Policies::default()
        };
        assert!(check_model(&policies, "gpt-4o-mini").is_ok());
        let error = check_model(&policies, "o3").unwrap_err();
        assert_eq!(error.status(), 403);
        assert!(check_model(&Policies::default(), "o3").is_ok());
    }

    #[test]
    fn user_overrides_replace_fields() {
        let gateway = Policies {
            models: Some(ModelList(vec!["a".into()])),
            max_output_tokens: Some(100),
            requests_per_minute: Some(10),
            ..Policies::default()
        };
        let user = Policies {
            max_output_tokens: Some(500),
            ..Policies::default()
        };
        let effective = gateway.overridden_by(&user);
        assert_eq!(effective.max_output_tokens, Some(500));
        assert_eq!(effective.models, gateway.models);
        assert_eq!(effective.requests_per_minute, Some(10));
    }

    #[test]
    fn max_output_is_inserted_in_api_field() {
        let mut chat = object(json!({"model": "m"}));
        assert!(clamp_max_output(Route::ChatCompletions, &mut chat, 256));
        assert_eq!(chat["max_completion_tokens"], 256);
        assert!(!chat.contains_key("max_tokens"));

        let mut responses = object(json!({"model": "m"}));
        assert!(clamp_max_output(Route::Responses, &mut responses, 256));
        assert_eq!(responses["max_output_tokens"], 256);

        let mut legacy = object(json!({"model": "m"}));
        assert!(clamp_max_output(Route::Completions, &mut legacy, 256));
        assert_eq!(legacy["max_tokens"], 256);
    }

    #[test]
    fn max_output_is_clamped_in_every_field() {
        let mut chat =
            object(json!({"model": "m", "max_tokens": 128000, "max_completion_tokens": 50}));
        assert!(clamp_max_output(Route::ChatCompletions, &mut chat, 256));
        assert_eq!(chat["max_tokens"], 256);
        assert_eq!(chat["max_completion_tokens"], 50);
        assert!(!chat.contains_key("max_output_tokens"));

        let mut under = object(json!({"model": "m", "max_output_tokens": 10}));
        assert!(!clamp_max_output(Route::Responses, &mut under, 256));
        assert_eq!(under["max_output_tokens"], 10);
    }

    #[test]
    fn embeddings_have_no_output_field() {
        let mut body = object(json!({"model": "m", "input": "x"}));
        assert!(!clamp_max_output(Route::Embeddings, &mut body, 256));
        assert!(!body.contains_key("max_tokens"));
    }

    fn chat_with_instructions() -> Map<String, Value> {
        object(json!({"model": "m", "messages": [
            {"role": "system", "content": "client system"},
            {"role": "developer", "content": "client developer"},
            {"role": "user", "content": "question"},
        ]}))
    }

    fn roles_and_contents(body: &Map<String, Value>) -> Vec<(String, String)> {
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_string(),
                    m["content"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn chat_system_prompt_actions() {
        let cases = [
            (SystemPromptAction::Remove, vec![("user", "question")]),
            (
                SystemPromptAction::Overwrite,
                vec![("system", "Be brief."), ("user", "question")],
            ),
            (
                SystemPromptAction::Prepend,
                vec![
                    ("system", "Be brief."),
                    ("system", "client system"),
                    ("developer", "client developer"),
                    ("user", "question"),
                ],
            ),
            (
                SystemPromptAction::Append,
                vec![
                    ("system", "client system"),
                    ("developer", "client developer"),
                    ("system", "Be brief."),
                    ("user", "question"),
                ],
            ),
        ];
        for (action, expected) in cases {
            let mut body = chat_with_instructions();
            assert!(apply_system_prompt(
                Route::ChatCompletions,
                &mut body,
                &rule(action)
            ));
            let expected: Vec<(String, String)> = expected
                .into_iter()
                .map(|(role, content)| (role.to_string(), content.to_string()))
                .collect();
            assert_eq!(roles_and_contents(&body), expected, "{action:?}");
        }
    }

    #[test]
    fn responses_system_prompt_actions() {
        let body = || {
            object(json!({"model": "m", "instructions": "client", "input": [
                {"role": "developer", "content": "dev note"},
                {"role": "user", "content": "question"},
            ]}))
        };

        let mut removed = body();
        apply_system_prompt(
            Route::Responses,
            &mut removed,
            &rule(SystemPromptAction::Remove),
        );
        assert!(!removed.contains_key("instructions"));
        assert_eq!(removed["input"].as_array().unwrap().len(), 1);

        let mut overwritten = body();
        apply_system_prompt(
            Route::Responses,
            &mut overwritten,
            &rule(SystemPromptAction::Overwrite),
        );
        assert_eq!(overwritten["instructions"], "Be brief.");
        assert_eq!(overwritten["input"].as_array().unwrap().len(), 1);

        let mut prepended = body();
        apply_system_prompt(
            Route::Responses,
            &mut prepended,
            &rule(SystemPromptAction::Prepend),
        );
        assert_eq!(prepended["instructions"], "Be brief.\n\nclient");

        let mut appended = body();
        apply_system_prompt(
            Route::Responses,
            &mut appended,
            &rule(SystemPromptAction::Append),
        );
        assert_eq!(appended["instructions"], "client\n\nBe brief.");

        let mut no_instructions = object(json!({"model": "m", "input": "hi"}));
        apply_system_prompt(
            Route::Responses,
            &mut no_instructions,
            &rule(SystemPromptAction::Append),
        );
        assert_eq!(no_instructions["instructions"], "Be brief.");
    }
}
