//! The service's configuration: one entry per load balancer with a WAF,
//! written by the agent as JSON and read again whenever it changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the WAF does with a load balancer's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Nothing: requests are not inspected.
    Off,
    /// Inspect, log and count matches, let every request through.
    Detect,
    /// Inspect, and refuse (403) what the rule set blocks.
    Block,
}

/// One load balancer's WAF settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Off, detect or block.
    pub mode: Mode,
    /// The Core Rule Set's paranoia level, 1..=4.
    pub paranoia_level: u8,
    /// Rule ids disabled for this load balancer, sorted and unique.
    #[serde(default)]
    pub exclusions: Vec<u32>,
    /// What happens to a body past the inspection limits.
    #[serde(default)]
    pub oversize_body: Oversize,
}

/// What happens to a body past the inspection limits.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Oversize {
    /// Refused with 413 in `block`, reported in `detect`.
    #[default]
    Refuse,
    /// Inspected up to the limits; the rest passes uninspected.
    InspectStart,
}

/// The whole file: policies by load-balancer id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafConfig {
    /// By load-balancer id.
    pub load_balancers: BTreeMap<String, Policy>,
}

impl WafConfig {
    /// Parses the file's text, refusing what the service could not honour.
    pub fn parse(text: &str) -> Result<Self, String> {
        let c: WafConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for (id, p) in &c.load_balancers {
            if !(1..=4).contains(&p.paranoia_level) {
                return Err(format!(
                    "load_balancers.{id}.paranoia_level: must be 1..=4 (got {})",
                    p.paranoia_level
                ));
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_s_file_is_read_and_bad_levels_refused() {
        let c = WafConfig::parse(
            r#"{"load_balancers": {"shop": {"mode": "block", "paranoia_level": 2, "exclusions": [942100]}}}"#,
        )
        .expect("valid");
        assert_eq!(c.load_balancers["shop"].mode, Mode::Block);
        assert_eq!(c.load_balancers["shop"].exclusions, [942100]);
        assert_eq!(c.load_balancers["shop"].oversize_body, Oversize::Refuse);
        for bad in [
            r#"{"load_balancers": {"x": {"mode": "block", "paranoia_level": 5}}}"#,
            r#"{"load_balancers": {"x": {"mode": "loud", "paranoia_level": 1}}}"#,
            r#"{"load_balancers": {}, "other": 1}"#,
        ] {
            assert!(WafConfig::parse(bad).is_err(), "{bad}");
        }
    }
}
