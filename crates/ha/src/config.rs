//! The `ha` keys: this node's half of a keepalived (VRRPv3) pair. Only
//! validated here; the crate root renders keepalived's config from them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vpsie_lb_model::IpNet;

use vpsie_lb_host::config_text::parse_duration;

/// How the pair shares its addresses (`ha.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaMode {
    /// One node holds every virtual IP; the other waits.
    ActivePassive,
    /// Two virtual IPs, each node the master of one; clients use both.
    ActiveActive,
}

/// A validated `ha` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ha {
    /// Active-passive or active-active.
    pub mode: HaMode,
    /// This node's VRRP priority (1..=254) for the addresses it prefers.
    pub priority: u8,
    /// The interface the virtual IPs live on and adverts leave by.
    pub interface: String,
    /// The moving addresses, with their prefix length.
    pub virtual_ips: Vec<IpNet>,
    /// With active-active: the virtual IP this node is master of.
    pub primary_ip: Option<IpAddr>,
    /// The other nodes' addresses (unicast adverts).
    pub peers: Vec<IpAddr>,
    /// This node's address, the adverts' source.
    pub source_address: IpAddr,
    /// Time between adverts (VRRPv3 counts it in centiseconds).
    pub advert_interval: Duration,
    /// VRRP router id of the first instance; active-active also uses the next.
    pub virtual_router_id: u8,
    /// Seconds between runs of `ha check` (keepalived takes whole seconds).
    pub check_interval_secs: u32,
    /// Failed checks in a row before the node gives up its addresses.
    pub check_fall: u32,
    /// Passed checks in a row before it may hold them again.
    pub check_rise: u32,
    /// Active-active: how long a returning node waits before it takes its
    /// address back (seconds, keepalived's `preempt_delay`).
    pub preempt_delay_secs: u32,
    /// Run (no shell) when this node becomes master, e.g. to move a cloud
    /// floating IP.
    pub notify_command: Option<Vec<String>>,
    /// How long `notify_command` may run before it is killed.
    pub notify_timeout: Duration,
    /// The unprivileged user keepalived runs `ha check` and `ha notify` as.
    pub script_user: String,
    /// The agent binary keepalived runs.
    pub agent_path: PathBuf,
    /// Where `ha notify` records each instance's state for the agent to show.
    pub status_dir: PathBuf,
}

/// `ha` as written, before validation.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHa {
    mode: Option<String>,
    priority: Option<i64>,
    interface: Option<String>,
    virtual_ips: Option<Vec<String>>,
    primary_ip: Option<String>,
    peers: Option<Vec<String>>,
    source_address: Option<String>,
    advert_interval: Option<serde_norway::Value>,
    virtual_router_id: Option<i64>,
    check_interval: Option<serde_norway::Value>,
    check_fall: Option<i64>,
    check_rise: Option<i64>,
    preempt_delay: Option<serde_norway::Value>,
    notify_command: Option<serde_norway::Value>,
    notify_timeout: Option<serde_norway::Value>,
    script_user: Option<String>,
    agent_path: Option<PathBuf>,
    status_dir: Option<PathBuf>,
}

/// VRRPv3 carries the advert interval in centiseconds, in 12 bits.
const MAX_ADVERT_CENTIS: u128 = 4095;
/// More peers than a pair needs is a mistake in the file, not a topology.
const MAX_PEERS: usize = 8;
/// One address per instance in active-active; a handful in active-passive.
const MAX_VIRTUAL_IPS: usize = 16;

/// Collects problems under `ha.`.
struct Problems<'a>(&'a mut Vec<String>);

impl Problems<'_> {
    fn push(&mut self, key: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("ha.{key}: {msg}"));
    }
}

