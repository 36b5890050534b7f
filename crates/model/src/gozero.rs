//! Go's `encoding/json` writes every field without `omitempty`, so a Go API
//! built on the system description's structs sends an unset optional field
//! as its zero value: `""`, `0`, `null`, `[]`. Where that zero cannot mean
//! anything else, it is read as "absent, use the default". The rules are
//! data, listed in docs/load-balancer-format.md.

use serde_json::Value;

/// A Go zero value.
#[derive(Clone, Copy)]
enum Zero {
    /// `""`.
    Text,
    /// `0`.
    Number,
}

/// (object, key, zero): in `object` (`""` is the load balancer itself), a
/// `key` holding `zero` is dropped before validation. Keys where zero has a
/// meaning of its own are absent from this list: `timeouts.idle` and
/// `timeouts.request` (0 disables), `backends[].enabled` (false disables),
/// `port` (no default exists).
const ZERO_MEANS_ABSENT: &[(&str, &str, Zero)] = &[
    ("", "name", Zero::Text),
    ("", "algorithm", Zero::Text),
    ("", "max_connections", Zero::Number),
    ("tls_config", "min_version", Zero::Text),
    ("tls_config", "max_version", Zero::Text),
    ("tls_config", "ca_cert_path", Zero::Text),
    ("timeouts", "connect", Zero::Number),
    ("health_check", "interval", Zero::Number),
    ("health_check", "timeout", Zero::Number),
    ("health_check", "healthy_threshold", Zero::Number),
    ("health_check", "unhealthy_threshold", Zero::Number),
    ("health_check", "path", Zero::Text),
    ("", "slow_start", Zero::Number),
    ("", "redirect_http_port", Zero::Number),
    ("pool", "algorithm", Zero::Text),
    ("pool", "slow_start", Zero::Number),
    ("per_client", "max_sessions", Zero::Number),
    ("per_client", "new_sessions_per_second", Zero::Number),
    ("per_client", "burst", Zero::Number),
];

fn is_zero(v: &Value, zero: Zero) -> bool {
    match zero {
        Zero::Text => v.as_str() == Some(""),
        Zero::Number => v.as_i64() == Some(0) || v.as_f64() == Some(0.0),
    }
}

/// Whether `value`, found at `key` of an object of kind `object` (`""` is
/// the load balancer itself, else the key it sits under), is a Go zero that
/// means "absent". A health check whose `type` is `""` is no health check at
/// all (Go's zero `HealthCheck`). Validation asks this where it asks whether
/// a key is null, so nothing is copied.
pub fn means_absent(object: &str, key: &str, value: &Value) -> bool {
    // Go's zero struct of an optional section is no section at all.
    if object.is_empty() || object == "pool" {
        let marker = match key {
            "health_check" => Some("type"),
            "sticky_sessions" => Some("cookie_name"),
            _ => None,
        };
        if let Some(marker) = marker {
            return value.get(marker).is_some_and(|t| is_zero(t, Zero::Text));
        }
    }
    ZERO_MEANS_ABSENT
        .iter()
        .any(|(o, k, zero)| *o == object && *k == key && is_zero(value, *zero))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The keys of `doc` (an object of kind `object`) that read as absent.
    fn absent(object: &str, doc: &Value) -> Vec<String> {
        doc.as_object()
            .expect("object")
            .iter()
            .filter(|(k, v)| means_absent(object, k, v))
            .map(|(k, _)| k.clone())
            .collect()
    }

    #[test]
    fn zeros_that_mean_absent_are_dropped_and_others_kept() {
        let doc = json!({
            "name": "", "algorithm": "", "max_connections": 0, "port": 0,
            "tls_config": {"min_version": "", "max_version": "", "ca_cert_path": "", "certificate_path": "/c"},
            "timeouts": {"connect": 0, "idle": 0, "request": 0},
            "health_check": {"type": "http", "interval": 0, "timeout": 0, "path": ""},
            "backends": [{"enabled": false, "weight": 0}],
        });
        assert_eq!(absent("", &doc), ["algorithm", "max_connections", "name"]);
        assert_eq!(
            absent("tls_config", &doc["tls_config"]),
            ["ca_cert_path", "max_version", "min_version"]
        );
        assert_eq!(absent("timeouts", &doc["timeouts"]), ["connect"]);
        assert_eq!(
            absent("health_check", &doc["health_check"]),
            ["interval", "path", "timeout"]
        );
        assert!(absent("backend", &doc["backends"][0]).is_empty());
    }

    #[test]
    fn a_zero_health_check_is_none_and_a_clean_document_has_no_zeros() {
        let doc = json!({"health_check": {"type": "", "interval": 0}, "name": "x"});
        assert_eq!(absent("", &doc), ["health_check"]);
        let clean = json!({"name": "x", "timeouts": {"connect": 3}});
        assert!(absent("", &clean).is_empty());
        assert!(absent("timeouts", &clean["timeouts"]).is_empty());
    }
}
