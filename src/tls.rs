//! The client edge's certificates: one live certificate per TLS listener (`[[server.tls]]`), read from its PEM
//! files, checked (the key must sign for the certificate), and served to every handshake by a resolver that
//! reads it lock-free.
//!
//! A certificate is a live set like the rules and the keys (`live.rs`): its version is a hash of the two files,
//! a reload that finds them unchanged stops there, a new pair goes live only once it is parsed and its key
//! matches, and a bad pair (half-written, a key of another certificate) leaves the last good one serving —
//! logged and counted. A swap affects new handshakes only: connections already open keep the session they
//! negotiated. Nothing here runs on the request path except [`ServerCert::resolve`], which never blocks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::live::{Live, Reload, Source};
use crate::metrics;

/// Why a certificate pair cannot be used. Each names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM certificate chain ({error})")]
    BadCertificate { path: PathBuf, error: String },
    #[error("{path}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("{path}: unusable private key ({error})")]
    BadKey { path: PathBuf, error: String },
    #[error("{key}: this key does not belong to the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot set up the TLS listener: {0}")]
    Listener(String),
}

/// The two files of one listener's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The files read, not yet checked.
pub struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
    version: String,
}

/// A certificate in service: what handshakes present, and the version of the files it came from.
pub struct Served {
    pub key: Arc<CertifiedKey>,
    pub version: String,
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Which file a read error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

impl CertFiles {
    /// Reads both files. Blocking.
    pub fn read(&self) -> Result<Pem, (Which, TlsError)> {
        let read = |path: &Path, which| {
            std::fs::read(path).map_err(|error| {
                (
                    which,
                    TlsError::Read {
                        path: path.to_path_buf(),
                        error,
                    },
                )
            })
        };
        let cert = read(&self.cert, Which::Cert)?;
        let key = read(&self.key, Which::Key)?;
        let mut h = Sha256::new();
        h.update((cert.len() as u64).to_le_bytes());
        h.update(&cert);
        h.update(&key);
        let version = hex::encode(&h.finalize()[..8]);
        Ok(Pem { cert, key, version })
    }

    /// Parses what was read and checks that the key belongs to the certificate.
    pub fn check(&self, pem: &Pem) -> Result<Served, (Which, TlsError)> {
        let cert_err = |e: TlsError| (Which::Cert, e);
        let key_err = |e: TlsError| (Which::Key, e);
        let chain = CertificateDer::pem_slice_iter(&pem.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                cert_err(TlsError::BadCertificate {
                    path: self.cert.clone(),
                    error: e.to_string(),
                })
            })?;
        if chain.is_empty() {
            return Err(cert_err(TlsError::NoCertificate {
                path: self.cert.clone(),
            }));
        }
        let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => key_err(TlsError::NoKey {
                path: self.key.clone(),
            }),
            e => key_err(TlsError::BadKey {
                path: self.key.clone(),
                error: e.to_string(),
            }),
        })?;
        let provider = ring::default_provider();
        let signing = provider.key_provider.load_private_key(key).map_err(|e| {
            key_err(TlsError::BadKey {
                path: self.key.clone(),
                error: e.to_string(),
            })
        })?;
        let certified = CertifiedKey::new(chain, signing);
        // The key's public half must be the leaf's: a key of another certificate fails every handshake.
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(key_err(TlsError::Mismatch {
                    cert: self.cert.clone(),
                    key: self.key.clone(),
                }))
            }
            Err(e) => {
                return Err(cert_err(TlsError::BadCertificate {
                    path: self.cert.clone(),
                    error: e.to_string(),
                }))
            }
        }
        Ok(Served {
            key: Arc::new(certified),
            version: pem.version.clone(),
        })
    }

    /// Reads and checks the pair (what the config check and the start do). Blocking.
    pub fn load(&self) -> Result<Served, (Which, TlsError)> {
        self.check(&self.read()?)
    }
}

/// One listener's certificate as a live set: `listen` names it in logs.
pub struct CertSource {
    pub listen: std::net::SocketAddr,
    pub files: CertFiles,
}

impl Source for CertSource {
    type Loaded = Pem;
    type Set = Served;
    type Error = TlsError;
    const NAME: &'static str = "certificate";

