//! The pass's own IO, one trait per kind, so that a whole pass runs
//! in-process with fakes and each failure's class can be tested: the state
//! store (last-known-good and the running drains), the connection closer
//! (`ss -K` when a drain ends), the WAF policy sink, the wall clock that
//! drains and status times are read from, and keepalived's records of this
//! node's VRRP states. Each has an adapter
//! over the code that did the IO before, built from [`Settings`], and an
//! in-memory fake under `cfg(test)`.

use std::net::IpAddr;
use std::path::PathBuf;

use vpsie_lb_model::Config;
use vpsie_lb_model::drain::SavedDrain;

use super::Settings;
use crate::drain::EnvoyProcess;
use crate::state::{Docs, StateError, Unsaved};

/// Where last-known-good and the running drains are kept.
pub trait StateStore: Send {
    /// Where the store is, for messages.
    fn location(&self) -> String;
    /// Last-known-good; `Ok(None)` when there is no state at all.
    fn load(&self) -> Result<Option<Docs>, StateError>;
    /// Replaces last-known-good with `docs` and what Envoy was handed for
    /// them, so that no crash leaves half of it.
    fn save(&self, docs: &Docs, unsaved: &Unsaved) -> std::io::Result<()>;
    /// The drains the last run saved (none when it saved none).
    fn load_drains(&self) -> Result<Vec<SavedDrain>, String>;
    /// Saves the running drains (none: removes the record).
    fn save_drains(&self, drains: &[SavedDrain]) -> Result<(), String>;
}

/// Closes the connections Envoy still holds to a backend whose drain ended.
pub trait ConnectionCloser: Send {
    /// Closes Envoy's connections to `ip:port`; how many were closed.
    fn close(&self, ip: IpAddr, port: u16) -> Result<usize, String>;
}

/// Where the WAF service reads the load balancers' policies.
pub trait WafSink: Send {
    /// Makes the policies of `config` what the service reads.
    fn write(&mut self, config: &Config) -> Result<(), String>;
}

/// The wall clock: when drains end, and the time the status shows.
pub trait Clock: Send {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// What keepalived says of this node's VRRP instances.
pub trait HaRecords: Send {
    /// Each instance's state as keepalived last recorded it.
    fn status(&self) -> crate::status::HaStatus;
}

/// keepalived's record files for this node's `ha` section.
pub struct KeepalivedRecords(pub crate::config::Ha);

impl HaRecords for KeepalivedRecords {
    fn status(&self) -> crate::status::HaStatus {
        crate::ha::status(&self.0)
    }
}

/// The pass's IO, handed to [`super::Reconciler::with_ports`].
pub struct Ports {
    /// Last-known-good and the drains.
    pub store: Box<dyn StateStore>,
    /// `ss -K`.
    pub closer: Box<dyn ConnectionCloser>,
    /// The WAF policy file; `None` writes none.
    pub waf: Option<Box<dyn WafSink>>,
    /// The wall clock.
    pub clock: Box<dyn Clock>,
}

impl Ports {
    /// The real ones: files in the state directory, `ss -K` on Envoy's
    /// sockets, and the policy file `settings` name.
    pub fn of(settings: &Settings) -> Self {
        Self {
            store: Box::new(DirStore(settings.state_dir.clone())),
            closer: Box::new(SsCloser(settings.envoy.clone())),
            waf: settings.waf_policies.clone().map(|path| {
                Box::new(WafFile {
                    path,
                    written: None,
                }) as Box<dyn WafSink>
            }),
            clock: Box::new(SystemClock),
        }
    }
}

/// The state directory.
pub struct DirStore(pub PathBuf);

impl StateStore for DirStore {
    fn location(&self) -> String {
        self.0.display().to_string()
    }

    fn load(&self) -> Result<Option<Docs>, StateError> {
        crate::state::load(&self.0)
    }

    fn save(&self, docs: &Docs, unsaved: &Unsaved) -> std::io::Result<()> {
        crate::state::save(&self.0, docs, unsaved)
    }

    fn load_drains(&self) -> Result<Vec<SavedDrain>, String> {
        crate::drain::load(&self.0)
    }

    fn save_drains(&self, drains: &[SavedDrain]) -> Result<(), String> {
        crate::drain::save(&self.0, drains)
    }
}

/// Last-known-good in the state directory, without the drains: a one-shot
/// `apply` must not touch the drains a running agent keeps there.
pub struct LastKnownGoodOnly(pub DirStore);

impl StateStore for LastKnownGoodOnly {
    fn location(&self) -> String {
        self.0.location()
    }

    fn load(&self) -> Result<Option<Docs>, StateError> {
        self.0.load()
    }

    fn save(&self, docs: &Docs, unsaved: &Unsaved) -> std::io::Result<()> {
        self.0.save(docs, unsaved)
    }

    fn load_drains(&self) -> Result<Vec<SavedDrain>, String> {
        Ok(Vec::new())
    }

    fn save_drains(&self, _drains: &[SavedDrain]) -> Result<(), String> {
        Ok(())
    }
}

/// No state at all: a one-shot `apply` without `--state-dir` starts from
/// nothing and keeps nothing.
pub struct NoStore;

impl StateStore for NoStore {
    fn location(&self) -> String {
        "nowhere (no --state-dir)".into()
    }

    fn load(&self) -> Result<Option<Docs>, StateError> {
        Ok(None)
    }