/// Reads `ha`, adding what is wrong to `problems`; `state_dir` gives the
/// default `status_dir`.
pub fn read(raw: RawHa, state_dir: &Path, problems: &mut Vec<String>) -> Option<Ha> {
    let before = problems.len();
    let mut p = Problems(problems);
    let mode = match raw.mode.as_deref() {
        Some("active_passive") => HaMode::ActivePassive,
        Some("active_active") => HaMode::ActiveActive,
        Some(other) => {
            p.push(
                "mode",
                format!("must be active_passive or active_active (got {other:?})"),
            );
            HaMode::ActivePassive
        }
        None => {
            p.push("mode", "is required (active_passive or active_active)");
            HaMode::ActivePassive
        }
    };
    let priority = int_in(&mut p, "priority", raw.priority, 1, 254, None).unwrap_or(100) as u8;
    let interface = raw.interface.unwrap_or_default();
    if let Err(e) = interface_problem(&interface) {
        p.push("interface", e);
    }
    let raw_vips = raw.virtual_ips.unwrap_or_default();
    let vip_count = raw_vips.len();
    let indexed_vips = nets(&mut p, raw_vips);
    let peers = addresses(&mut p, "peers", raw.peers.unwrap_or_default());
    let source_address = match raw.source_address.as_deref().map(str::parse::<IpAddr>) {
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => {
            p.push("source_address", e);
            None
        }
        None => {
            p.push("source_address", "is required: this node's own address");
            None
        }
    };
    let advert_interval = duration(
        &mut p,
        "advert_interval",
        raw.advert_interval.as_ref(),
        Duration::from_millis(200),
        |d| {
            let centis = d.as_millis() / 10;
            (d.as_millis() % 10 == 0 && (1..=MAX_ADVERT_CENTIS).contains(&centis))
                .then_some(())
                .ok_or_else(|| {
                    format!(
                        "{}ms: must be 10ms..=40950ms in steps of 10ms (VRRPv3 counts centiseconds)",
                        d.as_millis()
                    )
                })
        },
    );
    let virtual_router_id = int_in(
        &mut p,
        "virtual_router_id",
        raw.virtual_router_id,
        1,
        255 - u8::from(mode == HaMode::ActiveActive) as i64,
        Some(51),
    )
    .unwrap_or(51) as u8;
    let check_interval_secs = duration(
        &mut p,
        "check_interval",
        raw.check_interval.as_ref(),
        Duration::from_secs(1),
        |d| {
            whole_seconds(
                d,
                1,
                3600,
                "whole seconds from 1s to 1h (keepalived runs scripts at most once a second)",
            )
        },
    )
    .as_secs() as u32;
    let check_fall = int_in(&mut p, "check_fall", raw.check_fall, 1, 100, Some(2)).unwrap_or(2);
    let check_rise = int_in(&mut p, "check_rise", raw.check_rise, 1, 100, Some(2)).unwrap_or(2);
    let preempt_delay_secs = duration(
        &mut p,
        "preempt_delay",
        raw.preempt_delay.as_ref(),
        Duration::from_secs(10),
        |d| {
            whole_seconds(
                d,
                0,
                1000,
                "whole seconds, at most 1000s (keepalived's range)",
            )
        },
    )
    .as_secs() as u32;
    if raw.preempt_delay.is_some() && mode == HaMode::ActivePassive {
        p.push(
            "preempt_delay",
            "applies to active_active only: active_passive never takes an address back",
        );
    }
    let notify_command = raw.notify_command.as_ref().and_then(|v| command(&mut p, v));
    let notify_timeout = duration(
        &mut p,
        "notify_timeout",
        raw.notify_timeout.as_ref(),
        Duration::from_secs(30),
        |d| {
            (!d.is_zero())
                .then_some(())
                .ok_or_else(|| "must be more than 0s".to_owned())
        },
    );
    let script_user = raw.script_user.unwrap_or_else(|| "vpsie-lb".into());
    if script_user == "root" || script_user.is_empty() || !script_user.chars().all(user_char) {
        p.push(
            "script_user",
            format!("{script_user:?} must be an unprivileged user's name, not root"),
        );
    }
    let agent_path = raw
        .agent_path
        .unwrap_or_else(|| PathBuf::from("/usr/bin/vpsie-lb-agent"));
    if let Err(e) = script_path(&agent_path) {
        p.push("agent_path", e);
    }
    let status_dir = raw.status_dir.unwrap_or_else(|| state_dir.join("ha"));
    if !status_dir.is_absolute() {
        p.push(
            "status_dir",
            format!("{} must be an absolute path", status_dir.display()),
        );
    }
    if let Some(source) = source_address {
        topology(
            &mut p,
            mode,
            (&indexed_vips, vip_count),
            &peers,
            source,
            raw.primary_ip.as_deref(),
        );
    }
    let virtual_ips = indexed_vips.into_iter().map(|(_, n)| n).collect();
    let primary_ip = raw.primary_ip.as_deref().and_then(|s| s.parse().ok());
    if problems.len() > before {
        return None;
    }
    Some(Ha {
        mode,
        priority,
        interface,
        virtual_ips,
        primary_ip,
        peers,
        source_address: source_address?,
        advert_interval,
        virtual_router_id,
        check_interval_secs,
        check_fall,
        check_rise,
        preempt_delay_secs,
        notify_command,
        notify_timeout,
        script_user,
        agent_path,
        status_dir,
    })
}

