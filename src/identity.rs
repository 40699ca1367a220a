//! Who is calling at the transport level: the mTLS peer, its SPIFFE identity, and the patterns
//! (`spiffe://td/ns/*/sa/**`) that policies and rate-limit exemptions match it against.

use std::cell::OnceCell;

/// Where the facts about the downstream peer come from. In Envoy each answer is a property read
/// (a host call costing about as much as the rest of a cached-token decision), so [`Peer`] asks
/// only for what a decision needs, at most once each.
pub trait PeerFacts {
    /// A client certificate was presented (and, on a listener with a validation context,
    /// validated during the handshake).
    fn mtls(&self) -> bool;
    /// First URI SAN of the peer certificate.
    fn uri_san(&self) -> Option<String>;
    /// Lower-case hex SHA-256 of the peer certificate (DER).
    fn certificate_sha256(&self) -> Option<String>;
    /// `ip:port` of the downstream connection.
    fn source_address(&self) -> Option<String>;
}

/// The peer's facts as plain data (tests, and anything that already knows them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    pub mtls: bool,
    pub uri_san: Option<String>,
    pub certificate_sha256: Option<String>,
    pub source_address: Option<String>,
}

/// The downstream connection's peer: each fact read from its [`PeerFacts`] on first use.
#[derive(Clone, Default)]
pub struct Peer {
    facts: Option<&'static dyn PeerFacts>,
    mtls: OnceCell<bool>,
    uri_san: OnceCell<Option<String>>,
    certificate_sha256: OnceCell<Option<String>>,
    source_address: OnceCell<Option<String>>,
}

impl From<PeerInfo> for Peer {
    fn from(info: PeerInfo) -> Peer {
        Peer {
            facts: None,
            mtls: OnceCell::from(info.mtls),
            uri_san: OnceCell::from(info.uri_san),
            certificate_sha256: OnceCell::from(info.certificate_sha256),
            source_address: OnceCell::from(info.source_address),
        }
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("mtls", &self.mtls.get())
            .field("uri_san", &self.uri_san.get())
            .field("certificate_sha256", &self.certificate_sha256.get())
            .field("source_address", &self.source_address.get())
            .finish()
    }
}

impl Peer {
    /// A peer whose facts are read from `facts` when first needed.
    pub fn lazy(facts: &'static dyn PeerFacts) -> Peer {
        Peer {
            facts: Some(facts),
            ..Peer::default()
        }
    }

    /// A client certificate was presented.
    pub fn mtls(&self) -> bool {
        *self
            .mtls
            .get_or_init(|| self.facts.is_some_and(|f| f.mtls()))
    }

    /// First URI SAN of the client certificate (none without one).
    pub fn uri_san(&self) -> Option<&str> {
        self.uri_san
            .get_or_init(|| self.facts.filter(|_| self.mtls()).and_then(|f| f.uri_san()))
            .as_deref()
            .filter(|_| self.mtls())
    }

    /// Lower-case hex SHA-256 of the client certificate (none without one).
    pub fn certificate_sha256(&self) -> Option<&str> {
        self.certificate_sha256
            .get_or_init(|| {
                self.facts
                    .filter(|_| self.mtls())
                    .and_then(|f| f.certificate_sha256())
            })
            .as_deref()
            .filter(|_| self.mtls())
    }

    /// `ip:port` of the downstream connection.
    pub fn source_address(&self) -> Option<&str> {
        self.source_address
            .get_or_init(|| self.facts.and_then(|f| f.source_address()))
            .as_deref()
    }

    /// The SPIFFE identity of the client certificate.
    ///
    /// meshguard relies on the listener's TLS validation (Istio's and every shipped example's
    /// listeners validate against the mesh CA, so a presented certificate is a validated one).
    /// Envoy's `connection.peer_certificate_valid` is not used: Envoy 1.40 reports it false on
    /// resumed TLS sessions, which would drop the identity of every resumed connection.
    pub fn spiffe(&self) -> Option<SpiffeId> {
        SpiffeId::parse(self.uri_san()?)
    }

    /// The client certificate's SPIFFE ID (its URI SAN), only when something already read the
    /// certificate for this request: never a host call of its own (for the filter state of an
    /// allowed request, where each host call costs throughput).
    pub fn spiffe_if_read(&self) -> Option<&str> {
        let mtls = self.mtls.get().copied().unwrap_or(false);
        let uri = self.uri_san.get()?.as_deref().filter(|_| mtls)?;
        SpiffeId::parse(uri).map(|_| uri)
    }

    /// The value of one peer field, for upstream headers. `None` when the peer has no
    /// verified identity or the field does not apply.
    pub fn field(&self, field: PeerField) -> Option<String> {
        if field == PeerField::CertificateSha256 {
            return self.certificate_sha256().map(str::to_string);
        }
        let id = self.spiffe()?;
        match field {
            PeerField::SpiffeId => Some(id.uri),
            PeerField::TrustDomain => Some(id.trust_domain),
            PeerField::Namespace => id.namespace,
            PeerField::ServiceAccount => id.service_account,
            PeerField::CertificateSha256 => None,
        }
    }
}

/// A SPIFFE ID (`spiffe://<trust-domain>/<path>`); Istio's path is `ns/<ns>/sa/<sa>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    pub uri: String,
    pub trust_domain: String,
    pub path: String,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
}