    fn save(&self, _docs: &Docs, _unsaved: &Unsaved) -> std::io::Result<()> {
        Ok(())
    }

    fn load_drains(&self) -> Result<Vec<SavedDrain>, String> {
        Ok(Vec::new())
    }

    fn save_drains(&self, _drains: &[SavedDrain]) -> Result<(), String> {
        Ok(())
    }
}

/// The kernel's socket destroy, on Envoy's sockets only.
pub struct SsCloser(pub EnvoyProcess);

impl ConnectionCloser for SsCloser {
    fn close(&self, ip: IpAddr, port: u16) -> Result<usize, String> {
        crate::drain::close_connections(&self.0, ip, port)
    }
}

/// The policy file, and what was written to it last, so a pass that
/// changes no policy does not read it back.
pub struct WafFile {
    path: PathBuf,
    written: Option<String>,
}

impl WafSink for WafFile {
    fn write(&mut self, config: &Config) -> Result<(), String> {
        crate::waf::write_policies(&self.path, config, &mut self.written)
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::drain::now_ms()
    }
}

/// In-memory ports for in-process passes, each able to fail on demand.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Ports that keep everything in memory, never fail, and start the
    /// clock at 2026-12-07.
    pub(crate) fn ports() -> Ports {
        Ports {
            store: Box::new(Memory::default()),
            closer: Box::new(Closer::default()),
            waf: None,
            clock: Box::new(Manual::default()),
        }
    }

    /// A clock that moves only when told; shared.
    #[derive(Clone)]
    pub(crate) struct Manual(pub Arc<AtomicU64>);

    impl Default for Manual {
        fn default() -> Self {
            Self(Arc::new(AtomicU64::new(1_796_601_600_000)))
        }
    }

    impl Manual {
        /// Moves the clock on by `ms`.
        pub(crate) fn advance(&self, ms: u64) {
            self.0.fetch_add(ms, Ordering::Relaxed);
        }
    }

    impl Clock for Manual {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    /// What a [`Memory`] store holds; shared, so a test reads it after
    /// handing the store over.
    #[derive(Default)]
    pub(crate) struct Held {
        pub docs: Option<Docs>,
        pub drains: Vec<SavedDrain>,
        /// Every save of last-known-good fails while set, with this reason.
        pub failing: Option<String>,
        /// Every save of the drains fails while set, with this reason.
        pub failing_drains: Option<String>,
    }

    /// A store in memory.
    #[derive(Clone, Default)]
    pub(crate) struct Memory(pub Arc<Mutex<Held>>);

    impl Memory {
        fn held(&self) -> std::sync::MutexGuard<'_, Held> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl StateStore for Memory {
        fn location(&self) -> String {
            "memory".into()
        }

        fn load(&self) -> Result<Option<Docs>, StateError> {
            Ok(self.held().docs.clone())
        }

        fn save(&self, docs: &Docs, _: &Unsaved) -> std::io::Result<()> {
            let mut held = self.held();
            if let Some(why) = &held.failing {
                return Err(std::io::Error::other(why.clone()));
            }
            held.docs = Some(docs.clone());
            Ok(())
        }

        fn load_drains(&self) -> Result<Vec<SavedDrain>, String> {
            Ok(self.held().drains.clone())
        }

        fn save_drains(&self, drains: &[SavedDrain]) -> Result<(), String> {
            let mut held = self.held();
            if let Some(why) = &held.failing_drains {
                return Err(why.clone());
            }
            held.drains = drains.to_vec();
            Ok(())
        }
    }

    /// A closer that records what it was asked, and fails when `failing`.
    #[derive(Clone, Default)]
    pub(crate) struct Closer {
        pub asked: Arc<Mutex<Vec<(IpAddr, u16)>>>,
        pub failing: Option<String>,
    }

    impl ConnectionCloser for Closer {
        fn close(&self, ip: IpAddr, port: u16) -> Result<usize, String> {
            if let Ok(mut asked) = self.asked.lock() {
                asked.push((ip, port));
            }
            self.failing.clone().map_or(Ok(2), Err)
        }
    }

    /// A WAF sink that keeps the number of load balancers it was last
    /// given, and fails when `failing`.
    #[derive(Clone, Default)]
    pub(crate) struct Waf {
        pub written: Arc<Mutex<Option<usize>>>,
        pub failing: Option<String>,
    }

    impl WafSink for Waf {
        fn write(&mut self, config: &Config) -> Result<(), String> {
            if let Some(why) = &self.failing {
                return Err(why.clone());
            }
            if let Ok(mut w) = self.written.lock() {
                *w = Some(config.load_balancers.len());
            }
            Ok(())
        }
    }

    /// VRRP records a test sets: instance name to state.
    #[derive(Clone, Default)]
    pub(crate) struct Vrrp(pub Arc<Mutex<Vec<(String, String)>>>);

    impl HaRecords for Vrrp {
        fn status(&self) -> crate::status::HaStatus {
            let states = self.0.lock().map(|s| s.clone()).unwrap_or_default();
            crate::status::HaStatus {
                mode: "active_passive".into(),
                instances: states
                    .into_iter()
                    .map(|(name, state)| crate::status::HaInstanceStatus {
                        name,
                        virtual_ips: vec!["192.0.2.10/24".into()],
                        state,
                        ..Default::default()
                    })
                    .collect(),
            }
        }
    }
}
