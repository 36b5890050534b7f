//! The ordering thread: which certificate to order next (by turn, within
//! each load balancer's budget), up to four orders at once, each on a
//! thread of its own under the order timeout, the operator's account per
//! directory, and what an order's end leaves in the shared state.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::json;

use super::schedule::{self, Need};
use super::{
    Acme, Event, IDLE_WAKE, MAX_CONCURRENT_ORDERS, MayOrder, STANDBY_RECHECK, State, Tokens, now,
    order, responder,
};
use vpsie_lb_core::report::EventKind;
use vpsie_lb_host::trigger::Trigger;

/// The operator's account per ACME directory, each behind a lock of its
/// own: two orders at one directory register once, and a directory that
/// never answers holds up only the orders that use it.
type Accounts = Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<instant_acme::Account>>>>>;

/// The ordering thread's own state.
pub(super) struct Worker {
    pub(super) acme: Acme,
    /// The responder's socket until it listens: started with the first
    /// order, so an agent without ACME load balancers opens nothing.
    pub(super) responder: Option<PathBuf>,
    pub(super) may_order: Option<MayOrder>,
    pub(super) orders: Arc<Orders>,
}

/// What every order thread shares.
pub(super) struct Orders {
    pub(super) tokens: Tokens,
    pub(super) ca_file: Option<PathBuf>,
    /// The operator's contact for new accounts.
    pub(super) contact: Option<String>,
    pub(super) timeout: Duration,
    pub(super) accounts: Accounts,
    pub(super) sync: Trigger,
}

/// The next order to place, or how long nothing is due. Load balancers
/// with an order in flight, or whose redirect listener Envoy does not
/// serve yet, are skipped.
pub(super) fn pick(
    s: &State,
    now: i64,
) -> Result<(String, vpsie_lb_model::Acme, &'static str), Duration> {
    let mut next = now.saturating_add(IDLE_WAKE.as_secs() as i64);
    let ready = |lb: &String| !s.ordering.contains(lb);
    // Among those due, the one that started an order longest ago: one load
    // balancer that keeps failing (or renaming) never starves the others.
    let mut best: Option<(i64, &String, &vpsie_lb_model::Acme, &'static str)> = None;
    for (lb, acme) in s.wanted.iter().filter(|(lb, _)| ready(lb)) {
        let why = match schedule::need(acme, s.stored.get(lb), now) {
            Need::Nothing { renew_at } => {
                next = next.min(renew_at);
                continue;
            }
            Need::Order(why) => why,
        };
        let placed = s.placed.get(lb).map(Vec::as_slice).unwrap_or_default();
        let blocked = [
            s.attempts
                .get(lb)
                .filter(|a| !a.may_try(now))
                .map(|a| a.not_before),
            schedule::budget_spent(placed, now),
        ];
        if let Some(until) = blocked.into_iter().flatten().max() {
            next = next.min(until);
            continue;
        }
        let last = s.started.get(lb).copied().unwrap_or(i64::MIN);
        if best.is_none_or(|(b, ..)| last < b) {
            best = Some((last, lb, acme, why));
        }
    }
    match best {
        Some((_, lb, acme, why)) => Ok((lb.clone(), acme.clone(), why)),
        None => Err(Duration::from_secs(next.saturating_sub(now).max(1) as u64)),
    }
}

impl Worker {
    pub(super) fn run(mut self) {
        loop {
            let job = {
                let mut s = self.acme.lock();
                loop {
                    if s.stopping {
                        return;
                    }
                    let picked = if s.ordering.len() < MAX_CONCURRENT_ORDERS {
                        pick(&s, now())
                    } else {
                        Err(IDLE_WAKE)
                    };
                    let may = picked.is_err() || self.may_order.as_ref().is_none_or(|f| f());
                    s.standby = !may;
                    match picked {
                        Ok(job) if may => {
                            s.ordering.insert(job.0.clone());
                            s.started.insert(job.0.clone(), now());
                            break job;
                        }
                        Ok(_) => {
                            s = self.wait(s, STANDBY_RECHECK);
                        }
                        Err(wait) => s = self.wait(s, wait),
                    }
                }
            };
            let (lb, acme, why) = job;
            tracing::info!(phase = "acme", lb_id = %lb, domains = ?acme.domains, reason = why, "ordering a certificate");
            match self.start_responder() {
                Ok(()) => self.spawn_order(lb, acme),
                Err(f) => {
                    self.acme.settle(&lb, &acme, Err(f));
                    self.orders.sync.sync();
                }
            }
        }
    }

    /// Runs one order on a thread of its own, under the order timeout
    /// (the account stage included), and settles it there.
    fn spawn_order(&self, lb: String, acme: vpsie_lb_model::Acme) {
        let (handle, orders) = (self.acme.clone(), self.orders.clone());
        let (lb_for_error, acme_for_error) = (lb.clone(), acme.clone());
        let spawned = std::thread::Builder::new()
            .name("acme-order".into())
            .spawn(move || {
                let result = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(orders.bounded(&handle, &lb, &acme)),
                    Err(e) => Err(order::Failure::unplaced(format!("no runtime: {e}"))),
                };
                handle.settle(&lb, &acme, result);
                orders.sync.sync();
            });
        if let Err(e) = spawned {
            let failure = order::Failure::unplaced(format!("no thread for the order: {e}"));
            self.acme
                .settle(&lb_for_error, &acme_for_error, Err(failure));
        }
    }

    /// Starts the challenge responder if it is not listening yet; a socket
    /// that cannot be bound fails the order, to be retried like one.
    fn start_responder(&mut self) -> Result<(), order::Failure> {
        let Some(path) = &self.responder else {
            return Ok(());
        };
        responder::spawn(path, self.orders.tokens.clone()).map_err(|e| {
            order::Failure::unplaced(format!("acme.responder_socket {}: {e}", path.display()))
        })?;
        tracing::info!(phase = "acme", socket = %path.display(), "acme challenge responder listening");
        self.responder = None;
        Ok(())
    }

    /// Sleeps up to `d`, or until the wanted certificates change.
    fn wait<'a>(&'a self, s: MutexGuard<'a, State>, d: Duration) -> MutexGuard<'a, State> {
        self.acme
            .shared
            .changed
            .wait_timeout(s, d)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
    }
}