    fn load(&self) -> Result<Pem, Vec<TlsError>> {
        self.files.read().map_err(|(_, e)| vec![e])
    }

    fn validate(&self, loaded: Pem) -> Result<Served, Vec<TlsError>> {
        self.files.check(&loaded).map_err(|(_, e)| vec![e])
    }

    fn loaded_version(loaded: &Pem) -> &str {
        &loaded.version
    }

    fn version(set: &Served) -> &str {
        &set.version
    }

    fn count(_set: &Served) -> usize {
        1
    }

    fn went_live(&self, _set: &Served) {}

    fn reloads() -> &'static prometheus::IntCounterVec {
        &metrics::TLS_RELOADS
    }

    fn log(&self, outcome: &Reload, took: Duration) {
        let listen = self.listen;
        let cert = self.files.cert.display();
        match outcome {
            Reload::Reloaded { version, .. } => {
                tracing::info!(%listen, %cert, version, ?took, "certificate reloaded: new handshakes present it")
            }
            Reload::Unchanged { version, .. } => {
                tracing::debug!(%listen, %cert, version, "certificate unchanged")
            }
            Reload::Failed { version, errors } => tracing::error!(
                %listen,
                %cert,
                version,
                errors = errors.join("; "),
                "certificate reload refused; the last good certificate is still served"
            ),
        }
    }
}

/// The certificate a TLS listener presents: the live one, whatever the client asks for (one certificate per
/// listener; SNI does not choose).
pub struct ServerCert(pub Arc<Live<CertSource>>);

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ServerCert")
            .field(&self.0.source().listen)
            .finish()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Lock-free: a reload swaps the pointer; a handshake under way keeps the one it took.
        Some(self.0.peek().key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    fn pair(name: &str) -> Pair {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("cert");
        Pair {
            cert: c.cert.pem(),
            key: c.key_pair.serialize_pem(),
        }
    }

    fn files(dir: &Path, cert: &str, key: &str) -> CertFiles {
        let f = CertFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&f.cert, cert).expect("write");
        std::fs::write(&f.key, key).expect("write");
        f
    }

    fn which(r: Result<Served, (Which, TlsError)>) -> Option<Which> {
        r.err().map(|(w, _)| w)
    }

    #[test]
    fn pairs_are_refused_naming_the_file_at_fault() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (pair("a.test"), pair("b.test"));
        assert!(files(dir.path(), &a.cert, &a.key).load().is_ok());
        // A key of another certificate, an empty key file, a truncated certificate, garbage.
        assert_eq!(
            which(files(dir.path(), &a.cert, &b.key).load()),
            Some(Which::Key)
        );
        assert_eq!(
            which(files(dir.path(), &a.cert, "").load()),
            Some(Which::Key)
        );
        let half = &a.cert[..a.cert.len() / 2];
        assert_eq!(
            which(files(dir.path(), half, &a.key).load()),
            Some(Which::Cert)
        );
        assert_eq!(
            which(files(dir.path(), "hello", &a.key).load()),
            Some(Which::Cert)
        );
        let missing = CertFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("nope.pem"),
        };
        assert_eq!(which(missing.load()), Some(Which::Key));
    }

    #[test]
    fn a_refused_reload_keeps_the_last_good_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (pair("a.test"), pair("b.test"));
        let f = files(dir.path(), &a.cert, &a.key);
        let live = Live::open(CertSource {
            listen: "127.0.0.1:1".parse().expect("addr"),
            files: f.clone(),
        })
        .expect("opens");
        let first = live
            .snapshot()
            .key
            .end_entity_cert()
            .expect("leaf")
            .clone()
            .into_owned();
        assert_eq!(live.reload().label(), "unchanged");
        // The new certificate is written, its key not yet: refused, the old one still served.
        std::fs::write(&f.cert, &b.cert).expect("write");
        assert_eq!(live.reload().label(), "error");
        let now = live.snapshot();
        assert_eq!(now.key.end_entity_cert().expect("leaf"), &first);
        std::fs::write(&f.key, &b.key).expect("write");
        assert_eq!(live.reload().label(), "ok");
        let now = live.snapshot();
        assert_ne!(now.key.end_entity_cert().expect("leaf"), &first);
    }
}