/// A duration key: `default` when absent; a value `rule` refuses, or one
/// that does not parse, is a problem (and `default` stands in).
fn duration(
    p: &mut Problems<'_>,
    key: &str,
    v: Option<&serde_norway::Value>,
    default: Duration,
    rule: impl Fn(Duration) -> Result<(), String>,
) -> Duration {
    let Some(v) = v else { return default };
    match parse_duration(v).and_then(|d| rule(d).map(|()| d)) {
        Ok(d) => d,
        Err(e) => {
            p.push(key, e);
            default
        }
    }
}

/// `d` is whole seconds in `lo..=hi`; `what` says so when it is not.
fn whole_seconds(d: Duration, lo: u64, hi: u64, what: &str) -> Result<(), String> {
    (d.subsec_nanos() == 0 && (lo..=hi).contains(&d.as_secs()))
        .then_some(())
        .ok_or_else(|| format!("must be {what}"))
}

/// An integer key within `lo..=hi`; `default` when absent (`None`: required).
fn int_in(
    p: &mut Problems<'_>,
    key: &str,
    v: Option<i64>,
    lo: i64,
    hi: i64,
    default: Option<i64>,
) -> Option<u32> {
    match (v, default) {
        (Some(n), _) if (lo..=hi).contains(&n) => Some(n as u32),
        (Some(n), _) => {
            p.push(key, format!("must be {lo}..={hi} (got {n})"));
            None
        }
        (None, Some(d)) => Some(d as u32),
        (None, None) => {
            p.push(key, format!("is required ({lo}..={hi})"));
            None
        }
    }
}

/// The virtual IPs that parsed, each with its index in the file.
fn nets(p: &mut Problems<'_>, raw: Vec<String>) -> Vec<(usize, IpNet)> {
    if raw.is_empty() {
        p.push(
            "virtual_ips",
            "at least one address with its prefix length is required, e.g. 192.0.2.10/24",
        );
    }
    if raw.len() > MAX_VIRTUAL_IPS {
        p.push(
            "virtual_ips",
            format!("at most {MAX_VIRTUAL_IPS} addresses"),
        );
    }
    let mut out: Vec<(usize, IpNet)> = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let key = format!("virtual_ips[{i}]");
        if !s.contains('/') {
            p.push(
                &key,
                format!("{s:?} needs its prefix length, e.g. {s}/24: the address is added with it"),
            );
            continue;
        }
        match s.parse::<IpNet>() {
            Ok(n) if out.iter().any(|(_, o)| o.addr() == n.addr()) => {
                p.push(&key, format!("{} is listed twice", n.addr()));
            }
            Ok(n) if n.addr().is_loopback() || n.addr().is_unspecified() => {
                p.push(&key, format!("{} cannot move between machines", n.addr()));
            }
            Ok(n) => out.push((i, n)),
            Err(e) => p.push(&key, e),
        }
    }
    out
}

fn addresses(p: &mut Problems<'_>, key: &str, raw: Vec<String>) -> Vec<IpAddr> {
    if raw.is_empty() {
        p.push(
            key,
            "at least one peer address is required (unicast: clouds drop multicast)",
        );
    }
    if raw.len() > MAX_PEERS {
        p.push(key, format!("at most {MAX_PEERS} peers"));
    }
    let mut out = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        match s.parse::<IpAddr>() {
            Ok(a) if out.contains(&a) => {
                p.push(&format!("{key}[{i}]"), format!("{a} is listed twice"))
            }
            Ok(a) => out.push(a),
            Err(e) => p.push(&format!("{key}[{i}]"), format!("{s:?}: {e}")),
        }
    }
    out
}

