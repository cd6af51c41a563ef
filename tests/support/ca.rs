//! Test certificate authorities generated at runtime with rcgen.
//!
//! `TestCa::new` makes a self-signed ECDSA P-256 CA; `issue` makes a leaf for DNS names or IP
//! addresses. The CA's PEM is also written to a file (kept for the CA's lifetime) so a test can
//! point the proxy's `tls.extra_upstream_roots` at it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The crypto provider every test TLS config uses (independent of any process default).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority that exists only for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: tempfile::TempDir,
    pem_path: PathBuf,
}

/// A leaf certificate (chain leaf-first) and its private key.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

impl TestCa {
    /// A new CA whose subject common name is `cn`.
    pub fn new(cn: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "quota-proxy tests");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("self-sign ca");
        let dir = tempfile::tempdir().expect("tempdir for ca");
        let pem_path = dir.path().join("test-ca.pem");
        std::fs::write(&pem_path, cert.pem()).expect("write ca pem");
        TestCa {
            cert,
            key,
            dir,
            pem_path,
        }
    }

    /// The CA certificate in PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate in DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A file holding the CA certificate in PEM; lives as long as `self`.
    pub fn pem_path(&self) -> &Path {
        &self.pem_path
    }

    /// The directory holding `pem_path` (handy for other per-test files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server leaf for `names` (DNS names, or IP addresses as text) signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        Leaf {
            chain: vec![cert.der().clone()],
            key_der: key.serialize_der(),
        }
    }

    /// A root store trusting only this CA.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der()).expect("add test ca to root store");
        roots
    }

    /// A rustls client config trusting only this CA, offering `alpn` protocols.
    pub fn client_config(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        client_config_for_roots(self.root_store(), alpn)
    }
}

/// A rustls client config trusting only `roots`, offering `alpn` protocols.
pub fn client_config_for_roots(
    roots: rustls::RootCertStore,
    alpn: &[&str],
) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// A root store holding every certificate in the PEM file at `path` (e.g. the proxy's own CA).
pub fn roots_from_pem_file(path: &Path) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("PEM certificate")).expect("add root");
    }
    assert!(!roots.is_empty(), "no certificate in {}", path.display());
    roots
}

/// A rustls server config presenting `leaf`, offering `alpn` protocols in order.
pub fn server_config(leaf: &Leaf, alpn: &[&str]) -> Arc<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(leaf.chain.clone(), leaf.key())
        .expect("server cert");
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}
