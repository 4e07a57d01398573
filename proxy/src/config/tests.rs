use super::*;

fn env(name: &str) -> Option<String> {
    (name == "UP").then(|| "http://127.0.0.1:9".into())
}

#[test]
fn registry_settings_interpolate_and_unset_credentials_mean_anonymous() {
    let text = |extra: &str| {
        format!("[[repository]]\nname = \"hub\"\nprefix = \"/v2/\"\nformat = \"oci\"\nupstream = \"${{UP}}/v2/\"\nnamespace = \"docker.io\"\ntoken_realms = [\"${{AUTH}}\", \"${{NO_REALM}}\"]\ncredentials = {{ username = \"${{USER_X}}\", password = \"${{PASS}}\" }}\n{extra}")
    };
    let with = |vars: &'static [(&'static str, &'static str)]| move |n: &str| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string()).or_else(|| env(n));
    let anonymous = Config::from_toml(&text(""), "t", &with(&[("AUTH", "auth.test"), ("USER_X", "me")])).unwrap().config;
    assert_eq!(anonymous.repositories[0].token_realms, vec!["auth.test".to_string()]);
    assert!(anonymous.repositories[0].credentials.is_none());
    let user = Config::from_toml(&text(""), "t", &with(&[("USER_X", "me"), ("PASS", "pw")])).unwrap().config;
    let c = user.repositories[0].credentials.as_ref().unwrap();
    assert_eq!((c.username.as_str(), c.basic().as_str()), ("me", "Basic bWU6cHc="));
    assert!(!format!("{c:?}").contains("pw"), "the password is never logged");

    let twice = text("[[repository]]\nname = \"b\"\nprefix = \"/v2/b/\"\nformat = \"oci\"\nupstream = \"${UP}/v2/\"\nnamespace = \"Docker.io\"\n");
    assert!(Config::from_toml(&twice, "t", &env).is_err(), "one repository per namespace");
}

#[test]
fn unset_upstream_disables_only_that_repository() {
    let text = r#"
        [[repository]]
        name = "a"
        prefix = "/a/"
        upstream = "${UP}"
        [[repository]]
        name = "b"
        prefix = "/b/"
        upstream = "${MISSING_B}"
    "#;
    let loaded = Config::from_toml(text, "t.toml", &env).unwrap();
    assert_eq!(loaded.config.repositories.len(), 1);
    assert_eq!(loaded.config.repositories[0].upstream, "http://127.0.0.1:9");
    assert_eq!(loaded.disabled, vec![DisabledRepository { name: "b".into(), prefix: "/b/".into(), format: Default::default(), variable: "MISSING_B".into() }]);
}