impl Orders {
    /// One order, the account stage included, cut at the order timeout.
    async fn bounded(
        &self,
        handle: &Acme,
        lb: &str,
        acme: &vpsie_lb_model::Acme,
    ) -> Result<(String, String), order::Failure> {
        match tokio::time::timeout(self.timeout, self.order(handle, lb, acme)).await {
            Ok(r) => r,
            // Whether the CA took an order is unknown: count it as taken,
            // so the next try waits as after a failed order.
            Err(_) => Err(order::Failure::placed(format!(
                "no certificate within {} s (the directory, the account or the order did not answer)",
                self.timeout.as_secs()
            ))),
        }
    }

    /// The slot of `directory`'s account.
    fn slot(&self, directory: &str) -> Arc<tokio::sync::Mutex<Option<instant_acme::Account>>> {
        let mut accounts = self
            .accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        accounts.entry(directory.to_owned()).or_default().clone()
    }

    /// The operator's account at `directory`: the one in use, the stored
    /// one, or a new one. Orders at one directory wait for each other here.
    async fn account(
        &self,
        handle: &Acme,
        directory: &str,
    ) -> Result<instant_acme::Account, order::Failure> {
        let slot = self.slot(directory);
        let mut held = slot.lock().await;
        if let Some(a) = held.as_ref() {
            return Ok(a.clone());
        }
        let store = &handle.shared.store;
        let a = order::account(
            store,
            directory,
            self.contact.as_deref(),
            self.ca_file.as_deref(),
        )
        .await?;
        *held = Some(a.clone());
        Ok(a)
    }

    /// One order, registering again once if the server lost the account.
    async fn order(
        &self,
        handle: &Acme,
        lb: &str,
        acme: &vpsie_lb_model::Acme,
    ) -> Result<(String, String), order::Failure> {
        let directory = acme.directory_url.as_str();
        let account = self.account(handle, directory).await?;
        let first = order::obtain(&account, lb, acme, &self.tokens).await;
        match &first {
            Err(f) if f.account_gone => {}
            _ => return first,
        }
        tracing::warn!(phase = "acme", directory = %directory, "the acme server does not know our account; registering again");
        *self.slot(directory).lock().await = None;
        if let Err(e) = handle.shared.store.forget_account(directory, None) {
            tracing::warn!(phase = "acme", error = %e, "could not remove the stale account");
        }
        let account = self.account(handle, directory).await?;
        order::obtain(&account, lb, acme, &self.tokens).await
    }
}

impl Acme {
    /// Stores what came, or records why nothing did, and queues the event.
    fn settle(
        &self,
        lb: &str,
        acme: &vpsie_lb_model::Acme,
        result: Result<(String, String), order::Failure>,
    ) {
        let shared = &self.shared;
        let saved = result.and_then(|(key, chain)| {
            shared
                .store
                .save(lb, acme, &key, &chain)
                .map_err(|e| order::Failure::placed(format!("store the certificate: {e}")))
        });
        let mut s = self.lock();
        s.ordering.remove(lb);
        // What reached the CA counts against the load balancer's budget.
        if saved.as_ref().map_or_else(|f| f.order_placed, |_| true) {
            let at = now();
            let mine = s.placed.entry(lb.to_owned()).or_default();
            mine.retain(|t| at - t < schedule::BUDGET_WINDOW_SECS);
            mine.push(at);
        }
        let names = acme.domains.join(", ");
        let event = match saved {
            Ok(stored) => {
                let renewed = s.stored.contains_key(lb);
                s.attempts.remove(lb);
                shared.metrics.order(lb, "issued");
                let until = vpsie_lb_core::time::rfc3339(stored.not_after);
                tracing::info!(phase = "acme", lb_id = %lb, not_after = %until, "certificate stored");
                let word = if renewed { "renewed" } else { "issued" };
                let e = Event {
                    lb: lb.to_owned(),
                    kind: EventKind::CertificateIssued,
                    message: format!("certificate for {names} {word}, valid until {until}"),
                    metadata: json!({"domains": acme.domains, "not_after": until, "renewal": renewed}),
                };
                s.stored.insert(lb.to_owned(), stored);
                e
            }
            Err(f) => {
                let attempts = s.attempts.entry(lb.to_owned()).or_default();
                let wait = attempts.failed(now(), f.order_placed, f.message.clone());
                shared.metrics.order(lb, "failed");
                tracing::warn!(phase = "acme", lb_id = %lb, error = %f.message, retry_in_s = wait, "certificate order failed");
                Event {
                    lb: lb.to_owned(),
                    kind: EventKind::CertificateFailed,
                    message: format!(
                        "certificate for {names} not obtained: {}; next attempt in {wait} s",
                        f.message
                    ),
                    metadata: json!({"domains": acme.domains, "error": f.message, "retry_in_s": wait,
                                     "failures": attempts.failures}),
                }
            }
        };
        s.events.push(event);
        drop(s);
        // A slot is free: the ordering thread may place the next order.
        shared.changed.notify_all();
    }
}
