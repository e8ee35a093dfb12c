//! What a request body means: the envelope every server shares, and the
//! [`Codec`] that reads the rest into the runtime's input type.

use std::str::FromStr;
use std::time::{Duration, Instant};

use convoy::{Priority, Request};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Turns a request body into a runtime input, and an output into JSON.
///
/// The router reads the envelope (`priority`, `deadline_ms`, `tenant`,
/// `dedup_key`) itself and hands the codec every other field of the body's
/// JSON object. The codec builds the [`Request`] (with its cost, for
/// example `.tokens(n)`), or refuses it with an [`ApiError`] (422 for a
/// field it does not know or a value out of range, 413 for too large).
///
/// ```
/// use convoy::Request;
/// use convoy_server::{ApiError, Codec};
/// use serde_json::{Map, Value};
///
/// /// `{"text": "…"}` in, its length out.
/// struct Lengths;
///
/// impl Codec for Lengths {
///     type Input = String;
///     type Output = usize;
///     fn decode(&self, mut fields: Map<String, Value>) -> Result<Request<String>, ApiError> {
///         let Some(Value::String(text)) = fields.remove("text") else {
///             return Err(ApiError::unprocessable("give \"text\" as a string"));
///         };
///         if let Some(extra) = fields.keys().next() {
///             return Err(ApiError::unprocessable(format!("unknown field \"{extra}\"")));
///         }
///         Ok(Request::new(text))
///     }
///     fn encode(&self, output: usize) -> Result<Value, ApiError> {
///         Ok(Value::from(output))
///     }
/// }
///
/// let mut body = Map::new();
/// body.insert("text".into(), "hello".into());
/// assert_eq!(Lengths.decode(body).unwrap().input(), "hello");
/// ```
pub trait Codec: Send + Sync + 'static {
    /// The runtime's input type.
    type Input: Send + 'static;
    /// The runtime's output type.
    type Output: Send + 'static;

    /// Builds the request from the body's fields other than the envelope.
    fn decode(&self, fields: Map<String, Value>) -> Result<Request<Self::Input>, ApiError>;

    /// The JSON of one output: the value of the answer's `"output"`, or an
    /// error (an output JSON cannot carry, such as a NaN, is a 500 that
    /// says so rather than a `null`).
    fn encode(&self, output: Self::Output) -> Result<Value, ApiError>;
}

/// The latest deadline a request may ask for: an hour.
pub const MAX_DEADLINE_MS: f64 = 3.6e6;

/// The fields every request may carry, whatever its codec.
#[derive(Debug, Default)]
pub(crate) struct Envelope {
    pub priority: Option<Priority>,
    pub deadline: Option<Duration>,
    pub tenant: Option<String>,
    pub dedup_key: Option<String>,
}

/// Takes the envelope's fields out of `fields`, checking each.
pub(crate) fn take_envelope(fields: &mut Map<String, Value>) -> Result<Envelope, ApiError> {
    let mut env = Envelope::default();
    match fields.remove("priority") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) => env.priority = Some(parse_priority(&name)?),
        Some(Value::Number(n)) => {
            let level = n.to_string();
            env.priority = Some(Priority::from_str(&level).map_err(|_| bad_priority(&level))?);
        }
        Some(other) => return Err(bad_priority(&other.to_string())),
    }
    match fields.remove("deadline_ms") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => {
            let ms = n.as_f64().unwrap_or(f64::NAN);
            if !(ms.is_finite() && ms > 0.0 && ms <= MAX_DEADLINE_MS) {
                return Err(ApiError::unprocessable(format!(
                    "deadline_ms must be a number of milliseconds above 0 and at most {MAX_DEADLINE_MS}, got {n}"
                )));
            }
            env.deadline = Some(Duration::from_secs_f64(ms / 1e3));
        }
        Some(other) => {
            return Err(ApiError::unprocessable(format!(
                "deadline_ms must be a number of milliseconds, got {other}"
            )))
        }
    }
    env.tenant = string_field(fields, "tenant")?;
    env.dedup_key = string_field(fields, "dedup_key")?;
    Ok(env)
}

fn string_field(fields: &mut Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match fields.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::unprocessable(format!(
            "{key} must be a string, got {other}"
        ))),
    }
}

/// A priority as a client writes it: a name, any case, or a level 0–4.
pub(crate) fn parse_priority(given: &str) -> Result<Priority, ApiError> {
    Priority::from_str(&given.trim().to_ascii_lowercase()).map_err(|_| bad_priority(given))
}

fn bad_priority(given: &str) -> ApiError {
    ApiError::unprocessable(format!(
        "unknown priority \"{given}\": give a name (critical, high, normal, low, background) \
         or a level from 0 (critical) to 4 (background)"
    ))
}

/// Applies the envelope to the codec's request, received at `received`:
/// its deadline counts from then, as its client's clock does.
pub(crate) fn apply<I>(mut request: Request<I>, env: Envelope, received: Instant) -> Request<I> {
    request = request.received_at(received);
    if let Some(p) = env.priority {
        request = request.priority(p);
    }
    if let Some(d) = env.deadline {
        request = request.deadline_at(received + d);
    }
    if let Some(key) = env.dedup_key {
        // The tenant is part of the key: tenants never share results.
        request = request.dedup_key((env.tenant.as_deref().unwrap_or(""), key));
    }
    if let Some(tenant) = env.tenant {
        request = request.tenant(tenant);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("tests pass objects"),
        }
    }

    #[test]
    fn the_envelope_is_taken_out_and_the_rest_left_for_the_codec() {
        let mut f = fields(serde_json::json!({
            "priority": "high", "deadline_ms": 250, "tenant": "a", "dedup_key": "k", "tokens": [1]
        }));
        let env = take_envelope(&mut f).unwrap();
        assert_eq!(env.priority, Some(Priority::High));
        assert_eq!(env.deadline, Some(Duration::from_millis(250)));
        assert_eq!(env.tenant.as_deref(), Some("a"));
        assert_eq!(env.dedup_key.as_deref(), Some("k"));
        assert_eq!(f.keys().collect::<Vec<_>>(), ["tokens"]);
    }

    #[test]
    fn a_bad_envelope_is_a_422_in_plain_words() {
        for body in [
            serde_json::json!({"priority": "urgent"}),
            serde_json::json!({"priority": 7}),
            serde_json::json!({"priority": [1]}),
            serde_json::json!({"deadline_ms": 0}),
            serde_json::json!({"deadline_ms": -5}),
            serde_json::json!({"deadline_ms": "soon"}),
            serde_json::json!({"deadline_ms": 1e300}),
            serde_json::json!({"tenant": 5}),
        ] {
            let e = take_envelope(&mut fields(body.clone())).unwrap_err();
            assert_eq!(
                e.status(),
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "{body}"
            );
            assert!(!e.message().contains("enum"), "{}", e.message());
        }
    }
}
