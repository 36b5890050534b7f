//! `notify_command`: the operator's hook for clouds where a floating IP
//! moves through the provider's API, not by gratuitous ARP.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Record;

/// How often a running hook is looked at.
const POLL: Duration = Duration::from_millis(20);
/// The tail of the hook's stderr kept in the record.
const STDERR_KEPT: usize = 400;

/// Runs `command` (no shell) with the record in its environment, waits at
/// most `timeout`, and says how it ended, for the record and the status.
pub fn run(command: &[String], record: &Record, timeout: Duration) -> String {
    let Some((program, args)) = command.split_first() else {
        return "not run: the command is empty".into();
    };
    let child = Command::new(program)
        .args(args)
        .env("VPSIE_LB_HA_INSTANCE", &record.instance)
        .env("VPSIE_LB_HA_STATE", record.state.as_str())
        .env("VPSIE_LB_HA_VIRTUAL_IPS", record.virtual_ips.join(" "))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return format!("not run: {program}: {e}"),
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.by_ref().take(64 * 1024).read_to_string(&mut stderr);
    }
    let tail: String = {
        let t = stderr.trim();
        let start = t
            .char_indices()
            .rev()
            .nth(STDERR_KEPT)
            .map_or(0, |(i, _)| i);
        t[start..].to_owned()
    };
    match status {
        None => format!("killed after {}s", timeout.as_secs_f64()),
        Some(s) if s.success() => "exit 0".into(),
        Some(s) => match (s.code(), tail.is_empty()) {
            (Some(c), true) => format!("exit {c}"),
            (Some(c), false) => format!("exit {c}: {tail}"),
            (None, _) => format!("killed by a signal: {s}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::State;

    fn record() -> Record {
        Record {
            instance: "vpsie_lb_1".into(),
            state: State::Master,
            since: "now".into(),
            virtual_ips: vec!["192.0.2.10/24".into()],
            notify_command: None,
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn the_hook_sees_the_record_and_its_end_is_told() {
        let ok = run(
            &sh(r#"test "$VPSIE_LB_HA_STATE $VPSIE_LB_HA_VIRTUAL_IPS" = "master 192.0.2.10/24""#),
            &record(),
            Duration::from_secs(10),
        );
        assert_eq!(ok, "exit 0");
        let failed = run(
            &sh("echo 'api said no' >&2; exit 3"),
            &record(),
            Duration::from_secs(10),
        );
        assert_eq!(failed, "exit 3: api said no");
        let missing = run(
            &["/nonexistent/hook".to_owned()],
            &record(),
            Duration::from_secs(1),
        );
        assert!(
            missing.starts_with("not run: /nonexistent/hook"),
            "{missing}"
        );
    }

    #[test]
    fn a_hook_that_hangs_is_killed_at_its_timeout() {
        let hung = run(&sh("exec sleep 30"), &record(), Duration::from_millis(200));
        assert_eq!(hung, "killed after 0.2s");
    }
}
