//! Leaf certificates for intercepted hosts [pure but for key generation]: SAN = host, EKU
//! server auth, a random serial, backdated an hour for clock skew, a fresh ECDSA P-256 key each.

use std::sync::{Arc, OnceLock};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use rustls::pki_types::{alg_id, SubjectPublicKeyInfoDer};
use rustls::sign::{public_key_to_spki, CertifiedKey, Signer, SigningKey, SingleCertAndKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

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

/// A leaf's private key: one ring ECDSA P-256 key pair, whose public half goes into the
/// certificate (rcgen) and which signs the handshakes (rustls). Holding ring's pair for
/// both derives the public key once more than generation needs, where generating through
/// rcgen and loading its PKCS#8 into rustls derives it twice more (each a P-256 scalar
/// multiplication, about a quarter of a leaf's cost).
#[derive(Debug, Clone)]
pub struct LeafKey(Arc<EcdsaKeyPair>);

impl LeafKey {
    /// A fresh key from the system RNG.
    pub fn generate() -> Result<Self, String> {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .map_err(|_| "generating the leaf key failed".to_string())?;
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .map_err(|e| format!("loading the leaf key: {e}"))?;
        Ok(Self(Arc::new(pair)))
    }
}

impl PublicKeyData for LeafKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key().as_ref()
    }

    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for LeafKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(public_key_to_spki(
            &alg_id::ECDSA_P256,
            self.0.public_key().as_ref(),
        ))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl Signer for LeafKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0
            .sign(&SystemRandom::new(), message)
            .map(|sig| sig.as_ref().to_vec())
            .map_err(|_| rustls::Error::General("signing with the leaf key failed".into()))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// The TLS provider every leaf's config uses, built once.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// Mints a leaf for `host` and builds the TLS server config offering h2 and HTTP/1.1.
pub fn server_config(
    ca: &CertificateAuthority,
    host: &str,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let key = LeafKey::generate()?;
    let params = leaf_params(host, time::OffsetDateTime::now_utc()).map_err(|e| e.to_string())?;
    let cert = params
        .signed_by(&key, &ca.issuer, &ca.key)
        .map_err(|e| e.to_string())?;
    let chain = vec![cert.der().clone(), ca.der.clone()];
    let certified = CertifiedKey::new(chain, Arc::new(key));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
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

    #[test]
    fn leaf_key_matches_its_certificate_and_signs_verifiably() {
        let key = LeafKey::generate().unwrap();
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let cert = leaf_params("api.openai.com", now)
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let certified = CertifiedKey::new(vec![cert.der().clone()], Arc::new(key.clone()));
        certified.keys_match().unwrap();

        assert!(key
            .choose_scheme(&[SignatureScheme::RSA_PSS_SHA256])
            .is_none());
        let signer = key
            .choose_scheme(&[
                SignatureScheme::ED25519,
                SignatureScheme::ECDSA_NISTP256_SHA256,
            ])
            .unwrap();
        assert_eq!(signer.scheme(), SignatureScheme::ECDSA_NISTP256_SHA256);
        let sig = signer.sign(b"handshake transcript").unwrap();
        let public =
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, key.der_bytes());
        public.verify(b"handshake transcript", &sig).unwrap();
        assert!(public.verify(b"another transcript", &sig).is_err());
    }
}
