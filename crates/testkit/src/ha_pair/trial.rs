//! The fault-and-return procedures the test asserts on and the benchmark
//! measures, written once.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::{Client, Fault, Outcome, Pair, VIP1, VIP2, outcome};
use crate::try_poll_until;

/// One fault on the master and the master's return, as measured.
#[derive(Debug, Clone)]
pub struct Trial {
    /// What was done.
    pub fault: Fault,
    /// The node that was master and got the fault.
    pub master: usize,
    /// The traffic from the fault until well after the other node served.
    pub failover: Outcome,
    /// The traffic from the old master's return until it settled as backup.
    pub comeback: Outcome,
    /// Who held the address after the return (the other node alone, if
    /// nothing failed back).
    pub holders_after: Vec<usize>,
}

/// Requests that start after a moment before its window is closed: every
/// request started inside has ended by then (a request lasts at most
/// both timeouts).
const SETTLE_REQUESTS: usize = 400;

impl Pair {
    /// The node that alone holds `vip`, once one does.
    pub fn sole_holder(&self, vip: Ipv4Addr, timeout: Duration) -> Result<usize, String> {
        try_poll_until(&format!("one holder of {vip}"), timeout, || {
            match self.holders(vip).as_slice() {
                [one] => Ok(*one),
                other => Err(format!("held by {other:?}")),
            }
        })
    }

    /// Injects `fault` into the master of the first virtual IP, waits until
    /// the other node serves it and the traffic settled, heals the fault,
    /// and waits until the old master is back as backup and the traffic
    /// settled again.
    pub fn fail_and_return(&self, client: &Client, fault: Fault) -> Result<Trial, String> {
        let master = self.sole_holder(VIP1, Duration::from_secs(20))?;
        let other = 1 - master;
        let t0 = Instant::now();
        self.inject(master, fault)?;
        wait_served_by(client, VIP1, self.addr(other), t0)?;
        let end = settle(client)?;
        let failover = outcome(&client.samples(), VIP1, self.addr(master), t0, end);
        let back = Instant::now();
        self.heal(master, fault)?;
        self.wait_fit(master, Duration::from_secs(60))?;
        self.wait_state(master, "vpsie_lb_1", "backup", Duration::from_secs(30))?;
        // Two seconds of the old master being back, in the window.
        wait_requests(client, Instant::now(), SETTLE_REQUESTS)?;
        let end = settle(client)?;
        let comeback = outcome(&client.samples(), VIP1, self.addr(master), back, end);
        Ok(Trial {
            fault,
            master,
            failover,
            comeback,
            holders_after: self.holders(VIP1),
        })
    }

    /// Kills the master's agent while its Envoy serves, lets four seconds
    /// of traffic pass (more than the check's `fall` runs), and starts the
    /// agent again. Nothing should move and nothing should fail.
    pub fn agent_dies(&self, client: &Client) -> Result<Trial, String> {
        let master = self.sole_holder(VIP1, Duration::from_secs(20))?;
        let t0 = Instant::now();
        self.inject(master, Fault::KillAgent)?;
        wait_requests(client, t0, 800)?;
        let holders_after = self.holders(VIP1);
        let end = settle(client)?;
        let window = outcome(&client.samples(), VIP1, self.addr(master), t0, end);
        self.check(master)
            .map_err(|e| format!("the check failed without the agent: {e}"))?;
        let back = Instant::now();
        self.heal(master, Fault::KillAgent)?;
        wait_requests(client, back, SETTLE_REQUESTS)?;
        let end = settle(client)?;
        let comeback = outcome(&client.samples(), VIP1, self.addr(master), back, end);
        Ok(Trial {
            fault: Fault::KillAgent,
            master,
            failover: window,
            comeback,
            holders_after,
        })
    }
}

/// Active-active with one node lost and back, as measured.
#[derive(Debug, Clone)]
pub struct SharedTrial {
    /// Traffic to node 0's address from the cut until the survivor served it.
    pub vip1_moved: Outcome,
    /// Traffic to the survivor's own address meanwhile.
    pub survivor_own: Outcome,
    /// The holders of the two addresses while node 0 was cut.
    pub holders_during: [usize; 2],
    /// Traffic to node 0's address while it took it back.
    pub vip1_returned: Outcome,
    /// The holders after it did.
    pub holders_after: [usize; 2],
}

impl Pair {
    /// Active-active: checks each node serves its own address, cuts node 0
    /// off, waits until node 1 serves both, mends node 0 and waits until it
    /// serves its own again (active-active takes addresses back).
    pub fn both_serve_through_one(&self, client: &Client) -> Result<SharedTrial, String> {
        let t0 = Instant::now();
        wait_served_by(client, VIP1, self.addr(0), t0)?;
        wait_served_by(client, VIP2, self.addr(1), t0)?;
        let timeout = Duration::from_secs(20);
        let both = |pair: &Pair| -> Result<[usize; 2], String> {
            Ok([
                pair.sole_holder(VIP1, timeout)?,
                pair.sole_holder(VIP2, timeout)?,
            ])
        };
        let cut = Instant::now();
        self.inject(0, Fault::CutLink)?;
        wait_served_by(client, VIP1, self.addr(1), cut)?;
        let holders_during = both(self)?;
        let end = settle(client)?;
        let samples = client.samples();
        let vip1_moved = outcome(&samples, VIP1, self.addr(0), cut, end);
        let survivor_own = outcome(&samples, VIP2, self.addr(0), cut, end);
        let mended = Instant::now();
        self.heal(0, Fault::CutLink)?;
        wait_served_by(client, VIP1, self.addr(0), mended)?;
        let end = settle(client)?;
        Ok(SharedTrial {
            vip1_moved,
            survivor_own,
            holders_during,
            vip1_returned: outcome(&client.samples(), VIP1, self.addr(1), mended, end),
            holders_after: both(self)?,
        })
    }
}

/// Waits until a new-connection request to `vip` that started after `t0`
/// was served by the node at `addr`.
pub fn wait_served_by(
    client: &Client,
    vip: Ipv4Addr,
    addr: Ipv4Addr,
    t0: Instant,
) -> Result<(), String> {
    try_poll_until(
        &format!("{vip} served by {addr}"),
        Duration::from_secs(30),
        || {
            client
                .samples()
                .iter()
                .any(|s| s.vip == vip && !s.keep_alive && s.at >= t0 && s.result == Ok(addr))
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        },
    )
}

/// Waits until `n` requests started after `t`: a stretch of traffic
/// measured in requests, not in sleep.
pub fn wait_requests(client: &Client, t: Instant, n: usize) -> Result<(), String> {
    try_poll_until(&format!("{n} requests"), Duration::from_secs(60), || {
        let c = client.count_since(t);
        (c >= n).then_some(()).ok_or_else(|| format!("{c} so far"))
    })
}

/// Lets traffic run until every request started before now has ended;
/// returns now, the end of the window that can be judged.
fn settle(client: &Client) -> Result<Instant, String> {
    let end = Instant::now();
    wait_requests(client, end, SETTLE_REQUESTS)?;
    Ok(end)
}
