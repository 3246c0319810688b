//! TLS for every gRPC connection of a cluster (rustls through tonic): the same three files on
//! the coordinator and on every worker — this process's certificate and key (it serves and it
//! calls), and the cluster's CA, which every peer's certificate must chain to. With `mutual`,
//! servers also demand a client certificate from that CA, so the token alone no longer admits
//! anyone. A plaintext service on an address other machines can reach is refused unless the
//! operator says `--insecure`.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Where this process's TLS material is, as configured (`--tls-cert`, `--tls-key`,
/// `--tls-ca`, `--tls-mutual`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub mutual: bool,
    /// The name peers' certificates are checked against, in place of the host they are
    /// reached at: one certificate naming the cluster (say `llmprune`) then serves every
    /// node, whatever its address.
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert, --tls-key and --tls-ca go together (give all three, or none for plaintext)")]
    Incomplete,
    #[error("--tls-mutual and --tls-server-name need --tls-cert, --tls-key and --tls-ca")]
    MutualWithoutFiles,
    #[error("{flag} {path}: {error}")]
    Read { flag: &'static str, path: PathBuf, error: std::io::Error },
    #[error("{flag} {path}: no PEM {what} in it")]
    NoPem { flag: &'static str, path: PathBuf, what: &'static str },
    #[error("--tls-cert/--tls-key: {0}")]
    Identity(String),
    #[error(
        "{flag} {addr}: a plaintext service on an address other machines can reach sends the cluster token and every tensor in the clear; give --tls-cert, --tls-key and --tls-ca, or --insecure on a network you trust"
    )]
    PlaintextListen { flag: &'static str, addr: SocketAddr },
}

/// Loaded TLS material: this process's identity and the cluster's CA.
#[derive(Debug, Clone)]
pub struct Tls {
    identity: Identity,
    ca: Certificate,
    mutual: bool,
    server_name: Option<String>,
}

fn read_pem(flag: &'static str, path: &Path, what: &'static str, marker: &str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|error| TlsError::Read { flag, path: path.to_path_buf(), error })?;
    if !String::from_utf8_lossy(&bytes).contains(marker) {
        return Err(TlsError::NoPem { flag, path: path.to_path_buf(), what });
    }
    Ok(bytes)
}

impl TlsFiles {
    /// The material, or none when no file is given (plaintext).
    pub fn load(&self) -> Result<Option<Tls>, TlsError> {
        let (cert, key, ca) = match (&self.cert, &self.key, &self.ca) {
            (None, None, None) if self.mutual || self.server_name.is_some() => return Err(TlsError::MutualWithoutFiles),
            (None, None, None) => return Ok(None),
            (Some(c), Some(k), Some(a)) => (c, k, a),
            _ => return Err(TlsError::Incomplete),
        };
        let cert = read_pem("--tls-cert", cert, "certificate", "-----BEGIN CERTIFICATE-----")?;
        let key = read_pem("--tls-key", key, "private key", "PRIVATE KEY-----")?;
        let ca = read_pem("--tls-ca", ca, "certificate", "-----BEGIN CERTIFICATE-----")?;
        let tls = Tls { identity: Identity::from_pem(cert, key), ca: Certificate::from_pem(ca), mutual: self.mutual, server_name: self.server_name.clone() };
        // tonic parses the files when a server is configured: do it now, so that a bad key is
        // named before anything starts.
        tonic::transport::Server::builder().tls_config(tls.server()).map_err(|e| TlsError::Identity(error_chain(&e)))?;
        Ok(Some(tls))
    }
}

/// An error with its causes, `outer: inner: …` (transport errors name their TLS cause only
/// in their sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

impl Tls {
    /// How this process serves: its identity, and with `mutual` the CA its callers' client
    /// certificates must chain to.
    pub fn server(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(self.identity.clone());
        if self.mutual {
            config.client_ca_root(self.ca.clone())
        } else {
            config
        }
    }

    /// How this process calls `host`: the server's certificate must chain to the CA and name
    /// `host` (or the cluster's server name); with `mutual` this process presents its own.
    pub fn client(&self, host: &str) -> ClientTlsConfig {
        let name = self.server_name.as_deref().unwrap_or(host);
        let config = ClientTlsConfig::new().ca_certificate(self.ca.clone()).domain_name(name);
        if self.mutual {
            config.identity(self.identity.clone())
        } else {
            config
        }
    }
}

/// The URL scheme of a service with or without TLS.
pub fn scheme(tls: Option<&Tls>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// Refuses a plaintext service (`flag` `addr`) that other machines can reach, unless the
/// operator said `insecure`.
pub fn check_listen(flag: &'static str, addr: SocketAddr, tls: Option<&Tls>, insecure: bool) -> Result<(), TlsError> {
    if tls.is_none() && !insecure && !addr.ip().is_loopback() {
        return Err(TlsError::PlaintextListen { flag, addr });
    }
    Ok(())
}

/// The host of a `scheme://host:port` URL (brackets of an IPv6 address removed), as a
/// certificate names it.
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Option<PathBuf> {
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tls").join(name))
    }

    #[test]
    fn files_load_together_or_fail_naming_the_flag() {
        let full = TlsFiles { cert: fixture("node.pem"), key: fixture("node.key"), ca: fixture("ca.pem"), mutual: true, server_name: None };
        assert!(full.load().unwrap().is_some());
        assert!(TlsFiles::default().load().unwrap().is_none());
        let e = |f: TlsFiles| f.load().unwrap_err().to_string();
        assert!(e(TlsFiles { ca: None, ..full.clone() }).contains("go together"));
        assert!(e(TlsFiles { mutual: true, ..TlsFiles::default() }).contains("--tls-mutual"));
        assert!(e(TlsFiles { key: fixture("absent.key"), ..full.clone() }).starts_with("--tls-key"));
        assert!(e(TlsFiles { ca: fixture("node.key"), ..full.clone() }).contains("--tls-ca"));
        // A key that is not the certificate's.
        assert!(e(TlsFiles { key: fixture("rogue-node.key"), ..full }).starts_with("--tls-cert/--tls-key"));
    }

    #[test]
    fn plaintext_is_refused_beyond_loopback_unless_insecure() {
        let tls = TlsFiles { cert: fixture("node.pem"), key: fixture("node.key"), ca: fixture("ca.pem"), ..TlsFiles::default() }.load().unwrap();
        let any: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        let e = check_listen("--listen", any, None, false).unwrap_err().to_string();
        assert!(e.starts_with("--listen 0.0.0.0:7070") && e.contains("--insecure"), "{e}");
        assert!(check_listen("--listen", any, None, true).is_ok());
        assert!(check_listen("--listen", any, tls.as_ref(), false).is_ok());
        assert!(check_listen("--listen", "127.0.0.1:0".parse().unwrap(), None, false).is_ok());
        assert_eq!((scheme(None), scheme(tls.as_ref())), ("http", "https"));
        assert_eq!(url_host("https://10.0.0.1:7070"), "10.0.0.1");
        assert_eq!(url_host("https://[::1]:7070/x"), "::1");
        assert_eq!(url_host("node-3.cluster:80"), "node-3.cluster");
    }
}