impl SpiffeId {
    /// Parses per the SPIFFE ID spec: lower-case trust domain of `[a-z0-9.-_]`, path segments of
    /// `[A-Za-z0-9.-_]`, no empty, `.` or `..` segments, no query or fragment.
    pub fn parse(uri: &str) -> Option<SpiffeId> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let td_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b);
        if td.is_empty() || td.len() > 255 || !td.bytes().all(td_ok) {
            return None;
        }
        let seg_ok = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b);
        let segments: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        for s in &segments {
            if s.is_empty() || *s == "." || *s == ".." || !s.bytes().all(seg_ok) {
                return None;
            }
        }
        let (namespace, service_account) = match segments.as_slice() {
            ["ns", ns, "sa", sa] => (Some(ns.to_string()), Some(sa.to_string())),
            _ => (None, None),
        };
        Some(SpiffeId {
            uri: uri.to_string(),
            trust_domain: td.to_string(),
            path: path.to_string(),
            namespace,
            service_account,
        })
    }
}

/// Peer facts that can be copied to upstream headers (`outputPeerToHeaders[].field`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerField {
    SpiffeId,
    TrustDomain,
    Namespace,
    ServiceAccount,
    CertificateSha256,
}

impl PeerField {
    pub const NAMES: [&'static str; 5] = [
        "spiffeId",
        "trustDomain",
        "namespace",
        "serviceAccount",
        "certificateSha256",
    ];

    pub fn parse(name: &str) -> Option<PeerField> {
        Some(match name {
            "spiffeId" => PeerField::SpiffeId,
            "trustDomain" => PeerField::TrustDomain,
            "namespace" => PeerField::Namespace,
            "serviceAccount" => PeerField::ServiceAccount,
            "certificateSha256" => PeerField::CertificateSha256,
            _ => return None,
        })
    }
}

/// A SPIFFE ID pattern split on `/` after `spiffe://`; `None` is `*` (one segment); a final
/// `**` matches any remaining segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalPattern {
    pub segments: Vec<Option<String>>,
    pub rest: bool,
}

impl PrincipalPattern {
    pub fn matches(&self, spiffe_id: &str) -> bool {
        let Some(rest) = spiffe_id.strip_prefix("spiffe://") else {
            return false;
        };
        let mut parts = rest.split('/');
        for seg in &self.segments {
            match (seg, parts.next()) {
                (_, None) => return false,
                (_, Some("")) => return false,
                (None, Some(_)) => {}
                (Some(lit), Some(got)) if lit == got => {}
                _ => return false,
            }
        }
        if self.rest {
            parts.next().is_some_and(|p| !p.is_empty())
        } else {
            parts.next().is_none()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(uri: &str) -> PeerInfo {
        PeerInfo {
            mtls: true,
            uri_san: Some(uri.into()),
            certificate_sha256: Some("ab".repeat(32)),
            source_address: Some("127.0.0.1:5000".into()),
        }
    }

    #[test]
    fn istio_spiffe_id_gives_namespace_and_service_account() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/payments/sa/api").unwrap();
        assert_eq!(id.trust_domain, "cluster.local");
        assert_eq!(id.namespace.as_deref(), Some("payments"));
        assert_eq!(id.service_account.as_deref(), Some("api"));
    }

    #[test]
    fn other_spiffe_paths_have_no_namespace() {
        let id = SpiffeId::parse("spiffe://example.org/workload/x").unwrap();
        assert_eq!(id.path, "workload/x");
        assert_eq!(id.namespace, None);
    }

    #[test]
    fn invalid_spiffe_ids_are_refused() {
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe://UPPER.case/ns/a/sa/b",
            "spiffe://td/ns//sa/b",
            "spiffe://td/ns/../sa/b",
            "spiffe://td/ns/a/sa/b?x=1",
            "spiffe://td/ns/a/sa/b\r\nx-evil: 1",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn identity_only_with_a_client_certificate() {
        let mut info = verified("spiffe://cluster.local/ns/web/sa/frontend");
        let peer = Peer::from(info.clone());
        assert_eq!(
            peer.field(PeerField::ServiceAccount).as_deref(),
            Some("frontend")
        );
        info.mtls = false;
        let peer = Peer::from(info);
        assert_eq!(peer.field(PeerField::SpiffeId), None);
        assert_eq!(peer.field(PeerField::CertificateSha256), None);
        let plain = Peer::default();
        assert_eq!(plain.spiffe(), None);
    }

    struct Frontend;

    impl PeerFacts for Frontend {
        fn mtls(&self) -> bool {
            true
        }
        fn uri_san(&self) -> Option<String> {
            Some("spiffe://cluster.local/ns/web/sa/frontend".into())
        }
        fn certificate_sha256(&self) -> Option<String> {
            None
        }
        fn source_address(&self) -> Option<String> {
            None
        }
    }

    #[test]
    fn the_spiffe_id_is_given_for_free_only_once_read() {
        static FRONTEND: Frontend = Frontend;
        let peer = Peer::lazy(&FRONTEND);
        assert_eq!(peer.spiffe_if_read(), None, "nothing read yet");
        assert!(peer.spiffe().is_some());
        assert_eq!(
            peer.spiffe_if_read(),
            Some("spiffe://cluster.local/ns/web/sa/frontend")
        );
        let plain = Peer::from(PeerInfo {
            uri_san: Some("spiffe://cluster.local/ns/web/sa/frontend".into()),
            ..PeerInfo::default()
        });
        assert_eq!(plain.spiffe_if_read(), None, "no client certificate");
    }
}