/// `notify_command`: a list of words, or one string split on whitespace;
/// never a shell line.
fn command(p: &mut Problems<'_>, v: &serde_norway::Value) -> Option<Vec<String>> {
    let words: Vec<String> = match v {
        serde_norway::Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        serde_norway::Value::Sequence(items) => {
            let strings: Option<Vec<String>> = items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect();
            let Some(s) = strings else {
                p.push("notify_command", "every item must be a string");
                return None;
            };
            s
        }
        _ => {
            p.push(
                "notify_command",
                "must be a command: a list of words, or a string split on spaces",
            );
            return None;
        }
    };
    match words.first() {
        None => {
            p.push("notify_command", "is empty");
            None
        }
        Some(first) if !Path::new(first).is_absolute() => {
            p.push(
                "notify_command",
                format!("{first:?} must be an absolute path (it runs without a shell or PATH)"),
            );
            None
        }
        Some(_) => Some(words),
    }
}

/// Whether `name` can be a Linux interface name.
fn interface_problem(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required: the interface the virtual IPs are added to".into());
    }
    if name.len() > 15
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{name:?} is not an interface name (at most 15 characters, no '/', ':' or spaces)"
        ));
    }
    Ok(())
}

fn user_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// A path keepalived can run: absolute, and nothing its config syntax would
/// split or quote differently.
pub fn script_path(path: &Path) -> Result<(), String> {
    let s = path.to_string_lossy();
    if !path.is_absolute() {
        return Err(format!("{s} must be an absolute path"));
    }
    if s.chars().any(|c| {
        c.is_whitespace() || c == '"' || c == '\'' || c == '#' || c == '!' || c.is_control()
    }) {
        return Err(format!(
            "{s:?} has a space, quote or comment character, which keepalived's config cannot carry"
        ));
    }
    Ok(())
}

/// What must hold between the addresses.
fn topology(
    p: &mut Problems<'_>,
    mode: HaMode,
    (vips, vip_count): (&[(usize, IpNet)], usize),
    peers: &[IpAddr],
    source: IpAddr,
    primary: Option<&str>,
) {
    if peers.contains(&source) {
        p.push(
            "peers",
            format!("{source} is this node's own source_address"),
        );
    }
    for (i, peer) in peers.iter().enumerate() {
        if peer.is_ipv4() != source.is_ipv4() {
            p.push(
                &format!("peers[{i}]"),
                format!("{peer} and source_address {source} must be of one family"),
            );
        }
    }
    for (i, vip) in vips {
        let key = format!("virtual_ips[{i}]");
        if vip.addr() == source || peers.contains(&vip.addr()) {
            p.push(
                &key,
                format!(
                    "{} is a node's own address; a virtual IP must be a spare one",
                    vip.addr()
                ),
            );
        }
        if vip.addr().is_ipv4() != source.is_ipv4() {
            p.push(
                &key,
                format!(
                    "{} and source_address {source} must be of one family (one VRRP instance carries one family)",
                    vip.addr()
                ),
            );
        }
    }
    match (mode, primary) {
        (HaMode::ActivePassive, Some(_)) => p.push("primary_ip", "applies to active_active only"),
        (HaMode::ActivePassive, None) => {}
        (HaMode::ActiveActive, _) if vip_count != 2 => p.push(
            "virtual_ips",
            format!("active_active takes exactly two addresses, one per node (got {vip_count})"),
        ),
        (HaMode::ActiveActive, None) => p.push(
            "primary_ip",
            "is required with active_active: the virtual IP this node is master of",
        ),
        (HaMode::ActiveActive, Some(s)) => match s.parse::<IpAddr>() {
            Ok(a) if vips.iter().any(|(_, v)| v.addr() == a) => {}
            Ok(a) => p.push("primary_ip", format!("{a} is not one of virtual_ips")),
            Err(e) => p.push("primary_ip", format!("{s:?}: {e}")),
        },
    }
}
