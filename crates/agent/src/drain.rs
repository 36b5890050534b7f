//! The agent's half of the deregistration delay: the clock the pure
//! [`vpsie_lb_model::drain`] steps are given, and closing what is left on a
//! backend once its delay ends.
//!
//! Envoy stops sending a draining backend new connections, and when the
//! backend is then removed it lets the open ones run to their end: it has no
//! way to close the connections of one host (envoyproxy/envoy#10846,
//! #27863). So the agent closes them itself, through the kernel's socket
//! destroy (`ss -K`, iproute2), which needs `CAP_NET_ADMIN`; the packaged
//! unit grants it. Envoy sees the upstream connection aborted and closes the
//! client's side, as after any backend failure.
//!
//! The running drains are saved beside last-known-good, so that an agent
//! restarted while Envoy serves on (under systemd) resumes them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vpsie_lb_model::drain::SavedDrain;

/// The running drains' file in the state directory.
pub const SAVED_FILE: &str = "draining.json";

/// One saved drain, as the file holds it.
#[derive(Serialize, Deserialize)]
struct Wire {
    lb: String,
    pool: String,
    id: String,
    ip: IpAddr,
    port: u16,
    weight: u32,
    until_ms: u64,
}

/// Saves `drains` in `state_dir` in one rename, or removes the file when
/// there are none; an error names the file.
pub fn save(state_dir: &Path, drains: &[SavedDrain]) -> Result<(), String> {
    let path = state_dir.join(SAVED_FILE);
    let done = if drains.is_empty() {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    } else {
        let wire: Vec<Wire> = drains
            .iter()
            .map(|d| Wire {
                lb: d.lb.clone(),
                pool: d.pool.clone(),
                id: d.id.clone(),
                ip: d.ip,
                port: d.port,
                weight: d.weight,
                until_ms: d.until_ms,
            })
            .collect();
        let json = serde_json::to_vec_pretty(&wire).map_err(std::io::Error::other);
        json.and_then(|j| crate::fsutil::write_atomic(&path, &j, 0o644))
    };
    done.map_err(|e| format!("{}: {e}", path.display()))
}

/// The drains the last run saved in `state_dir`: none when it saved none;
/// an error names the file.
pub fn load(state_dir: &Path) -> Result<Vec<SavedDrain>, String> {
    let path = state_dir.join(SAVED_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The drains a saved file holds. The file is the agent's own, but it sits
/// on disk where anything may have touched it, so any bytes give an error,
/// never a panic (a fuzz target holds it to that).
pub fn parse(bytes: &[u8]) -> Result<Vec<SavedDrain>, String> {
    let wire: Vec<Wire> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(wire
        .into_iter()
        .map(|w| SavedDrain {
            lb: w.lb,
            pool: w.pool,
            id: w.id,
            ip: w.ip,
            port: w.port,
            weight: w.weight,
            until_ms: w.until_ms,
        })
        .collect())
}

/// Milliseconds since the Unix epoch: the drain's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall-clock time of `ms` since the epoch.
pub fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Envoy's processes: those run with `bootstrap` as an argument (the
/// bootstrap the agent writes, whoever started Envoy). Validate-mode runs
/// have bootstraps of their own, so they are not among them.
fn envoy_pids(bootstrap: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let want = bootstrap.as_os_str().as_encoded_bytes();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == want))
        })
        .collect()
}

/// How Envoy's sockets are told from every other process's.
#[derive(Debug, Default, PartialEq, Eq)]
struct Owner {
    /// Socket inodes of Envoy's descriptors, where they can be read (Envoy
    /// is the agent's child, or runs as its user).
    inodes: BTreeSet<u64>,
    /// The users of the Envoys whose descriptors cannot be read (Envoy runs
    /// under a user of its own, as the package does): their sockets.
    uids: BTreeSet<u32>,
}

impl Owner {
    /// The owner of the sockets of processes `pids`.
    fn of(pids: &[u32]) -> Owner {
        let mut owner = Owner::default();
        for pid in pids {
            match std::fs::read_dir(format!("/proc/{pid}/fd")) {
                Ok(fds) => owner.inodes.extend(fds.filter_map(|fd| {
                    let target = std::fs::read_link(fd.ok()?.path()).ok()?;
                    socket_inode(target.to_str()?)
                })),
                // Root's sockets show no uid: they would be everyone's.
                Err(_) => owner.uids.extend(uid_of(*pid).filter(|u| *u != 0)),
            }
        }
        owner
    }

    /// Whether socket `s` is Envoy's.
    fn owns(&self, s: &Socket) -> bool {
        self.inodes.contains(&s.inode) || self.uids.contains(&s.uid)
    }
}

