//! Turning what the upstream sent back into the tokens a request is charged.

use crate::api::Route;
use crate::estimate;
use crate::usage::stream::{StreamApi, StreamMeter};
use crate::usage::{JsonUsageScanner, Usage, UsageSource};

/// Parses usage from a response body as it passes through.
pub enum ResponseMeter {
    /// Nothing to meter: an error status, or an unmetered route.
    Off,
    Json(JsonUsageScanner),
    Stream(StreamMeter),
}

impl ResponseMeter {
    /// Chooses the meter for a successful response of `route`.
    pub fn for_response(route: Route, event_stream: bool, strip_usage_chunk: bool) -> Self {
        let api = match route {
            Route::ChatCompletions => StreamApi::ChatCompletions,
            Route::Completions => StreamApi::Completions,
            Route::Responses => StreamApi::Responses,
            Route::Embeddings => return ResponseMeter::Json(JsonUsageScanner::new()),
            Route::Models | Route::GatewayUsage => return ResponseMeter::Off,
        };
        if event_stream {
            ResponseMeter::Stream(StreamMeter::new(api, strip_usage_chunk))
        } else {
            ResponseMeter::Json(JsonUsageScanner::new())
        }
    }
}

/// The tokens to charge for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub tokens: u64,
    /// The provider's numbers, when it reported them.
    pub usage: Option<Usage>,
    pub source: UsageSource,
}

impl Charge {
    fn reported(usage: Usage) -> Self {
        Charge {
            tokens: usage.charged_tokens(),
            usage: Some(usage),
            source: UsageSource::Reported,
        }
    }

    fn estimated(tokens: u64) -> Self {
        Charge {
            tokens,
            usage: None,
            source: UsageSource::Estimated,
        }
    }
}

/// Decides the charge once the exchange is over.
///
/// `None` releases the reservation: no upstream response, or an upstream
/// error status. A successful response is charged the usage it reported, or
/// else the input estimate plus the output seen so far, which covers streams
/// cut by the upstream and clients that disconnect mid-stream.
pub fn settle_charge(
    upstream_status: Option<u16>,
    input_estimate: u64,
    meter: &mut ResponseMeter,
) -> Option<Charge> {
    let status = upstream_status?;
    if !(200..300).contains(&status) {
        return None;
    }

    match meter {
        ResponseMeter::Off => None,
        ResponseMeter::Json(scanner) => Some(match scanner.finish() {
            Some(usage) => Charge::reported(usage),
            None => Charge::estimated(input_estimate),
        }),
        ResponseMeter::Stream(stream) => Some(match stream.usage() {
            Some(usage) => Charge::reported(usage),
            None => {
                Charge::estimated(input_estimate + estimate::output_tokens(stream.output_chars()))
            }
        }),
    }
}
