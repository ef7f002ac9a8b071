//! Turning what the upstream sent back into the tokens a request is charged.

use crate::api::Route;
use crate::estimate;
use crate::usage::stream::{StreamApi, StreamMeter};
use crate::usage::{JsonUsageScanner, Usage, UsageSource};

/// Parses usage from a response body as it passes through.
pub enum ResponseMeter {
    /// Nothing to meter: an error status, or an unmetered route.
    Off,
    /// A successful body the gateway cannot read, such as one compressed
    /// although identity encoding was requested.
    Unreadable,
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

/// The facts about an exchange that decide its charge, taken when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// The upstream's response status, if a response header arrived.
    pub upstream_status: Option<u16>,
    pub input_estimate: u64,
    /// Tokens the request reserved.
    pub reserved: u64,
    /// Whether the whole request reached the upstream.
    pub request_sent: bool,
    /// Whether the exchange ended because the client went away.
    pub client_gone: bool,
}

/// Decides the charge once the exchange is over.
///
/// `None` releases the reservation: the request never reached the
/// upstream, the upstream failed before responding, or it responded with an
/// error status. A successful response is charged the usage it reported.
/// Without reported usage:
/// - a stream is charged the input estimate plus the output seen in its
///   deltas, which covers streams cut by the upstream and clients that
///   disconnect mid-stream;
/// - any other response is charged the whole reservation, because its
///   output is unknown, and so is a request whose client left before the
///   upstream answered, since the provider goes on generating it.
pub fn settle_charge(exchange: Exchange, meter: &mut ResponseMeter) -> Option<Charge> {
    let Some(status) = exchange.upstream_status else {
        return (exchange.request_sent && exchange.client_gone)
            .then(|| Charge::estimated(exchange.reserved));
    };
    if !(200..300).contains(&status) {
        return None;
    }

    match meter {
        ResponseMeter::Off => None,
        ResponseMeter::Unreadable => Some(Charge::estimated(exchange.reserved)),
        ResponseMeter::Json(scanner) => Some(match scanner.finish() {
            Some(usage) => Charge::reported(usage),
            None => Charge::estimated(exchange.reserved),
        }),
        ResponseMeter::Stream(stream) => Some(match stream.usage() {
            Some(usage) => Charge::reported(usage),
            None => Charge::estimated(
                exchange.input_estimate + estimate::output_tokens(stream.output_bytes()),
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXCHANGE: Exchange = Exchange {
        upstream_status: Some(200),
        input_estimate: 40,
        reserved: 140,
        request_sent: true,
        client_gone: false,
    };

    fn charged(exchange: Exchange, meter: &mut ResponseMeter) -> Option<(u64, UsageSource)> {
        settle_charge(exchange, meter).map(|charge| (charge.tokens, charge.source))
    }

    #[test]
    fn json_usage_is_charged_as_reported() {
        let mut meter = ResponseMeter::Json(JsonUsageScanner::new());
        if let ResponseMeter::Json(scanner) = &mut meter {
            scanner
                .push(br#"{"usage":{"prompt_tokens":30,"completion_tokens":5,"total_tokens":35}}"#);
        }
        assert_eq!(
            charged(EXCHANGE, &mut meter),
            Some((35, UsageSource::Reported))
        );
    }

    #[test]
    fn json_without_usage_is_charged_the_reservation() {
        let mut meter = ResponseMeter::Json(JsonUsageScanner::new());
        if let ResponseMeter::Json(scanner) = &mut meter {
            scanner.push(br#"{"choices":[]}"#);
        }
        assert_eq!(
            charged(EXCHANGE, &mut meter),
            Some((140, UsageSource::Estimated))
        );
        let mut unreadable = ResponseMeter::Unreadable;
        assert_eq!(
            charged(EXCHANGE, &mut unreadable),
            Some((140, UsageSource::Estimated))
        );
    }

    #[test]
    fn stream_without_usage_charges_estimate() {
        let mut meter = ResponseMeter::for_response(Route::ChatCompletions, true, false);
        if let ResponseMeter::Stream(stream) = &mut meter {
            stream.push(
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"12345678\"}}]}\n\n",
            );
        }
        assert_eq!(
            charged(EXCHANGE, &mut meter),
            Some((42, UsageSource::Estimated))
        );
    }

    #[test]
    fn client_gone_before_answer_is_charged_the_reservation() {
        let gone = Exchange {
            upstream_status: None,
            client_gone: true,
            ..EXCHANGE
        };
        assert_eq!(
            charged(gone, &mut ResponseMeter::Off),
            Some((140, UsageSource::Estimated))
        );

        let never_sent = Exchange {
            request_sent: false,
            ..gone
        };
        assert_eq!(charged(never_sent, &mut ResponseMeter::Off), None);

        let upstream_failed = Exchange {
            client_gone: false,
            ..gone
        };
        assert_eq!(charged(upstream_failed, &mut ResponseMeter::Off), None);
    }

    #[test]
    fn error_status_releases() {
        let error = Exchange {
            upstream_status: Some(429),
            ..EXCHANGE
        };
        let mut meter = ResponseMeter::Json(JsonUsageScanner::new());
        assert_eq!(charged(error, &mut meter), None);
    }
}