#[test]
fn hangar_disable_turns_off_repositories_with_defaults_and_refuses_unknown_names() {
    let text = "[[repository]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"${NOPE:-https://a.test/}\"\n[[repository]]\nname = \"b\"\nprefix = \"/b/\"\nupstream = \"${UP}\"\n";
    let with = |list: &'static str| move |name: &str| if name == "HANGAR_DISABLE" { Some(list.to_string()) } else { env(name) };
    let loaded = Config::from_toml(text, "t.toml", &with(" a ,")).unwrap();
    assert_eq!(loaded.config.repositories.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b"]);
    assert_eq!(loaded.disabled, vec![DisabledRepository { name: "a".into(), prefix: "/a/".into(), format: Default::default(), variable: "HANGAR_DISABLE".into() }]);
    assert!(loaded.disabled[0].why().contains("remove it from HANGAR_DISABLE"));
    let err = Config::from_toml(text, "t.toml", &with("a,typo")).unwrap_err().to_string();
    assert!(err.contains("HANGAR_DISABLE") && err.contains("'typo'"), "{err}");
}

#[test]
fn errors_name_file_and_key() {
    let err = |text: &str| Config::from_toml(text, "f.toml", &env).unwrap_err().to_string();
    let bad_prefix = err("[[repository]]\nname = \"a\"\nprefix = \"a/\"\nupstream = \"http://x\"\n");
    assert!(bad_prefix.starts_with("f.toml: repository[0].prefix:"), "{bad_prefix}");
    let bad_size = err("[cache]\ndisk_bytes = \"lots\"\n");
    assert!(bad_size.contains("f.toml") && bad_size.contains("disk_bytes"), "{bad_size}");
    assert!(err("listen = \"127.0.0.1:1\"\nbogus = 1\n").contains("bogus"));
    let bad_format = err("[[repository]]\nname = \"a\"\nprefix = \"/a/\"\nformat = \"nope\"\nupstream = \"http://x\"\n");
    assert!(bad_format.contains("format") || bad_format.contains("nope"), "{bad_format}");
    let missing = err("[[repository]]\nname = \"a\"\nprefix = \"/a/\"\n");
    assert!(missing.starts_with("f.toml: repository[0].upstream: required"), "{missing}");
    let no_name = err("[[repository]]\nprefix = \"/a/\"\nupstream = \"http://x\"\n");
    assert!(no_name.starts_with("f.toml: repository[0].name:"), "{no_name}");
    let no_origin_url = err("[origin]\nupload_queue = 1\n");
    assert!(no_origin_url.starts_with("f.toml: origin.url: required"), "{no_origin_url}");
    let tls_origin = err("[origin]\nurl = \"https://origin.test/\"\n");
    assert!(tls_origin.contains("origin.url") && tls_origin.contains("http://"), "{tls_origin}");
}

#[test]
fn a_fleet_needs_a_secret_and_one_source_of_members() {
    let err = |text: &str| Config::from_toml(text, "f.toml", &env).unwrap_err().to_string();
    assert!(err("[fleet]\nredis = \"redis://127.0.0.1:1/\"\n").starts_with("f.toml: fleet.secret: required"));
    let me = "listen = \"127.0.0.1:8080\"\n";
    assert!(err(&format!("{me}[fleet]\nmembers = [\"127.0.0.1:8080\"]\n")).starts_with("f.toml: fleet.secret: required"));
    assert!(err(&format!("{me}[fleet]\nmembers = [\"127.0.0.1:8080\"]\nsecret = \"short\"\n")).contains("at least 16"));
    assert!(err("[fleet]\nmembers = [\"here\"]\nsecret = \"0123456789abcdef\"\n").starts_with("f.toml: fleet.members[0]:"));
    assert!(err("[fleet]\nredis = \"redis://x/\"\nmembers = [\"127.0.0.1:1\"]\nsecret = \"0123456789abcdef\"\n").contains("not both"));
    // How this proxy is known to the fleet is checked on the final config (flags included).
    let identity = |text: &str| Config::from_toml(text, "f.toml", &env).unwrap().config.validate_identity("f.toml").map_err(|e| e.to_string());
    let missing_me = identity(&format!("{me}[fleet]\nmembers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nsecret = \"0123456789abcdef\"\n")).unwrap_err();
    assert!(missing_me.starts_with("f.toml: fleet.members: this proxy (127.0.0.1:8080) is not in the list"), "{missing_me}");
    let wildcard = identity("listen = \"0.0.0.0:8080\"\n[fleet]\nredis = \"redis://x/\"\nsecret = \"0123456789abcdef\"\n").unwrap_err();
    assert!(wildcard.starts_with("f.toml: fleet.advertise: required when listening on 0.0.0.0:8080"), "{wildcard}");
    let advertised = "listen = \"0.0.0.0:8080\"\n[fleet]\nadvertise = \"10.0.0.1:8080\"\nmembers = [\"10.0.0.1:8080\", \"10.0.0.2:8080\"]\nsecret = \"0123456789abcdef\"\n";
    assert!(identity(advertised).is_ok(), "the advertised address is the one listed");
    assert!(identity("listen = \"0.0.0.0:8080\"\n").is_ok(), "a proxy alone may listen anywhere");
    let unset = err("[fleet]\nredis = \"redis://127.0.0.1:1/\"\nsecret = \"${NO_SUCH_SECRET}\"\n");
    assert!(unset.starts_with("f.toml: fleet.secret: environment variable NO_SUCH_SECRET is not set"), "an unset secret is no secret: {unset}");
    assert!(Config::from_toml("[fleet]\nsecret = \"${NO_SUCH_SECRET}\"\n", "f.toml", &env).is_ok(), "a proxy alone needs no secret");
    let ok = Config::from_toml("listen = \"127.0.0.1:1\"\n[fleet]\nmembers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nsecret = \"${UP}-long-enough\"\n", "f.toml", &env).unwrap().config;
    assert_eq!(ok.fleet.secret.as_ref().map(|s| s.0.as_str()), Some("http://127.0.0.1:9-long-enough"));
    assert!(!format!("{:?}", ok.fleet).contains("long-enough"), "the secret is never logged");
    assert!(Config::from_toml("", "f.toml", &env).unwrap().config.fleet.secret.is_none(), "a proxy alone needs none");
}

#[test]
fn defaults_are_what_an_empty_file_gives() {
    let empty = Config::from_toml("", "f.toml", &env).unwrap().config;
    let default = Config::default();
    assert_eq!(format!("{empty:?}"), format!("{default:?}"));
    let one = Config::from_toml("[[repository]]\nname = \"a\"\nprefix = \"/a/\"\nupstream = \"http://x/\"\n", "f.toml", &env).unwrap().config;
    assert_eq!(format!("{:?}", one.repositories[0]), format!("{:?}", RepositoryConfig::new("a", "/a/", hangar_core::FormatKind::Generic, "http://x/")));
}

#[test]
fn the_shipped_fleet_config_keeps_its_admin_listener_on_loopback_unless_told() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/fleet-proxy.toml")).unwrap();
    let fleet = |vars: &'static [(&'static str, &'static str)]| {
        move |n: &str| {
            let base = [("HANGAR_REDIS_URL", "redis://127.0.0.1:1/"), ("HANGAR_FLEET_SECRET", "0123456789abcdef"), ("HANGAR_ADVERTISE", "10.0.3.17:8080")];
            vars.iter().chain(base.iter()).find(|(k, _)| *k == n).map(|(_, v)| v.to_string())
        }
    };
    let default = Config::from_toml(&text, "fleet-proxy.toml", &fleet(&[])).unwrap().config;
    assert_eq!(default.admin_listen, "127.0.0.1:9090", "purges and the offline switch are not on every interface by default");
    let told = Config::from_toml(&text, "fleet-proxy.toml", &fleet(&[("HANGAR_ADMIN_LISTEN", "10.0.3.17:9090")])).unwrap().config;
    assert_eq!(told.admin_listen, "10.0.3.17:9090");
}

