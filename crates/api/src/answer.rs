//! What the API's answers mean, as pure functions of status, headers and
//! body, so they can be table-tested and fuzzed without a server.

use std::time::Duration;

use serde_json::Value;

use super::ApiError;

/// What an error body says: the `message` of a JSON error (the public
/// API's `{error, code, message}`), else the start of the text.
pub(super) fn error_text(body: &str) -> String {
    let message = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        let m = v.get("message")?.as_str()?.to_owned();
        Some(match v.get("code").and_then(Value::as_i64) {
            Some(code) => format!("{m} (code {code})"),
            None => m,
        })
    });
    excerpt(message.as_deref().unwrap_or(body))
}

pub(super) fn excerpt(s: &str) -> String {
    let t: String = s.chars().take(200).collect();
    if t.len() < s.len() {
        format!("{t}…")
    } else {
        t
    }
}

/// An error for any status but 2xx and 304.
pub(super) fn check(a: Answer) -> Result<Answer, ApiError> {
    match a.status {
        200..=299 | 304 => Ok(a),
        401 | 403 => Err(ApiError::Unauthorized {
            what: a.what,
            status: a.status,
            body: error_text(&a.text),
        }),
        s => Err(ApiError::Status {
            what: a.what,
            status: s,
            body: error_text(&a.text),
            retry_after: a.retry_after,
        }),
    }
}

/// One answer of the API, as far as the client reads it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The ETag header.
    pub etag: Option<String>,
    /// The Retry-After header, when it is a number of seconds.
    pub retry_after: Option<Duration>,
    /// The Content-Type header ("" when absent).
    pub content_type: String,
    /// The body, at most [`MAX_BODY`] bytes.
    pub text: String,
    /// Method and path, for messages.
    pub what: String,
}

/// Where the public API serves one load balancer (the identifier follows).
pub const PUBLIC_LB_PATH: &str = "/api/v1/lb/";
/// Where the public API lists the account's DNS zones.
pub const ZONES_PATH: &str = "/apps/v2/domains";

/// What a public-API answer means: the `data` of `{"error": false, "data":
/// …}`, `None` for 304, or why not. A 2xx whose body says `"error": true`
/// is an error, as VPSie's newest SDK treats it. Keys match in any case,
/// as Go's decoder matches them. Pure, so it can be fuzzed.
pub fn public_answer(a: Answer) -> Result<Option<Value>, ApiError> {
    let Some((v, what)) = json_body(a)? else {
        return Ok(None);
    };
    let body_error = |reason: String| ApiError::Body {
        what: what.clone(),
        reason,
    };
    let Value::Object(map) = v else {
        return Err(body_error(
            "the answer is not an {error, data} object".into(),
        ));
    };
    let field = |key: &str| {
        map.iter()
            .find(|(k, v)| k.eq_ignore_ascii_case(key) && !v.is_null())
            .map(|(_, v)| v)
    };
    if field("error").is_some_and(|e| e == true || e == 1) {
        let message = field("message")
            .and_then(Value::as_str)
            .filter(|m| !m.trim().is_empty())
            .unwrap_or("error: true without a message");
        return Err(ApiError::Reported {
            what: what.clone(),
            message: excerpt(message),
        });
    }
    match field("data") {
        Some(data) => Ok(Some(data.clone())),
        None => Err(body_error("the answer has no data".into())),
    }
}

/// The JSON of a 2xx answer with its method and path, `None` for 304, or
/// why it is unusable (error status, another content type, bad JSON).
fn json_body(a: Answer) -> Result<Option<(Value, String)>, ApiError> {
    let a = check(a)?;
    if a.status == 304 {
        return Ok(None);
    }
    let body_error = |reason: String| ApiError::Body {
        what: a.what.clone(),
        reason,
    };
    if !a.content_type.starts_with("application/json") {
        return Err(body_error(format!(
            "content type {:?}, expected application/json",
            excerpt(&a.content_type)
        )));
    }
    let v: Value =
        serde_json::from_str(&a.text).map_err(|e| body_error(format!("malformed json: {e}")))?;
    Ok(Some((v, a.what)))
}

/// Retry-After as a number of seconds; the HTTP-date form is not used by
/// the API and counts as absent.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// What an answer to `GET /loadbalancers/{id}` means: the document, `None`
/// for 304 Not Modified, or why it is unusable. Pure, so it can be fuzzed.
pub fn loadbalancer_answer(id: &str, a: Answer) -> Result<Option<Value>, ApiError> {
    let Some((v, what)) = json_body(a)? else {
        return Ok(None);
    };
    let body_error = |reason: String| ApiError::Body {
        what: what.clone(),
        reason,
    };
    // An answer about another load balancer would configure that one here.
    match v.get("id").and_then(Value::as_str) {
        Some(got) if got == id => Ok(Some(v)),
        Some(other) => Err(body_error(format!(
            "the answer is about load balancer {:?}, not {id:?}",
            excerpt(other)
        ))),
        None => Err(body_error(format!(
            "the answer is not one load-balancer object with id {id:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, content_type: &str, text: &str) -> Answer {
        Answer {
            status,
            etag: None,
            retry_after: None,
            content_type: content_type.into(),
            text: text.into(),
            what: "GET /api/v1/lb/lb-1".into(),
        }
    }

    #[test]
    fn public_answers_unwrap_the_envelope_and_its_quirks() {
        let json = "application/json; charset=utf-8";
        let ok = |text: &str| public_answer(answer(200, json, text));
        assert_eq!(
            ok(r#"{"error":false,"data":{"a":1}}"#).expect("data"),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(
            ok(r#"{"Error":false,"Data":[1]}"#).expect("Data"),
            Some(serde_json::json!([1]))
        );
        assert_eq!(public_answer(answer(304, "", "")).expect("304"), None);
        let cases = [
            (
                200,
                json,
                r#"{"error":true,"message":"lost in the clouds"}"#,
                "the api reported an error: lost in the clouds",
                true,
            ),
            (
                200,
                json,
                r#"{"error":1,"message":""}"#,
                "the api reported an error: error: true without a message",
                true,
            ),
            (
                200,
                json,
                r#"{"error":false}"#,
                "the answer has no data",
                true,
            ),
            (200, json, r#"[1]"#, "not an {error, data} object", true),
            (
                200,
                "text/html",
                "<html>",
                "content type \"text/html\"",
                true,
            ),
            (
                404,
                json,
                r#"{"error":true,"code":404,"message":"load balancer not found"}"#,
                "status 404: load balancer not found (code 404)",
                false,
            ),
            (
                401,
                json,
                r#"{"error":true,"code":401,"message":"bad token"}"#,
                "api key rejected (status 401): bad token (code 401)",
                false,
            ),
            (503, "text/plain", "down", "status 503: down", true),
        ];
        for (status, ct, text, want, retryable) in cases {
            let e = public_answer(answer(status, ct, text)).expect_err(text);
            assert!(e.to_string().contains(want), "{text}: {e}");
            assert_eq!(e.is_retryable(), retryable, "{text}");
        }
    }

    #[test]
    fn error_bodies_are_cut_to_200_characters() {
        let long = "x".repeat(500);
        assert_eq!(
            excerpt(&long).chars().count(),
            201,
            "200 characters and an ellipsis"
        );
        assert_eq!(excerpt("short"), "short");
    }
}
