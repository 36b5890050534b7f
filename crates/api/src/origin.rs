//! Where a URL goes: scheme, host and port, compared the way the network
//! does (case-insensitively), with user info refused. Decides which
//! redirects the API client follows and whether `vpsie.api_url` may be
//! plain http.

/// The parts of an absolute URL that decide where it goes, compared the way
/// the network does: scheme and host case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`, lowercased.
    pub scheme: String,
    /// The host, lowercased; an IPv6 literal without its brackets.
    pub host: String,
    /// The port, if the URL names one.
    pub port: Option<u16>,
}

impl Origin {
    /// Parses `scheme://host[:port]/...`. A URL with userinfo
    /// (`http://127.0.0.1:80@evil.example/`) is refused: its host is not
    /// what a reader sees first.
    pub fn parse(url: &str) -> Result<Origin, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not an absolute url"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("{url:?} must be an https:// url"));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            return Err(format!("{url:?} has user info before its host; refused"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: bad port {p:?}"))
            })
            .transpose()?;
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether the host is loopback (`localhost`, 127.0.0.0/8, ::1).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
    }

    /// The port, with the scheme's default filled in.
    fn effective_port(&self) -> u16 {
        self.port
            .unwrap_or(if self.scheme == "https" { 443 } else { 80 })
    }
}

/// Where a redirect from `current` to `location` leads, if we follow it:
/// the same host and port only, and never from https to http.
pub fn redirect_target(current: &str, location: &str) -> Result<String, String> {
    let refuse = |why: &str| format!("refused redirect to {location:?}: {why}");
    let from = Origin::parse(current).map_err(|e| refuse(&e))?;
    let next = if location.starts_with('/') && !location.starts_with("//") {
        let (_, rest) = current.split_once("://").unwrap_or(("", current));
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        format!("{}://{authority}{location}", from.scheme)
    } else {
        location.to_owned()
    };
    let to = Origin::parse(&next).map_err(|e| refuse(&e))?;
    if to.host != from.host || to.effective_port() != from.effective_port() {
        return Err(refuse("only the same host and port"));
    }
    if from.scheme == "https" && to.scheme == "http" {
        return Err(refuse("never https to http"));
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_on_the_same_host_and_never_downgrade() {
        let from = "https://api.vpsie.com/v1/loadbalancers/a";
        assert_eq!(
            redirect_target(from, "/v2/loadbalancers/a"),
            Ok("https://api.vpsie.com/v2/loadbalancers/a".into())
        );
        assert_eq!(
            redirect_target(from, "https://api.vpsie.com/x"),
            Ok("https://api.vpsie.com/x".into())
        );
        assert!(
            redirect_target(from, "http://api.vpsie.com/x").is_err(),
            "https to http"
        );
        assert!(
            redirect_target(from, "https://evil.example.com/x").is_err(),
            "another host"
        );
        assert!(
            redirect_target(from, "https://api.vpsie.com:8443/x").is_err(),
            "another port"
        );
        assert!(
            redirect_target("http://127.0.0.1:8480/v1/a", "https://127.0.0.1:8480/v1/a").is_ok(),
            "upgrade is fine"
        );
        assert!(redirect_target(from, "").is_err());
    }

    #[test]
    fn regression_redirect_downgrade_was_case_sensitive() {
        let from = "https://api.vpsie.com/v1/loadbalancers/a";
        for bad in [
            "HTTP://api.vpsie.com/x",
            "Http://API.VPSIE.COM/x",
            "http://api.vpsie.com:443/x",
            "https://api.vpsie.com@evil.example/x",
            "https://evil.example#@api.vpsie.com/x",
            "//evil.example/x",
        ] {
            assert!(redirect_target(from, bad).is_err(), "{bad} must be refused");
        }
        assert!(redirect_target(from, "HTTPS://API.vpsie.com/v2").is_ok());
        assert!(redirect_target(from, "https://api.vpsie.com:443/v2").is_ok());
    }

    #[test]
    fn regression_userinfo_passed_the_loopback_rule() {
        let o = |u: &str| Origin::parse(u);
        assert!(o("http://127.0.0.1:80@evil.example/").is_err());
        assert!(o("http://user@127.0.0.1/").is_err());
        assert!(o("HTTP://LOCALHOST:8080/v1").expect("valid").is_loopback());
        assert!(o("http://[::1]:9/v1").expect("valid").is_loopback());
        assert!(
            !o("http://127.0.0.1.evil.com/v1")
                .expect("valid")
                .is_loopback()
        );
        assert!(o("ftp://x/").is_err());
        assert!(o("http://:80/").is_err());
    }
}
