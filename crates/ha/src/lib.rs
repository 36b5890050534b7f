//! High availability with keepalived: what this node tells keepalived
//! (`ha render`, `ha check`), what keepalived tells it back (`ha notify`),
//! and how the agent shows the result (`/status`, `vpsie_lb_ha_state`).
//!
//! keepalived owns the virtual IPs; the agent never moves one. The record
//! `ha notify` writes is the only channel between them, so an agent that
//! is down changes nothing about who holds an address.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use config::{Ha, HaMode, script_path};

pub mod config;
mod hook;
mod metrics;
mod render;

pub use metrics::HaMetrics;
pub use render::{CHECK_SCRIPT, Instance, instances, render};

/// A VRRP state keepalived reports through `ha notify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Holds the instance's addresses.
    Master,
    /// Ready to take them over.
    Backup,
    /// Must not hold them (its check fails, or its interface is down).
    Fault,
    /// keepalived stopped.
    Stop,
}

impl State {
    /// Every state, in the order metrics list them.
    pub const ALL: [State; 4] = [State::Master, State::Backup, State::Fault, State::Stop];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Master => "master",
            State::Backup => "backup",
            State::Fault => "fault",
            State::Stop => "stop",
        }
    }
}

/// What `ha notify` records for one VRRP instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The instance (`vpsie_lb_1`).
    pub instance: String,
    /// Its state on this node.
    pub state: State,
    /// When keepalived reported it, RFC 3339.
    pub since: String,
    /// The addresses the instance moves.
    pub virtual_ips: Vec<String>,
    /// How `notify_command` ended, when it ran for this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_command: Option<String>,
}

/// Where `ha notify` keeps an instance's record.
pub fn record_path(status_dir: &Path, instance: &str) -> PathBuf {
    status_dir.join(format!("{instance}.json"))
}

/// Every instance `ha` has, with its record (`None`: keepalived has not
/// reported it yet, or the record is unreadable).
pub fn records(ha: &Ha) -> Vec<(Instance, Option<Record>)> {
    instances(ha)
        .into_iter()
        .map(|i| {
            let record = read_record(&ha.status_dir, &i.name);
            (i, record)
        })
        .collect()
}

/// Whether this node holds a virtual address (keepalived made it master
/// of an instance): only then do ACME challenges for the pair's names reach it.
pub fn holds_address(ha: &Ha) -> bool {
    records(ha)
        .iter()
        .any(|(_, r)| r.as_ref().is_some_and(|r| r.state == State::Master))
}

/// This node's HA status for `/status`, from the records.
pub fn status(ha: &Ha) -> vpsie_lb_core::status::HaStatus {
    vpsie_lb_core::status::HaStatus {
        mode: match ha.mode {
            HaMode::ActivePassive => "active_passive",
            HaMode::ActiveActive => "active_active",
        }
        .to_owned(),
        instances: records(ha)
            .into_iter()
            .map(|(i, r)| vpsie_lb_core::status::HaInstanceStatus {
                name: i.name,
                virtual_ips: i.addresses,
                state: r
                    .as_ref()
                    .map_or("unknown", |r| r.state.as_str())
                    .to_owned(),
                since: r.as_ref().map(|r| r.since.clone()).unwrap_or_default(),
                notify_command: r.and_then(|r| r.notify_command),
            })
            .collect(),
    }
}

/// Records `state` for `instance` and, on becoming master, runs the
/// configured `notify_command`; returns the record written.
pub fn notify(ha: &Ha, instance: &str, state: State) -> Result<Record, String> {
    let Some(found) = instances(ha).into_iter().find(|i| i.name == instance) else {
        let known: Vec<String> = instances(ha).into_iter().map(|i| i.name).collect();
        return Err(format!(
            "instance {instance:?} is not in this node's ha config ({})",
            known.join(", ")
        ));
    };
    let mut record = Record {
        instance: instance.to_owned(),
        state,
        since: vpsie_lb_host::clock::rfc3339_now(),
        virtual_ips: found.addresses.clone(),
        notify_command: None,
    };
    write_record(ha, &record)?;
    if let (State::Master, Some(command)) = (state, &ha.notify_command) {
        let outcome = hook::run(command, &record, ha.notify_timeout);
        // keepalived may have reported a newer state while the hook ran
        // (it does not wait for us): that record stays.
        let unchanged = read_record(&ha.status_dir, instance).as_ref() == Some(&record);
        record.notify_command = Some(outcome);
        if unchanged {
            write_record(ha, &record)?;
        }
    }
    Ok(record)
}

fn read_record(status_dir: &Path, instance: &str) -> Option<Record> {
    let bytes = std::fs::read(record_path(status_dir, instance)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_record(ha: &Ha, record: &Record) -> Result<(), String> {
    let path = record_path(&ha.status_dir, &record.instance);
    let json = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    vpsie_lb_host::fsutil::ensure_dir(&ha.status_dir)
        .and_then(|()| vpsie_lb_host::fsutil::write_atomic(&path, &json, 0o644))
        .map_err(|e| format!("record the ha state in {}: {e}", path.display()))
}