#[test]
fn auth_errors_name_the_key_of_an_issuer_an_address_rule_or_a_package_pattern() {
    let err = |text: &str| Config::from_toml(text, "f.toml", &env).unwrap_err().to_string();
    let oidc = |extra: &str| format!("[[auth.oidc]]\nissuer = \"https://ci.test\"\naudience = \"hangar\"\n{extra}");
    assert!(err("[[auth.oidc]]\nissuer = \"not a url\"\naudience = \"hangar\"\n").starts_with("f.toml: auth.oidc[0].issuer:"));
    assert!(err("[[auth.oidc]]\nissuer = \"https://ci.test\"\naudience = \" \"\n").starts_with("f.toml: auth.oidc[0].audience:"));
    assert!(err(&oidc("[[auth.oidc.rule]]\nclaims = {}\nroles = [\"x\"]\n")).starts_with("f.toml: auth.oidc[0].rule[0].claims:"));
    assert!(err(&oidc("[[auth.oidc.rule]]\nclaims = { sub = \"*\" }\nroles = [\"anonymous\"]\n")).starts_with("f.toml: auth.oidc[0].rule[0].roles:"));
    let unset = err("[[auth.oidc]]\nissuer = \"${NO_SUCH_ISSUER}\"\naudience = \"hangar\"\n");
    assert!(unset.starts_with("f.toml: auth.oidc[0].issuer:") && unset.contains("NO_SUCH_ISSUER"), "{unset}");
    let issuer = Config::from_toml(&oidc("[[auth.oidc.rule]]\nclaims = { repository = \"acme/*\" }\nroles = [\"ci\"]\n"), "f.toml", &env).unwrap().config;
    assert_eq!(issuer.auth.oidc[0].jwks_min_refetch.0, std::time::Duration::from_secs(10));
    let cidr = err("[[auth.addresses]]\nrepositories = [\"*\"]\nallow = [\"10.0.0.0/33\"]\n");
    assert!(cidr.starts_with("f.toml: auth.addresses[0].allow:") && cidr.contains("10.0.0.0/33"), "{cidr}");
    assert!(err("[[auth.addresses]]\nrepositories = [\"*\"]\n").starts_with("f.toml: auth.addresses[0].allow:"));
    assert!(Config::from_toml("[[auth.addresses]]\nrepositories = [\"a\"]\nblock = [\"192.0.2.1\", \"2001:db8::/32\"]\n", "f.toml", &env).is_ok());
    let pattern = err("[[auth.grant]]\nrole = \"r\"\nrepositories = [\"*\"]\nactions = [\"publish\"]\npackages = [\"\"]\n");
    assert!(pattern.starts_with("f.toml: auth.grant[0].packages:"), "{pattern}");
    assert!(err("[auth.limits]\nprincipal_reads_per_second = -1\n").contains("principal_reads_per_second"));
    let origin = err("[origin]\nurl = \"http://origin.test/\"\n");
    assert!(origin.starts_with("f.toml: fleet.secret: required with [origin]"), "origin checks every request's proof: {origin}");
    assert!(Config::from_toml("[origin]\nurl = \"http://origin.test/\"\n[fleet]\nsecret = \"0123456789abcdef\"\n", "f.toml", &env).is_ok(), "a proxy alone with origin");
}
