//! The local certificate authority that signs leaf certificates for intercepted hosts:
//! created as ECDSA P-256 with its key file 0600 from the first byte, never overwritten
//! without `force`, loaded at start, and described for `ca show`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, GeneralSubtree, IsCa, KeyPair,
    KeyUsagePurpose, NameConstraints, PKCS_ECDSA_P256_SHA256,
};

/// Errors loading or creating the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0} already exists; pass --force to replace it")]
    Exists(String),
    #[error("cannot create the CA: {0}")]
    Generate(String),
}

fn file_err(path: &Path, reason: impl ToString) -> CaError {
    CaError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// A loaded CA, ready to sign leaves.
pub struct CertificateAuthority {
    /// The CA certificate re-created from its parameters, used as the issuer when signing.
    pub(super) issuer: rcgen::Certificate,
    pub(super) key: KeyPair,
    /// The CA certificate exactly as on disk (DER), sent after each leaf.
    pub(super) der: rustls::pki_types::CertificateDer<'static>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificateAuthority { .. }")
    }
}

impl CertificateAuthority {
    /// Loads `cert` and `key` (PEM).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, CaError> {
        let cert_pem = std::fs::read_to_string(cert).map_err(|e| file_err(cert, e))?;
        let key_pem = std::fs::read_to_string(key).map_err(|e| file_err(key, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| file_err(key, e))?;
        let params =
            CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| file_err(cert, e))?;
        let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .ok_or_else(|| file_err(cert, "no certificate in the file"))?
            .map_err(|e| file_err(cert, e))?;
        let issuer = params.self_signed(&key).map_err(|e| file_err(cert, e))?;
        Ok(CertificateAuthority { issuer, key, der })
    }
}

/// The paths of a CA's two files.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates a new ECDSA P-256 CA at `files`. The key file is created with mode 0600 (no moment
/// where it is more readable); nothing is overwritten unless `force`. With `constrain`, the CA
/// may only issue certificates for those DNS names (X.509 name constraints).
pub fn create(files: &CaFiles, force: bool, constrain: &[String]) -> Result<(), CaError> {
    for path in [&files.cert, &files.key] {
        if path.exists() && !force {
            return Err(CaError::Exists(path.display().to_string()));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        }
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Generate(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "quota-proxy local CA");
    dn.push(DnType::OrganizationName, "quota-proxy");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    params.serial_number = Some(super::leaf::random_serial());
    if !constrain.is_empty() {
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: constrain
                .iter()
                .map(|h| GeneralSubtree::DnsName(h.clone()))
                .collect(),
            excluded_subtrees: vec![],
        });
    }
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Generate(e.to_string()))?;
    write_new(&files.key, key.serialize_pem().as_bytes(), 0o600, force)?;
    write_new(&files.cert, cert.pem().as_bytes(), 0o644, force)?;
    Ok(())
}

/// Writes a file created with `mode` from the start (O_CREAT with the mode, via a temp file
/// renamed into place when replacing).
fn write_new(path: &Path, data: &[u8], mode: u32, replace: bool) -> Result<(), CaError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let target = if replace { &tmp } else { path };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)
        .map_err(|e| file_err(target, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| file_err(target, e))?;
    if replace {
        std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))?;
    }
    Ok(())
}

/// What `ca show` prints: path, subject, SHA-256 fingerprint, expiry, and how to trust it.
pub fn describe(cert_path: &Path) -> Result<String, CaError> {
    let pem = std::fs::read(cert_path).map_err(|e| file_err(cert_path, e))?;
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .ok_or_else(|| file_err(cert_path, "no certificate in the file"))?
        .map_err(|e| file_err(cert_path, e))?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| file_err(cert_path, e))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let fingerprint: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    let mut out = String::new();
    out.push_str(&format!("path:        {}\n", cert_path.display()));
    out.push_str(&format!("subject:     {}\n", x509.subject()));
    out.push_str(&format!("sha256:      {}\n", fingerprint.join(":")));
    out.push_str(&format!("expires:     {}\n", x509.validity().not_after));
    out.push('\n');
    out.push_str(&trust_instructions(cert_path));
    Ok(out)
}

/// The environment variables that make common clients trust the CA.
pub fn trust_instructions(cert_path: &Path) -> String {
    let abs = std::fs::canonicalize(cert_path).unwrap_or_else(|_| cert_path.to_path_buf());
    let p = abs.display();
    format!(
        "Trust it in the apps that use the proxy:\n\
         \x20 export SSL_CERT_FILE={p}          # Python ssl, OpenSSL, Go (Linux), Ruby\n\
         \x20 export REQUESTS_CA_BUNDLE={p}     # Python requests\n\
         \x20 export NODE_EXTRA_CA_CERTS={p}    # Node.js\n\
         \x20 export CURL_CA_BUNDLE={p}         # curl\n\
         Node.js also needs NODE_USE_ENV_PROXY=1 to honour HTTP_PROXY/HTTPS_PROXY.\n\
         SSL_CERT_FILE, REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE replace the system roots: for apps that\n\
         also reach other HTTPS hosts through the tunnel, point them at a bundle of both:\n\
         \x20 cat /etc/ssl/certs/ca-certificates.crt {p} > ca-bundle.pem\n"
    )
}