/// `socket:[123]` -> 123.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The real user of process `pid`.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One TCP socket as `ss -H -t -n -e` prints it.
#[derive(Debug, PartialEq, Eq)]
struct Socket {
    local: String,
    peer: String,
    inode: u64,
    /// 0 when `ss` prints none (root's sockets).
    uid: u32,
}

/// Parses one line of `ss -H -t -n -e state connected ...`: the state,
/// the two queues, the local and the peer address, then `key:value`
/// details.
fn parse_socket(line: &str) -> Option<Socket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (local, peer) = (fields.get(3)?, fields.get(4)?);
    let detail = |key: &str| {
        fields[5..]
            .iter()
            .find_map(|f| f.strip_prefix(key)?.parse::<u64>().ok())
    };
    Some(Socket {
        local: (*local).to_owned(),
        peer: (*peer).to_owned(),
        inode: detail("ino:")?,
        uid: detail("uid:").map_or(0, |u| u32::try_from(u).unwrap_or(u32::MAX)),
    })
}

/// `host:port` (IPv6 hosts in brackets) as `ss` filter words for `side`
/// (`src` or `dst`).
fn endpoint_filter(side: &str, addr: &str) -> Option<Vec<String>> {
    let (host, port) = addr.rsplit_once(':')?;
    let port_key = if side == "src" { "sport" } else { "dport" };
    Some(vec![
        side.to_owned(),
        host.to_owned(),
        port_key.to_owned(),
        "=".to_owned(),
        format!(":{port}"),
    ])
}

/// The `ss` filter for connections to `ip:port`.
fn filter(ip: IpAddr, port: u16) -> Vec<String> {
    let dst = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let mut words = vec!["state".to_owned(), "connected".to_owned()];
    words.extend(endpoint_filter("dst", &format!("{dst}:{port}")).unwrap_or_default());
    words
}

