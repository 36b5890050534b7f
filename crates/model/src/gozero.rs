//! Go's `encoding/json` writes every field without `omitempty`, so a Go API
//! built on the system description's structs sends an unset optional field
//! as its zero value: `""`, `0`, `null`, `[]`. Where that zero cannot mean
//! anything else, it is read as "absent, use the default". The rules are
//! data, listed in docs/load-balancer-format.md.

use std::borrow::Cow;

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
];

fn is_zero(v: &Value, zero: Zero) -> bool {
    match zero {
        Zero::Text => v.as_str() == Some(""),
        Zero::Number => v.as_i64() == Some(0) || v.as_f64() == Some(0.0),
    }
}

/// `lb` without the Go zero values that mean "absent". A health check whose
/// `type` is `""` is no health check at all (Go's zero `HealthCheck`).
/// Borrows when there is nothing to drop, which is the common case.
pub fn without_go_zeros(lb: &Value) -> Cow<'_, Value> {
    let Some(obj) = lb.as_object() else {
        return Cow::Borrowed(lb);
    };
    let unset_check = obj
        .get("health_check")
        .and_then(|h| h.get("type"))
        .is_some_and(|t| is_zero(t, Zero::Text));
    let drops = |object: &str| -> Vec<&'static str> {
        let map = if object.is_empty() {
            Some(obj)
        } else {
            obj.get(object).and_then(Value::as_object)
        };
        ZERO_MEANS_ABSENT
            .iter()
            .filter(|(o, key, zero)| {
                *o == object
                    && map
                        .and_then(|m| m.get(*key))
                        .is_some_and(|v| is_zero(v, *zero))
            })
            .map(|(_, key, _)| *key)
            .collect()
    };
    let objects = ["", "tls_config", "timeouts", "health_check"];
    if !unset_check && objects.iter().all(|o| drops(o).is_empty()) {
        return Cow::Borrowed(lb);
    }
    let mut out = lb.clone();
    for object in objects {
        let keys = drops(object);
        let target = if object.is_empty() {
            out.as_object_mut()
        } else {
            out.get_mut(object).and_then(Value::as_object_mut)
        };
        if let Some(map) = target {
            for key in keys {
                map.remove(key);
            }
        }
    }
    if unset_check && let Some(map) = out.as_object_mut() {
        map.remove("health_check");
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn zeros_that_mean_absent_are_dropped_and_others_kept() {
        let doc = json!({
            "name": "", "algorithm": "", "max_connections": 0, "port": 0,
            "tls_config": {"min_version": "", "max_version": "", "ca_cert_path": "", "certificate_path": "/c"},
            "timeouts": {"connect": 0, "idle": 0, "request": 0},
            "health_check": {"type": "http", "interval": 0, "timeout": 0, "path": ""},
            "backends": [{"enabled": false, "weight": 0}],
        });
        let got = without_go_zeros(&doc);
        assert_eq!(
            *got,
            json!({
                "port": 0,
                "tls_config": {"certificate_path": "/c"},
                "timeouts": {"idle": 0, "request": 0},
                "health_check": {"type": "http"},
                "backends": [{"enabled": false, "weight": 0}],
            })
        );
    }

    #[test]
    fn a_zero_health_check_is_none_and_a_clean_document_is_borrowed() {
        let doc = json!({"health_check": {"type": "", "interval": 0}, "name": "x"});
        assert_eq!(*without_go_zeros(&doc), json!({"name": "x"}));
        let clean = json!({"name": "x", "timeouts": {"connect": 3}});
        assert!(matches!(without_go_zeros(&clean), Cow::Borrowed(_)));
    }
}
