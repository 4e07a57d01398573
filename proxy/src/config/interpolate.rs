//! `${VAR}` in the config file: which fields may carry it, and what an unset variable means
//! for each (a repository disabled, a fleet left in-process, credentials left anonymous, or an
//! error naming the key).

use super::{Config, ConfigError, Credentials, DisabledRepository, Secret, DISABLE_VARIABLE};

/// Why a value could not be interpolated.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    #[error("environment variable {0} is not set")]
    Unset(String),
    #[error("{0}")]
    Malformed(String),
}

/// Replace each `${NAME}` with the variable's value; `${NAME:-default}` gives the default
/// when NAME is unset or empty; `$$` is a literal `$`.
pub fn interpolate(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let end = after.find('}').ok_or_else(|| InterpolationError::Malformed(format!("unterminated '${{' in '{value}'")))?;
            let (name, default) = match after[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&after[..end], None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(InterpolationError::Malformed(format!("'${{{name}}}' is not a valid variable name")));
            }
            let v = env(name)
                .filter(|v| !v.is_empty())
                .or_else(|| default.map(str::to_string))
                .ok_or_else(|| InterpolationError::Unset(name.into()))?;
            out.push_str(&v);
            rest = &after[end + 1..];
        } else {
            out.push('$');
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// An error about a secret's value that does not repeat the value.
fn redacted(e: InterpolationError) -> InterpolationError {
    match e {
        InterpolationError::Malformed(_) => InterpolationError::Malformed("a malformed ${...} reference (the value is not shown: it is a secret)".into()),
        unset => unset,
    }
}

/// Interpolate every field that may carry `${VAR}`; returns the repositories left out.
pub(super) fn interpolate_config(config: &mut Config, file: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<DisabledRepository>, ConfigError> {
    let invalid = |key: &str, e: InterpolationError| ConfigError::Invalid { file: file.to_string(), key: key.to_string(), message: e.to_string() };
    // An optional value whose variable is unset is dropped; any other error names the key.
    let optional = |key: &str, value: &mut Option<String>| -> Result<Option<String>, ConfigError> {
        let Some(v) = value.as_ref() else { return Ok(None) };
        match interpolate(v, env) {
            Ok(done) => {
                *value = Some(done);
                Ok(None)
            }
            Err(InterpolationError::Unset(variable)) => {
                *value = None;
                Ok(Some(variable))
            }
            Err(e) => Err(invalid(key, e)),
        }
    };
    config.listen = interpolate(&config.listen, env).map_err(|e| invalid("listen", e))?;
    config.admin_listen = interpolate(&config.admin_listen, env).map_err(|e| invalid("admin_listen", e))?;
    config.cache.dir = interpolate(&config.cache.dir, env).map_err(|e| invalid("cache.dir", e))?;
    if let Some(dir) = config.auth.audit_dir.as_mut() {
        *dir = interpolate(dir, env).map_err(|e| invalid("auth.audit_dir", e))?;
    }
    let fleet = &mut config.fleet;
    if let Some(variable) = optional("fleet.redis", &mut fleet.redis)? {
        tracing::warn!("fleet.redis unset (${{{variable}}}): metadata stays in-process");
    }
    optional("fleet.advertise", &mut fleet.advertise)?;
    for (i, member) in fleet.members.iter_mut().enumerate() {
        *member = interpolate(member, env).map_err(|e| invalid(&format!("fleet.members[{i}]"), e))?;
    }
    if let Some(secret) = fleet.secret.take() {
        // Unset, it is no secret: an error for a fleet, nothing for a proxy alone.
        fleet.secret = match interpolate(&secret.0, env).map_err(redacted) {
            Ok(s) => Some(Secret(s)),
            Err(InterpolationError::Unset(variable)) if fleet.is_shared() || config.origin.is_some() => {
                return Err(invalid("fleet.secret", InterpolationError::Malformed(format!("environment variable {variable} is not set, and a fleet needs its secret"))));
            }
            Err(InterpolationError::Unset(_)) => None,
            Err(e) => return Err(invalid("fleet.secret", e)),
        };
    }
    for (i, oidc) in config.auth.oidc.iter_mut().enumerate() {
        oidc.issuer = interpolate(&oidc.issuer, env).map_err(|e| invalid(&format!("auth.oidc[{i}].issuer"), e))?;
        if let Some(url) = oidc.jwks_url.as_mut() {
            *url = interpolate(url, env).map_err(|e| invalid(&format!("auth.oidc[{i}].jwks_url"), e))?;
        }
    }
    if let Some(origin) = config.origin.as_mut() {
        match interpolate(&origin.url, env) {
            Ok(url) => origin.url = url,
            Err(InterpolationError::Unset(variable)) => {
                tracing::warn!("origin disabled: its url uses ${{{variable}}}, which is not set");
                config.origin = None;
            }
            Err(e) => return Err(invalid("origin.url", e)),
        }
    }

    let mut disabled = Vec::new();
    // HANGAR_DISABLE=a,b turns repositories off by name, whatever their upstreams say (a
    // default such as `${VAR:-https://...}` cannot be unset from the environment).
    let listed: Vec<String> = env(DISABLE_VARIABLE).unwrap_or_default().split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();
    if let Some(unknown) = listed.iter().find(|n| !config.repositories.iter().any(|r| &r.name == *n)) {
        let names: Vec<&str> = config.repositories.iter().map(|r| r.name.as_str()).collect();
        return Err(invalid(DISABLE_VARIABLE, InterpolationError::Malformed(format!("'{unknown}' is not a repository here (the repositories are: {})", names.join(", ")))));
    }
    let mut kept = Vec::with_capacity(config.repositories.len());
    for (i, mut repo) in std::mem::take(&mut config.repositories).into_iter().enumerate() {
        let key = |field: &str| format!("repository[{i}].{field}");
        let off = |variable: String| DisabledRepository { name: repo.name.clone(), prefix: super::normalize_prefix(&repo.prefix), format: repo.format, variable };
        if listed.contains(&repo.name) {
            disabled.push(off(DISABLE_VARIABLE.to_string()));
            continue;
        }
        let upstreams = interpolate(&repo.upstream, env).and_then(|url| Ok((url, repo.files_upstream.as_deref().map(|f| interpolate(f, env)).transpose()?)));
        let (upstream, files) = match upstreams {
            Ok(found) => found,
            Err(InterpolationError::Unset(variable)) => {
                disabled.push(off(variable));
                continue;
            }
            Err(e) => return Err(invalid(&key("upstream"), e)),
        };
        repo.upstream = upstream;
        repo.files_upstream = files;
        let mut realms = Vec::with_capacity(repo.token_realms.len());
        for realm in std::mem::take(&mut repo.token_realms) {
            match interpolate(&realm, env) {
                Ok(host) => realms.push(host),
                Err(InterpolationError::Unset(_)) => {}
                Err(e) => return Err(invalid(&key("token_realms"), e)),
            }
        }
        repo.token_realms = realms;
        if let Some(c) = repo.credentials.take() {
            match (interpolate(&c.username, env), interpolate(&c.password, env).map_err(redacted)) {
                (Ok(username), Ok(password)) => repo.credentials = Some(Credentials { username, password }),
                (Err(InterpolationError::Unset(variable)), _) | (_, Err(InterpolationError::Unset(variable))) => {
                    tracing::warn!(repository = %repo.name, "credentials use ${{{variable}}}, which is not set: anonymous");
                }
                (Err(e), _) | (_, Err(e)) => return Err(invalid(&key("credentials"), e)),
            }
        }
        kept.push(repo);
    }
    config.repositories = kept;
    Ok(disabled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn env(name: &str) -> Option<String> {
        (name == "UP").then(|| "http://127.0.0.1:9".into())
    }

    #[test]
    fn interpolates_and_escapes() {
        assert_eq!(interpolate("a${UP}b$$", &env).unwrap(), "ahttp://127.0.0.1:9b$");
        assert_eq!(interpolate("${NOPE}", &env), Err(InterpolationError::Unset("NOPE".into())));
        assert!(matches!(interpolate("${UP", &env), Err(InterpolationError::Malformed(_))));
        assert_eq!(interpolate("${NOPE:-https://d.test/v2/}", &env).unwrap(), "https://d.test/v2/");
        assert_eq!(interpolate("${UP:-https://d.test/}/x", &env).unwrap(), "http://127.0.0.1:9/x");
    }

    #[test]
    fn a_malformed_secret_is_not_repeated_in_the_error() {
        let text = "listen = \"127.0.0.1:1\"\n[fleet]\nmembers = [\"127.0.0.1:1\"]\nsecret = \"hunter2-${oops\"\n";
        let err = Config::from_toml(text, "f.toml", &env).unwrap_err().to_string();
        assert!(err.starts_with("f.toml: fleet.secret:") && !err.contains("hunter2"), "{err}");
    }
}