/// Runs `ss` with `args` (after `-H -t -n`); its output.
fn ss(args: &[String]) -> Result<String, String> {
    let out = Command::new("ss")
        .args(["-H", "-t", "-n"])
        .args(args)
        .output()
        .map_err(|e| format!("run ss (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ss failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The TCP connections of this host to `ip:port` that `owner` holds.
fn connections(owner: &Owner, ip: IpAddr, port: u16) -> Result<Vec<Socket>, String> {
    let mut args = vec!["-e".to_owned()];
    args.extend(filter(ip, port));
    Ok(ss(&args)?
        .lines()
        .filter_map(parse_socket)
        .filter(|s| owner.owns(s))
        .collect())
}

/// Closes one connection, named by both of its ends, so nothing else can match.
fn close(s: &Socket) -> Result<(), String> {
    let mut args = vec!["-K".to_owned(), "state".to_owned(), "connected".to_owned()];
    let ends = endpoint_filter("src", &s.local).zip(endpoint_filter("dst", &s.peer));
    let (src, dst) = ends.ok_or_else(|| format!("unreadable socket {} {}", s.local, s.peer))?;
    args.extend(src);
    args.extend(dst);
    ss(&args).map(|_| ())
}

/// How the agent tells Envoy's processes and sockets from every other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyProcess {
    /// The bootstrap Envoy runs on: an argument of its command line.
    pub bootstrap: std::path::PathBuf,
    /// Envoy's admin socket, when it is a Unix socket: Envoy created it,
    /// so its owner is Envoy's user even where Envoy's processes are hidden
    /// from the agent (the package's unit has `ProtectProc=invisible`).
    pub admin_socket: Option<std::path::PathBuf>,
}

impl EnvoyProcess {
    /// Whose sockets are Envoy's, or why that cannot be known.
    fn owner(&self) -> Result<Owner, String> {
        use std::os::unix::fs::MetadataExt;
        let mut owner = Owner::of(&envoy_pids(&self.bootstrap));
        if owner.inodes.is_empty() && owner.uids.is_empty() {
            let uid = self
                .admin_socket
                .as_ref()
                .and_then(|s| std::fs::metadata(s).ok());
            owner.uids.extend(uid.map(|m| m.uid()).filter(|u| *u != 0));
        }
        if owner.inodes.is_empty() && owner.uids.is_empty() {
            return Err(format!(
                "envoy's connections cannot be told from other processes' (no process runs on \
                 {}, or it runs as root unseen): none closed",
                self.bootstrap.display()
            ));
        }
        Ok(owner)
    }
}

/// Closes Envoy's TCP connections to `ip:port` and returns how many there
/// were; an error says how many are still open, and why. Other processes'
/// connections to the same address are never touched: a document names any
/// address it likes, and must not reach what else the VM talks to.
pub fn close_connections(envoy: &EnvoyProcess, ip: IpAddr, port: u16) -> Result<usize, String> {
    let owner = envoy.owner()?;
    let found = connections(&owner, ip, port)?;
    for s in &found {
        close(s)?;
    }
    if found.is_empty() {
        return Ok(0);
    }
    // `ss -K` lists what it tried; without the capability it closes nothing
    // and says nothing, so count again.
    match connections(&owner, ip, port)?.len() {
        0 => Ok(found.len()),
        left => Err(format!(
            "{left} of {} connections to {ip}:{port} are still open: closing them needs CAP_NET_ADMIN",
            found.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_names_the_endpoint_in_both_families() {
        let v4 = filter("10.0.0.1".parse().expect("ip"), 8080).join(" ");
        assert_eq!(v4, "state connected dst 10.0.0.1 dport = :8080");
        let v6 = filter("2001:db8::1".parse().expect("ip"), 443).join(" ");
        assert_eq!(v6, "state connected dst [2001:db8::1] dport = :443");
    }

    #[test]
    fn sockets_are_read_from_ss_and_closed_by_both_ends() {
        let line =
            "ESTAB 0      0      127.0.0.1:55802 127.0.0.1:34581 ino:3970596 sk:1 cgroup:/ <->";
        let s = parse_socket(line).expect("parsed");
        assert_eq!((s.inode, s.uid), (3_970_596, 0));
        let line = "ESTAB 0 0 [2001:db8::2]:40000 [2001:db8::1]:443 uid:998 ino:7 sk:2 <->";
        let s = parse_socket(line).expect("parsed");
        assert_eq!((s.local.as_str(), s.uid), ("[2001:db8::2]:40000", 998));
        let src = endpoint_filter("src", &s.local).expect("src").join(" ");
        assert_eq!(src, "src [2001:db8::2] sport = :40000");
        assert_eq!(parse_socket("ESTAB 0 0"), None);
    }

    #[test]
    fn envoys_sockets_are_known_by_inode_or_by_its_own_user() {
        let socket = |inode, uid| Socket {
            local: String::new(),
            peer: String::new(),
            inode,
            uid,
        };
        let owner = Owner {
            inodes: [7].into(),
            uids: [998].into(),
        };
        assert!(owner.owns(&socket(7, 0)));
        assert!(owner.owns(&socket(8, 998)));
        assert!(!owner.owns(&socket(8, 0)), "another process's socket");
        assert_eq!(socket_inode("socket:[42]"), Some(42));
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn regression_drains_closed_nothing_where_envoys_processes_are_hidden() {
        use std::os::unix::fs::MetadataExt;
        // No process runs on this bootstrap (as where /proc hides Envoy's):
        // the admin socket's owner is Envoy's user.
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("admin.sock");
        let _listening = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let envoy = EnvoyProcess {
            bootstrap: dir.path().join("bootstrap.yaml"),
            admin_socket: Some(socket.clone()),
        };
        let uid = std::fs::metadata(&socket).expect("stat").uid();
        match envoy.owner() {
            // Root owns the socket here: root's uid tells nobody apart.
            Err(e) if uid == 0 => assert!(e.contains("none closed"), "{e}"),
            Ok(owner) => assert_eq!(owner.uids, [uid].into()),
            Err(e) => panic!("{e}"),
        }
        let nothing = EnvoyProcess {
            admin_socket: None,
            ..envoy
        };
        assert!(nothing.owner().is_err(), "nothing known must close nothing");
    }

    #[test]
    fn envoy_is_found_by_its_bootstrap_argument_and_nothing_else() {
        let me = std::process::id();
        let exe = std::env::current_exe().expect("exe");
        assert!(envoy_pids(&exe).contains(&me), "argv[0] is an argument");
        assert!(envoy_pids(Path::new("/no/such/bootstrap.yaml")).is_empty());
        // Our own descriptors are readable: we are known by inode.
        let owner = Owner::of(&[me]);
        assert!(owner.uids.is_empty());
    }

    #[test]
    fn saved_drains_load_back_and_none_removes_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()), Ok(vec![]));
        let drains = vec![SavedDrain {
            lb: "web".into(),
            pool: "default".into(),
            id: "a".into(),
            ip: "2001:db8::1".parse().expect("ip"),
            port: 8080,
            weight: 3,
            until_ms: 1_800_000_000_000,
        }];
        save(dir.path(), &drains).expect("save");
        assert_eq!(load(dir.path()), Ok(drains));
        save(dir.path(), &[]).expect("save none");
        assert!(!dir.path().join(SAVED_FILE).exists());
        save(dir.path(), &[]).expect("none again");
    }

    #[test]
    fn a_corrupt_drains_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(SAVED_FILE), "[{").expect("write");
        let e = load(dir.path()).expect_err("corrupt");
        assert!(e.contains("draining.json"), "{e}");
    }
}
