//! Reading values of the agent's own config file that more than one
//! capability's section uses: durations and Unix socket paths.

use std::time::Duration;

/// Checks that `path`, the value of `key`, can name a Unix socket (absolute,
/// and short enough for the kernel), adding the problem to `problems`.
pub fn socket_path(key: &str, path: &std::path::Path, problems: &mut Vec<String>) {
    let text = path.to_string_lossy();
    if let Some(why) = vpsie_lb_envoy::LocalAddress::unix_path_problem(&text) {
        problems.push(format!("{key}: {text}: {why}"));
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(v: &serde_norway::Value) -> Result<Duration, String> {
    if let Some(n) = v.as_u64() {
        return (n <= MAX_DURATION_SECS)
            .then(|| Duration::from_secs(n))
            .ok_or_else(|| format!("{n} is longer than {MAX_DURATION_SECS} seconds (one year)"));
    }
    let s = v
        .as_str()
        .ok_or("must be a duration like 30s, 500ms or 2m")?
        .trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} must be a duration like 30s, 500ms or 2m"))?;
    let per_unit: u64 = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    n.checked_mul(per_unit)
        .filter(|secs| *secs <= MAX_DURATION_SECS)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is longer than {MAX_DURATION_SECS} seconds (one year)"))
}

/// The longest duration any key accepts: a year. Longer values are typos,
/// and would overflow `Instant` arithmetic in the loop.
const MAX_DURATION_SECS: u64 = 365 * 86_400;
