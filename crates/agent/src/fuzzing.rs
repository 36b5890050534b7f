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

/// The saved drains file, as a restarted agent reads it.
pub fn drains(data: &[u8]) {
    let _ = crate::drain::parse(data);
}

/// The ACME store's files: up to the first NUL byte a certificate's
/// `issued.json`, then its PEM chain; the whole input also as an account's
/// saved credentials.
pub fn acme_store(data: &[u8]) {
    let (record, chain) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, data),
    };
    let _ = crate::acme::store::parse_record(record);
    let _ = crate::acme::store::validity(chain);
    let _ = serde_json::from_slice::<instant_acme::AccountCredentials>(data);
}

/// The `ha` section of the agent's config: the input, indented, under `ha:`.
pub fn ha_config(data: &[u8]) {
    let _ = crate::config::Config::parse(&ha_config_text(data), "fuzz.yaml");
}

/// An agent config whose `ha` section is `data`, indented. Its source is
/// a file, which parsing never opens: the default `vpsie` source would read
/// the API key file, and a fuzz target must do no IO.
pub fn ha_config_text(data: &[u8]) -> String {
    let mut text = String::from("source: file\nfile: /nonexistent/lb.yaml\nha:\n");
    for line in String::from_utf8_lossy(data).lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// A public-API load balancer as JSON, mapped into documents the way the
/// public source maps an answer, without the HTTP around it.
pub fn public_answer(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let env = vpsie_lb_model::public::MapEnv {
        zones: [("zone-1".to_owned(), "example.com".to_owned())].into(),
        certificate_dir: "/etc/vpsie-lb/certs/".into(),
        redirect_port: 80,
    };
    let mapped = vpsie_lb_model::public::map_load_balancer("lb-1", &value, &env);
    let opts = vpsie_lb_model::ValidateOptions::default();
    for rule in mapped.rules {
        if let Ok(doc) = rule.doc
            && let Err(rejected) = vpsie_lb_model::validate(&doc, &opts)
        {
            for p in &rejected.errors {
                let _ = rule.paths.translate(p).to_string();
            }
        }
    }
}
