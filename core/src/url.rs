//! Upstream base URLs: parsing, the `Host` they are asked with, and where a redirect leads.

#[derive(Debug, thiserror::Error)]
/// Why a URL cannot be an upstream.
pub enum UrlError {
    #[error("'{url}' is not a valid URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("'{url}': only http and https upstreams are supported")]
    Scheme { url: String },
}

/// A parsed upstream base URL such as `https://mirror.example/base/`: where a repository's
/// requests go, with the path below the repository prefix appended to `base_path`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamUrl {
    /// `https`.
    pub tls: bool,
    /// A DNS name or an IP literal (IPv6 without brackets).
    pub host: String,
    /// The explicit port, or the scheme's default.
    pub port: u16,
    /// Always ends with `/`.
    pub base_path: String,
}

impl UpstreamUrl {
    /// Parse an `http://` or `https://` base URL. It takes no query, fragment or credentials
    /// (credentials are configured separately, and never written into URLs that get logged).
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        let url = ::url::Url::parse(s).map_err(|e| UrlError::BadUrl {
            url: s.into(),
            reason: e.to_string(),
        })?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(UrlError::Scheme { url: s.into() }),
        };
        let host = match url.host() {
            Some(::url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => {
                return Err(UrlError::BadUrl {
                    url: s.into(),
                    reason: "no host".into(),
                })
            }
        };
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(UrlError::BadUrl {
                url: s.into(),
                reason: "an upstream base URL takes no query, fragment or credentials".into(),
            });
        }
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let mut base_path = url.path().to_string();
        if !base_path.ends_with('/') {
            base_path.push('/');
        }
        Ok(UpstreamUrl {
            tls,
            host,
            port,
            base_path,
        })
    }

    /// Plain HTTP to `addr` at `/`: another proxy of the fleet, or this one.
    pub fn http(addr: std::net::SocketAddr) -> Self {
        UpstreamUrl { tls: false, host: addr.ip().to_string(), port: addr.port(), base_path: "/".into() }
    }

    /// The value for the upstream request's `Host` header.
    pub fn host_header(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Parse an absolute `Location`, or resolve a relative one against this origin.
    pub fn redirect_target(&self, current_path: &str, location: &str) -> Result<(Self, String), UrlError> {
        let scheme = if self.tls { "https" } else { "http" };
        let base = format!("{scheme}://{}{}", self.host_header(), current_path);
        let base = ::url::Url::parse(&base).map_err(|e| UrlError::BadUrl {
            url: base.clone(),
            reason: e.to_string(),
        })?;
        let target = base.join(location).map_err(|e| UrlError::BadUrl {
            url: location.into(),
            reason: e.to_string(),
        })?;
        let mut origin = target.clone();
        origin.set_path("/");
        origin.set_query(None);
        origin.set_fragment(None);
        let up = UpstreamUrl::parse(origin.as_str())?;
        let mut path = target.path().to_string();
        if let Some(q) = target.query() {
            path.push('?');
            path.push_str(q);
        }
        Ok((up, path))
    }

    /// Same scheme, host and port.
    pub fn same_origin(&self, other: &UpstreamUrl) -> bool {
        self.tls == other.tls && self.host.eq_ignore_ascii_case(&other.host) && self.port == other.port
    }
}

impl std::fmt::Display for UpstreamUrl {
    /// The base URL as documents spell it: `https://host[:port]/base/`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.host_header(), self.base_path)
    }
}

/// `https://host:port/path` -> (`https://host:port/`, `/path`).
pub fn split_origin(url: &str) -> Option<(String, String)> {
    let scheme_end = url.find("://")? + 3;
    let path_start = url[scheme_end..].find('/').map_or(url.len(), |i| scheme_end + i);
    Some((format!("{}/", &url[..path_start]), url[path_start..].to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let u = UpstreamUrl::parse("https://mirror.test/base").unwrap();
        assert_eq!((u.tls, u.port, u.base_path.as_str()), (true, 443, "/base/"));
        assert_eq!(u.host_header(), "mirror.test");
        let u = UpstreamUrl::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!((u.tls, u.port, u.base_path.as_str(), u.host_header()), (false, 8000, "/", "127.0.0.1:8000".into()));
        assert!(UpstreamUrl::parse("ftp://x").is_err());
        assert!(UpstreamUrl::parse("not a url").is_err());
        assert!(UpstreamUrl::parse("http://u:p@x/").is_err());
    }

    #[test]
    fn redirects_resolve_relative_and_absolute() {
        let u = UpstreamUrl::parse("http://127.0.0.1:8000/").unwrap();
        let (t, p) = u.redirect_target("/a/b", "c?x=1").unwrap();
        assert!(t.same_origin(&u));
        assert_eq!(p, "/a/c?x=1");
        let (t, p) = u.redirect_target("/a/b", "https://cdn.test/blob/1").unwrap();
        assert!(!t.same_origin(&u));
        assert_eq!((t.host.as_str(), t.tls, p.as_str()), ("cdn.test", true, "/blob/1"));
    }
}
