//! Network namespaces joined by a bridge in a namespace of its own: a
//! small L2 network on this machine that no packet leaves. Needs root.
//!
//! A socket belongs to the namespace it was created in, whichever thread
//! later uses it; [`in_netns`] creates sockets (listeners, connections) in
//! a namespace from a thread that entered it.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// One namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`, after removing a leftover of the same name,
    /// with its loopback up.
    pub fn create(name: &str) -> Result<Netns, String> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (`ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` inside it.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside it.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// The IPv4 addresses on `dev`.
    pub fn addresses(&self, dev: &str) -> Vec<Ipv4Addr> {
        let Ok(out) = self.ip(&["-4", "-o", "addr", "show", "dev", dev]) else {
            return Vec::new();
        };
        out.lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet")?;
                words.next()?.split('/').next()?.parse().ok()
            })
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Runs `ip ARGS`; its stdout, or its stderr as the error.
pub fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `f` on a thread that entered namespace `ns`; sockets `f` creates
/// stay in it. Threads `f` spawns are in it too.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns {path}: {e}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| format!("the thread in {ns} panicked"))?
}

/// Namespaces on one bridge: each gets `eth0` with its address in a /24.
#[derive(Debug)]
pub struct Lan {
    /// The bridge's namespace; dropped last.
    bridge: Netns,
    /// Member namespaces by role, in the order they were added.
    members: Vec<(String, Netns)>,
    prefix: String,
}

impl Lan {
    /// A bridge `br0` in namespace `{prefix}-br`. `prefix` names every
    /// namespace and link of this LAN (at most 8 characters, so link names
    /// fit Linux's 15).
    pub fn new(prefix: &str) -> Result<Lan, String> {
        if prefix.len() > 8 {
            return Err(format!("lan prefix {prefix:?} is longer than 8 characters"));
        }
        let bridge = Netns::create(&format!("{prefix}-br"))?;
        bridge.ip(&["link", "add", "br0", "type", "bridge"])?;
        bridge.ip(&["link", "set", "br0", "up"])?;
        Ok(Lan {
            bridge,
            members: Vec::new(),
            prefix: prefix.to_owned(),
        })
    }

    /// Adds namespace `{prefix}-{role}` with `eth0` at `addr/24` on the bridge.
    pub fn add(&mut self, role: &str, addr: Ipv4Addr) -> Result<&Netns, String> {
        let ns = Netns::create(&format!("{}-{role}", self.prefix))?;
        let (outer, inner) = (self.port(role), format!("{}-{role}-n", self.prefix));
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &outer, "netns", self.bridge.name()])?;
        ip(&["link", "set", &inner, "netns", ns.name()])?;
        self.bridge.ip(&["link", "set", &outer, "master", "br0"])?;
        self.bridge.ip(&["link", "set", &outer, "up"])?;
        ns.ip(&["link", "set", &inner, "name", "eth0"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        self.members.push((role.to_owned(), ns));
        Ok(&self.members.last().expect("just pushed").1)
    }

    /// The namespace of `role`.
    pub fn ns(&self, role: &str) -> &Netns {
        &self
            .members
            .iter()
            .find(|(r, _)| r == role)
            .unwrap_or_else(|| panic!("no {role} on this lan"))
            .1
    }

    /// The bridge port of `role` (the far end of its `eth0`).
    fn port(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Cuts `role` off the bridge, as a dead VM or a pulled cable would:
    /// its `eth0` loses carrier.
    pub fn cut(&self, role: &str) -> Result<(), String> {
        self.bridge
            .ip(&["link", "set", &self.port(role), "down"])
            .map(drop)
    }

    /// Whether `role`'s bridge port is up (not [`Lan::cut`]).
    pub fn is_joined(&self, role: &str) -> bool {
        self.bridge
            .ip(&["-o", "link", "show", &self.port(role)])
            .is_ok_and(|out| {
                out.split(['<', '>'])
                    .nth(1)
                    .is_some_and(|flags| flags.split(',').any(|f| f == "UP"))
            })
    }

    /// Joins `role` to the bridge again.
    pub fn mend(&self, role: &str) -> Result<(), String> {
        self.bridge
            .ip(&["link", "set", &self.port(role), "up"])
            .map(drop)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Members first: deleting a namespace deletes its veth ends.
        self.members.clear();
    }
}
