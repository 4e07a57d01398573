//! A throwaway PKI for HTTPS fixtures: a CA and a `localhost` server certificate, made with
//! openssl. Point the proxy at the CA with `SSL_CERT_FILE`.

use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Writes `ca.pem`, `ca.key`, `srv.pem` and `srv.key` (for `localhost`) into `dir`.
pub fn make_pki(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=Hangar Test CA", "-keyout", "ca.key", "-out", "ca.pem"];
    ca.extend(ec);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=localhost", "-keyout", "srv.key", "-out", "srv.csr"];
    csr.extend(ec);
    openssl(dir, &csr);
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(dir, &["x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-out", "srv.pem", "-extfile", "ext"]);
}
