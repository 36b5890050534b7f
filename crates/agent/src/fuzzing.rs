//! Entry points for the fuzz targets in `fuzz/`: each takes arbitrary bytes
//! and must return without panicking, whatever they are. The stable test
//! `tests/fuzz_corpus.rs` replays the saved corpus through the same functions.

/// The document parser and validator, with strict mode both ways.
pub fn document(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let opts = vpsie_lb_model::ValidateOptions::default();
    if let Ok(doc) = vpsie_lb_model::parse_document(&text) {
        let _ = vpsie_lb_model::validate(&doc, &opts);
        let strict = vpsie_lb_model::ValidateOptions {
            strict: true,
            ..opts
        };
        let _ = vpsie_lb_model::validate(&doc, &strict);
    }
}

/// The agent's config file parser and its validation.
pub fn agent_config(data: &[u8]) {
    let _ = crate::config::Config::parse(&String::from_utf8_lossy(data), "fuzz.yaml");
}

/// The API client's handling of one answer: the input is two bytes of
/// status, header lines (`name: value`) up to a blank line, then the body.
pub fn api_response(data: &[u8]) {
    let [hi, lo, rest @ ..] = data else { return };
    let status = u16::from_be_bytes([*hi, *lo]) % 1000;
    let text = String::from_utf8_lossy(rest);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    if (300..400).contains(&status) {
        let location = header("location").unwrap_or_default();
        let _ = crate::origin::redirect_target(
            "https://api.vpsie.com/v1/loadbalancers/lb-1",
            &location,
        );
        return;
    }
    let answer = crate::api::Answer {
        status,
        etag: header("etag"),
        retry_after: header("retry-after")
            .as_deref()
            .and_then(crate::api::parse_retry_after),
        content_type: header("content-type").unwrap_or_default(),
        text: body.to_owned(),
        what: "GET /loadbalancers/lb-1".into(),
    };
    if let Err(e) = crate::api::loadbalancer_answer("lb-1", answer.clone()) {
        let _ = (e.to_string(), e.is_retryable(), e.retry_after());
    }
    // The same bytes as a public-API answer, mapped as the source maps it.
    match crate::api::public_answer(answer) {
        Ok(Some(data)) => {
            let env = vpsie_lb_model::public::MapEnv::default();
            let _ = vpsie_lb_model::public::map_load_balancer("lb-1", &data, &env);
        }
        Ok(None) => {}
        Err(e) => {
            let _ = (e.to_string(), e.is_retryable());
        }
    }
}

/// The parser of the agent's endpoints' request head.
pub fn endpoint_request(data: &[u8]) {
    let _ = crate::local_server::parse_head(data);
}
