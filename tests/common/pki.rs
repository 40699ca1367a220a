//! A test PKI (rcgen): CA, server and client certificates, SPIFFE URI SANs.

use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub ca_file: PathBuf,
}

/// A client identity: certificate chain and key, as PEM, plus the leaf's DER.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl ClientCert {
    /// Writes `<name>.pem` and `<name>-key.pem` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) {
        fs::write(dir.join(format!("{name}.pem")), &self.cert_pem).unwrap();
        fs::write(dir.join(format!("{name}-key.pem")), &self.key_pem).unwrap();
    }

    /// `cnf."x5t#S256"` for a token bound to this certificate (RFC 8705).
    pub fn x5t_s256(&self) -> String {
        use sha2::Digest;
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&self.der))
    }

    /// Lower-case hex SHA-256 of the DER certificate (what Envoy reports).
    pub fn sha256_hex(&self) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(&self.der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        Pki::with_ca_name(dir, "meshguard test mesh CA")
    }

    /// A PKI whose CA has the common name `ca_name` (another mesh's CA, say).
    pub fn with_ca_name(dir: &Path, ca_name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut sp = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        sp.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        sp.distinguished_name
            .push(DnType::CommonName, "meshguard test server");
        let server_cert = sp.signed_by(&server_key, &issuer).unwrap();

        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            fs::write(&p, text).unwrap();
            p
        };
        Pki {
            dir: dir.to_path_buf(),
            ca_pem: ca_cert.pem(),
            ca_file: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert.pem()),
            server_key: write("server-key.pem", &server_key.serialize_pem()),
            issuer,
        }
    }

    /// A workload certificate with a SPIFFE URI SAN, signed by the mesh CA.
    pub fn workload(&self, spiffe_id: &str) -> ClientCert {
        self.issue(spiffe_id, false, false)
    }

    /// A workload certificate that is also a server certificate for `localhost`/`127.0.0.1`
    /// (what a server-side sidecar presents).
    pub fn server_workload(&self, spiffe_id: &str) -> ClientCert {
        self.issue(spiffe_id, true, false)
    }

    /// A workload certificate of the mesh CA that expired in 2021.
    pub fn expired_workload(&self, spiffe_id: &str) -> ClientCert {
        self.issue(spiffe_id, false, true)
    }

    fn issue(&self, spiffe_id: &str, server: bool, expired: bool) -> ClientCert {
        use rcgen::{CertificateParams, DnType, KeyPair, SanType};
        let key = KeyPair::generate().unwrap();
        let names = if server {
            vec!["localhost".to_string()]
        } else {
            Vec::new()
        };
        let mut p = CertificateParams::new(names).unwrap();
        if server {
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        p.subject_alt_names
            .push(SanType::URI(spiffe_id.try_into().unwrap()));
        p.distinguished_name.push(DnType::CommonName, "workload");
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}
