//! Bearer tokens: claims, scopes, signing, verification and revocation.
//!
//! This module knows nothing about HTTP; `api::auth` wraps it in an extractor.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{AuthSettings, JwtAlgorithm};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read dispatches, their events and results.
    DispatchRead,
    /// Create and cancel dispatches.
    DispatchWrite,
    /// Report dispatch state changes, as node daemons do.
    Node,
    /// Everything within the token's project.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [Scope::DispatchRead, Scope::DispatchWrite, Scope::Node, Scope::Admin];

    /// The name used in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::DispatchRead => "dispatch:read",
            Scope::DispatchWrite => "dispatch:write",
            Scope::Node => "node",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = Scope::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown scope `{s}`; expected one of {}", names.join(", "))
        })
    }
}

/// The claims every gateway token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token is for (a user, a service, a node).
    pub sub: String,
    /// The project whose dispatches the token can see.
    pub project: String,
    /// Scope names, e.g. `dispatch:read`.
    pub scopes: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issue time, seconds since the epoch.
    pub iat: i64,
    /// Not valid before, seconds since the epoch (checked when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Unique token id, used for revocation.
    pub jti: String,
    /// For a node credential: the one node (of `project`) it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeBinding>,
}

/// The node a node credential is issued to: its cluster and name, in the
/// token's project. Node routes accept a credential only for this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeBinding {
    pub cluster: String,
    pub name: String,
}

impl std::str::FromStr for NodeBinding {
    type Err = String;
    /// Parses `cluster/name`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (cluster, name) =
            text.split_once('/').ok_or_else(|| format!("`{text}` is not `CLUSTER/NAME`, e.g. `gpu/gpu-box-1`"))?;
        if !is_name(cluster) {
            return Err(format!("the cluster name `{cluster}` must be {NAME_RULE}"));
        }
        if !is_node_name(name) {
            return Err(format!("the node name `{name}` must be {NODE_NAME_RULE}"));
        }
        Ok(NodeBinding { cluster: cluster.to_owned(), name: name.to_owned() })
    }
}

/// The rule every project, cluster and node name follows.
pub const NAME_RULE: &str = "1 to 64 of A-Z, a-z, 0-9, `-`, `_`, `.`";

/// True for a valid project, cluster or node name (see [`NAME_RULE`]).
pub fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The rule for node names: a cluster name plus room for a `-N` suffix.
pub const NODE_NAME_RULE: &str = "1 to 80 of A-Z, a-z, 0-9, `-`, `_`, `.`";

/// True for a valid node name (see [`NODE_NAME_RULE`]).
pub fn is_node_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 80
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub sub: String,
    pub project: String,
    pub jti: String,
    /// When the caller's token expires, seconds since the epoch.
    pub exp: i64,
    scopes: HashSet<String>,
    node: Option<NodeBinding>,
}

impl Caller {
    /// True if the caller holds `scope`. `admin` implies reading and writing
    /// dispatches, never `node`: node rights come only with a credential
    /// bound to one node.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope.as_str()) || (scope != Scope::Node && self.scopes.contains(Scope::Admin.as_str()))
    }

    /// The gateway acting for `project` as `sub` (a schedule firing), with `scopes`.
    pub fn acting_for(project: &str, sub: String, scopes: &[Scope]) -> Caller {
        Caller {
            sub,
            project: project.to_owned(),
            jti: String::new(),
            exp: i64::MAX,
            scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            node: None,
        }
    }

    /// The caller's scope names, sorted.
    pub fn scope_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.scopes.iter().cloned().collect();
        names.sort();
        names
    }

    /// The node this caller is, if it holds a node credential.
    pub fn node(&self) -> Option<&NodeBinding> {
        self.node.as_ref().filter(|_| self.scopes.contains(Scope::Node.as_str()))
    }
}

