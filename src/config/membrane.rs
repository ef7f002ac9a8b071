//! The Membrane `llmGateway` format, mapped onto the native settings so an
//! existing Membrane file loads unchanged.
//!
//! ```yaml
//! api:
//!   port: 2000
//!   flow:
//!   - llmGateway:
//!       apiKey: ${OPENAI_API_KEY}
//!       openai: {}
//!       simpleStore:
//!         users:
//!         - name: alice
//!           apiKey: secret
//!           tokens: 100000
//!         limitResetPeriod: 3600
//!       policies:                 # optional
//!         models: [gpt-4o-mini]
//!         maxInputTokens: 100000
//!         maxOutputTokens: 4096
//!       systemPrompt:             # optional, also accepted inside policies
//!         action: prepend
//!         content: Answer in English.
//!   target:
//!     url: https://api.openai.com/
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::file::defaults;
use super::values::{self, ConfigDuration};
use super::{
    deserialize_with_path, policies_from_parts, resolve_secret, without_zero_limits, AdminSettings,
    Budgets, Config, Limits, LogSettings, PolicyParts, ServerSettings, StateSettings, Upstream,
    UpstreamUrl, User,
};
use crate::keys::KeyDigest;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    api: Api,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Api {
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default)]
    flow: Vec<FlowStep>,
    target: Target,
}

fn default_port() -> u16 {
    2000
}

/// One step of `api.flow`; `llmGateway` is the only step kind tollgate runs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowStep {
    #[serde(rename = "llmGateway")]
    llm_gateway: LlmGateway,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LlmGateway {
    api_key: Option<String>,
    /// Provider options; the OpenAI block has no settings of its own yet.
    #[serde(default)]
    openai: Option<BTreeMap<String, serde_yaml::Value>>,
    #[serde(default)]
    policies: MembranePolicies,
    system_prompt: Option<MembraneSystemPrompt>,
    simple_store: SimpleStore,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MembranePolicies {
    models: Option<Vec<String>>,
    max_input_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    system_prompt: Option<MembraneSystemPrompt>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembraneSystemPrompt {
    action: String,
    content: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SimpleStore {
    #[serde(default)]
    users: Vec<StoreUser>,
    limit_reset_period: Option<ConfigDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StoreUser {
    name: String,
    api_key: String,
    tokens: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    url: String,
}

pub(super) fn parse(text: &str) -> Result<Config, String> {
    let file: File = deserialize_with_path(text)?;

    let mut gateways = file.api.flow.iter().map(|step| &step.llm_gateway);
    let gateway = gateways
        .next()
        .ok_or("api.flow: an llmGateway step is required")?;
    if gateways.next().is_some() {
        return Err("api.flow: only one llmGateway step is supported".into());
    }
    if let Some(options) = &gateway.openai {
        if let Some(key) = options.keys().next() {
            return Err(format!(
                "api.flow[0].llmGateway.openai.{key}: unknown setting; the openai block takes no settings"
            ));
        }
    }

    let gateway_path = "api.flow[0].llmGateway";
    let system_prompt = match (&gateway.system_prompt, &gateway.policies.system_prompt) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{gateway_path}: systemPrompt is set both in the step and in its policies; \
                 keep only one"
            ))
        }
        (rule, None) | (None, rule) => rule.as_ref(),
    };
    let policies = without_zero_limits(policies_from_parts(
        PolicyParts {
            models: gateway.policies.models.as_deref(),
            max_input_tokens: gateway.policies.max_input_tokens,
            max_output_tokens: gateway.policies.max_output_tokens,
            system_prompt: system_prompt
                .map(|rule| (rule.action.as_str(), rule.content.as_deref())),
            requests_per_minute: None,
            max_concurrent_requests: None,
        },
        &format!("{gateway_path}.policies"),
    )?);
    let reset_period = gateway
        .simple_store
        .limit_reset_period
        .map_or(defaults::RESET_PERIOD, |d| d.0);

    let users = gateway
        .simple_store
        .users
        .iter()
        .enumerate()
        .map(|(index, user)| {
            let key_path = format!("{gateway_path}.simpleStore.users[{index}].apiKey");
            values::reject_placeholder(&user.api_key, &key_path)?;
            let key = values::expand_env(&user.api_key, &key_path)?;
            if key.is_empty() {
                return Err(format!("{key_path}: the key is empty"));
            }
            values::check_key_characters(&key, &key_path)?;
            Ok(User {
                name: user.name.clone(),
                key_digest: KeyDigest::of(&key),
                tokens: user.tokens.filter(|&tokens| tokens > 0),
                reset_period,
                policies: policies.clone(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;

    let target_url = values::expand_env(&file.api.target.url, "api.target.url")?;
    let upstream = Upstream {
        url: UpstreamUrl::parse(&target_url, "api.target.url")?,
        api_key: resolve_secret(
            gateway.api_key.as_deref(),
            None,
            &format!("{gateway_path}.apiKey"),
            &format!("{gateway_path}.apiKey (as ${{VAR}})"),
        )?,
        connect_timeout: defaults::CONNECT_TIMEOUT,
        read_timeout: defaults::READ_TIMEOUT,
        request_timeout: defaults::REQUEST_TIMEOUT,
        pool_idle_timeout: defaults::POOL_IDLE_TIMEOUT,
        ca_file: None,
    };

    Ok(Config {
        listen: vec![format!("0.0.0.0:{}", file.api.port)],
        upstream,
        budgets: Budgets {
            reset_period,
            default_max_output_tokens: defaults::DEFAULT_MAX_OUTPUT_TOKENS,
        },
        limits: Limits {
            max_request_body_bytes: defaults::MAX_REQUEST_BODY_BYTES,
            failed_keys_per_minute: defaults::FAILED_KEYS_PER_MINUTE,
        },
        policies,
        users,
        server: ServerSettings::default(),
        admin: AdminSettings::default(),
        log: LogSettings::default(),
        state: StateSettings::default(),
    })
}
