//! Leaf certificates for intercepted hosts [pure but for key generation]: SAN = host, EKU
//! server auth, a random serial, backdated an hour for clock skew, a fresh ECDSA P-256 key each.

use std::sync::Arc;

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use ring::rand::SecureRandom;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::CertificateAuthority;

/// How long a leaf is valid; the cache TTL must stay below it.
pub const LEAF_VALIDITY: time::Duration = time::Duration::days(7);
/// How far `not_before` is backdated.
pub const BACKDATE: time::Duration = time::Duration::hours(1);

/// A random 16-byte positive serial number.
pub fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // The system RNG failing is not recoverable in any useful way; a zero serial is still
    // distinct per key in practice, and rustls does not depend on it.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from(bytes.to_vec())
}

/// The parameters of a leaf for `host` at `now`.
pub fn leaf_params(
    host: &str,
    now: time::OffsetDateTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, host);
    params.subject_alt_names = vec![match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(host.to_string().try_into()?),
    }];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Mints a leaf for `host` and builds the TLS server config offering h2 and HTTP/1.1.
pub fn server_config(
    ca: &CertificateAuthority,
    host: &str,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let params = leaf_params(host, time::OffsetDateTime::now_utc()).map_err(|e| e.to_string())?;
    let cert = params
        .signed_by(&key, &ca.issuer, &ca.key)
        .map_err(|e| e.to_string())?;
    let chain = vec![cert.der().clone(), ca.der.clone()];
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_parameters() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let p = leaf_params("api.openai.com", now).unwrap();
        assert_eq!(
            p.subject_alt_names,
            vec![SanType::DnsName("api.openai.com".try_into().unwrap())]
        );
        assert_eq!(
            p.extended_key_usages,
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        );
        assert_eq!(p.not_before, now - BACKDATE);
        assert_eq!(p.not_after, now + LEAF_VALIDITY);
        let ip = leaf_params("127.0.0.1", now).unwrap();
        assert!(matches!(ip.subject_alt_names[0], SanType::IpAddress(_)));
        assert_ne!(random_serial(), random_serial());
    }
}