impl From<Claims> for Caller {
    fn from(claims: Claims) -> Self {
        Caller {
            sub: claims.sub,
            project: claims.project,
            jti: claims.jti,
            exp: claims.exp,
            scopes: claims.scopes.into_iter().collect(),
            node: claims.node,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token has been revoked")]
    Revoked,
    #[error("the token is signed with an algorithm this gateway does not accept (it accepts {0})")]
    WrongAlgorithm(&'static str),
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token is not valid yet (its nbf is in the future)")]
    NotYetValid,
}

/// Errors setting up keys or minting tokens.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("auth.hs256_secret must be set (at least 32 bytes) when auth.algorithm is HS256")]
    MissingSecret,
    #[error("auth.hs256_secret is too short: use at least 32 bytes")]
    ShortSecret,
    #[error("auth.public_key_path must be set when auth.algorithm is {0}")]
    MissingPublicKey(&'static str),
    #[error("cannot mint tokens: auth.private_key_path is not set")]
    MissingPrivateKey,
    #[error("cannot read key file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid key in {path}")]
    Parse {
        path: String,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("cannot sign the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// Signing and verification keys, pinned to one algorithm.
#[derive(Clone)]
pub struct Keys {
    algorithm: Algorithm,
    algorithm_name: &'static str,
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
}

impl Keys {
    /// Builds the keys described by the settings.
    pub fn from_settings(settings: &AuthSettings) -> Result<Keys, KeyError> {
        let (algorithm, name) = match settings.algorithm {
            JwtAlgorithm::HS256 => (Algorithm::HS256, "HS256"),
            JwtAlgorithm::RS256 => (Algorithm::RS256, "RS256"),
            JwtAlgorithm::EdDSA => (Algorithm::EdDSA, "EdDSA"),
        };
        let (decoding, encoding) = match settings.algorithm {
            JwtAlgorithm::HS256 => {
                let secret = settings.hs256_secret.as_ref().ok_or(KeyError::MissingSecret)?;
                let secret = secret.expose_secret().as_bytes();
                if secret.len() < 32 {
                    return Err(KeyError::ShortSecret);
                }
                (DecodingKey::from_secret(secret), Some(EncodingKey::from_secret(secret)))
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::EdDSA => {
                let public = settings.public_key_path.as_ref().ok_or(KeyError::MissingPublicKey(name))?;
                let pem = read_key(public)?;
                let parse = |source| KeyError::Parse { path: public.display().to_string(), source };
                let decoding = if algorithm == Algorithm::RS256 {
                    DecodingKey::from_rsa_pem(&pem).map_err(parse)?
                } else {
                    DecodingKey::from_ed_pem(&pem).map_err(parse)?
                };
                let encoding = match &settings.private_key_path {
                    None => None,
                    Some(path) => {
                        let pem = read_key(path)?;
                        let parse = |source| KeyError::Parse { path: path.display().to_string(), source };
                        Some(if algorithm == Algorithm::RS256 {
                            EncodingKey::from_rsa_pem(&pem).map_err(parse)?
                        } else {
                            EncodingKey::from_ed_pem(&pem).map_err(parse)?
                        })
                    }
                };
                (decoding, encoding)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "jti"]);
        Ok(Keys { algorithm, algorithm_name: name, decoding, encoding, validation })
    }

    /// Signs a new token for a user or service (no node rights).
    pub fn mint(
        &self,
        sub: &str,
        project: &str,
        scopes: &[Scope],
        ttl: Duration,
    ) -> Result<(String, Claims), KeyError> {
        let scopes: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
        self.sign(sub, project, scopes, ttl, &Uuid::new_v4().to_string(), None)
    }

    /// Signs a node credential: the `node` scope, bound to `node` of
    /// `project`, with a chosen token id (`jti`) so it can be recorded (and
    /// revoked) before it is handed out.
    pub fn mint_node(
        &self,
        project: &str,
        node: &NodeBinding,
        ttl: Duration,
        jti: &str,
    ) -> Result<(String, Claims), KeyError> {
        let sub = format!("node:{}/{}", node.cluster, node.name);
        self.sign(&sub, project, vec![Scope::Node.as_str().to_owned()], ttl, jti, Some(node.clone()))
    }

    fn sign(
        &self,
        sub: &str,
        project: &str,
        scopes: Vec<String>,
        ttl: Duration,
        jti: &str,
        node: Option<NodeBinding>,
    ) -> Result<(String, Claims), KeyError> {
        let encoding = self.encoding.as_ref().ok_or(KeyError::MissingPrivateKey)?;
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            project: project.to_owned(),
            scopes,
            iat: now,
            nbf: Some(now),
            exp: now + ttl.as_secs() as i64,
            jti: jti.to_owned(),
            node,
        };
        let token = jsonwebtoken::encode(&Header::new(self.algorithm), &claims, encoding).map_err(KeyError::Sign)?;
        Ok((token, claims))
    }

    /// Checks a token's algorithm, signature and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        // The header is checked first so `alg: none` and foreign algorithms get a precise message.
        let header_alg = token
            .split('.')
            .next()
            .and_then(base64_url_decode)
            .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
            .and_then(|h| h.get("alg").and_then(|a| a.as_str()).map(str::to_owned))
            .ok_or_else(|| TokenError::Malformed("cannot read its header".into()))?;
        if header_alg != self.algorithm_name {
            return Err(TokenError::WrongAlgorithm(self.algorithm_name));
        }
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|data| data.claims).map_err(|err| {
            match err.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm(self.algorithm_name),
                ErrorKind::MissingRequiredClaim(claim) => TokenError::Malformed(format!("missing claim `{claim}`")),
                ErrorKind::Json(_) => {
                    TokenError::Malformed("its claims do not match {sub, project, scopes, exp, iat, jti}".into())
                }
                _ => TokenError::Malformed("it is not a valid JWT".into()),
            }
        })
    }
}

fn base64_url_decode(part: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()
}

fn read_key(path: &std::path::Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read { path: path.display().to_string(), source })
}

/// The revoked token ids, mirrored in memory from the `revoked_token` table.
///
/// Loaded at start, kept current by the `token_revoked` notification, and
/// reloaded whenever that notification stream reconnects.
#[derive(Clone, Default)]
pub struct Revocations(Arc<RwLock<HashSet<String>>>);

impl Revocations {
    /// True if `jti` has been revoked.
    pub fn contains(&self, jti: &str) -> bool {
        self.0.read().expect("revocation lock poisoned").contains(jti)
    }

    /// Adds one revoked id.
    pub fn insert(&self, jti: String) {
        self.0.write().expect("revocation lock poisoned").insert(jti);
    }

    /// Replaces the whole set.
    pub fn replace(&self, all: HashSet<String>) {
        *self.0.write().expect("revocation lock poisoned") = all;
    }
}

/// Parses a TTL such as `90s`, `15m`, `12h`, `30d` or `1h 30m`: at least one
/// second, at most ten years.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text.trim())
        .map_err(|err| format!("invalid ttl `{text}`: {err}; write e.g. 90s, 15m, 12h or 30d"))?;
    if ttl < Duration::from_secs(1) {
        return Err(format!("invalid ttl `{text}`: a token must live at least 1s"));
    }
    if ttl > Duration::from_secs(10 * 365 * 86_400) {
        return Err(format!("invalid ttl `{text}`: at most 10 years"));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn keys() -> Keys {
        Keys::from_settings(&AuthSettings {
            hs256_secret: Some(SecretString::from("x".repeat(32))),
            ..AuthSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let keys = keys();
        let (token, claims) = keys.mint("ada", "default", &[Scope::DispatchRead], Duration::from_secs(60)).unwrap();
        assert_eq!(keys.verify(&token).unwrap(), claims);
    }

    #[test]
    fn admin_implies_every_scope_but_node() {
        let keys = keys();
        let (token, _) = keys.mint("ada", "p", &[Scope::Admin], Duration::from_secs(60)).unwrap();
        let caller = Caller::from(keys.verify(&token).unwrap());
        assert!(Scope::ALL.iter().filter(|s| **s != Scope::Node).all(|s| caller.has(*s)));
        assert!(!caller.has(Scope::Node));
    }

    #[test]
    fn a_short_hs256_secret_is_refused() {
        let settings = AuthSettings { hs256_secret: Some(SecretString::from("short")), ..AuthSettings::default() };
        assert!(matches!(Keys::from_settings(&settings), Err(KeyError::ShortSecret)));
    }

    #[test]
    fn ttls_parse_with_units_and_zero_is_refused() {
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_ttl("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_ttl("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("0s").unwrap_err().contains("at least 1s"));
        assert!(parse_ttl("0").is_err());
    }

    #[test]
    fn admin_does_not_carry_node_rights_and_a_node_credential_names_its_node() {
        let keys = keys();
        let (token, _) = keys.mint("ada", "p", &[Scope::Admin, Scope::Node], Duration::from_secs(60)).unwrap();
        let admin = Caller::from(keys.verify(&token).unwrap());
        assert!(admin.has(Scope::DispatchWrite));
        assert!(admin.node().is_none(), "a node scope without a binding names no node");
        let binding: NodeBinding = "gpu/box-1".parse().unwrap();
        let (token, claims) = keys.mint_node("p", &binding, Duration::from_secs(60), "j1").unwrap();
        let node = Caller::from(keys.verify(&token).unwrap());
        assert_eq!(node.node(), Some(&binding));
        assert!(node.has(Scope::Node) && !node.has(Scope::DispatchRead));
        assert_eq!(claims.sub, "node:gpu/box-1");
        assert!("gpu".parse::<NodeBinding>().is_err());
        assert!("gpu/bad name".parse::<NodeBinding>().is_err());
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let keys = keys();
        let (_, mut claims) = keys.mint("ada", "p", &[Scope::Admin], Duration::from_secs(600)).unwrap();
        claims.nbf = Some(claims.iat + 300);
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret("x".repeat(32).as_bytes()),
        )
        .unwrap();
        assert_eq!(keys.verify(&token), Err(TokenError::NotYetValid));
    }

    #[test]
    fn names_follow_one_rule() {
        assert!(is_name("gpu-box_1.a"));
        for bad in ["", "a b", "a/b", &"x".repeat(65), "a\0b"] {
            assert!(!is_name(bad), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        // Test-only key pairs, generated with `openssl genpkey`; never used elsewhere.
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    fn keys(algorithm: JwtAlgorithm, prefix: &str) -> Keys {
        Keys::from_settings(&AuthSettings {
            algorithm,
            hs256_secret: None,
            public_key_path: Some(fixture(&format!("{prefix}-public.pem"))),
            private_key_path: Some(fixture(&format!("{prefix}-private.pem"))),
        })
        .unwrap()
    }

    #[test]
    fn rs256_and_eddsa_keys_sign_and_verify() {
        for (algorithm, prefix) in [(JwtAlgorithm::RS256, "rsa"), (JwtAlgorithm::EdDSA, "ed25519")] {
            let keys = keys(algorithm, prefix);
            let (token, claims) = keys.mint("ada", "p", &[Scope::DispatchRead], Duration::from_secs(60)).unwrap();
            assert_eq!(keys.verify(&token).unwrap(), claims, "{prefix}");
        }
    }

    #[test]
    fn a_gateway_pinned_to_eddsa_refuses_an_hs256_token() {
        let hs = Keys::from_settings(&AuthSettings {
            hs256_secret: Some(secrecy::SecretString::from("x".repeat(32))),
            ..AuthSettings::default()
        })
        .unwrap();
        let (token, _) = hs.mint("mallory", "p", &[Scope::Admin], Duration::from_secs(60)).unwrap();
        assert_eq!(keys(JwtAlgorithm::EdDSA, "ed25519").verify(&token), Err(TokenError::WrongAlgorithm("EdDSA")));
    }

    #[test]
    fn a_verify_only_gateway_cannot_mint() {
        let keys = Keys::from_settings(&AuthSettings {
            algorithm: JwtAlgorithm::RS256,
            hs256_secret: None,
            public_key_path: Some(fixture("rsa-public.pem")),
            private_key_path: None,
        })
        .unwrap();
        assert!(matches!(keys.mint("a", "p", &[], Duration::from_secs(1)), Err(KeyError::MissingPrivateKey)));
    }
}
