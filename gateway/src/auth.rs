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
    /// Unique token id, used for revocation.
    pub jti: String,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub sub: String,
    pub project: String,
    pub jti: String,
    scopes: HashSet<String>,
}

impl Caller {
    /// True if the caller holds `scope` (or `admin`, which implies every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope.as_str()) || self.scopes.contains(Scope::Admin.as_str())
    }
}

impl From<Claims> for Caller {
    fn from(claims: Claims) -> Self {
        Caller {
            sub: claims.sub,
            project: claims.project,
            jti: claims.jti,
            scopes: claims.scopes.into_iter().collect(),
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
        validation.set_required_spec_claims(&["exp", "sub", "jti"]);
        Ok(Keys { algorithm, algorithm_name: name, decoding, encoding, validation })
    }

    /// Signs a new token.
    pub fn mint(
        &self,
        sub: &str,
        project: &str,
        scopes: &[Scope],
        ttl: Duration,
    ) -> Result<(String, Claims), KeyError> {
        self.mint_with_id(sub, project, scopes, ttl, &Uuid::new_v4().to_string())
    }

    /// [`Keys::mint`] with a chosen token id (`jti`), for tokens whose id is
    /// recorded before they are signed.
    pub fn mint_with_id(
        &self,
        sub: &str,
        project: &str,
        scopes: &[Scope],
        ttl: Duration,
        jti: &str,
    ) -> Result<(String, Claims), KeyError> {
        let encoding = self.encoding.as_ref().ok_or(KeyError::MissingPrivateKey)?;
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            project: project.to_owned(),
            scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            iat: now,
            exp: now + ttl.as_secs() as i64,
            jti: jti.to_owned(),
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

/// Parses a TTL such as `90s`, `15m`, `12h`, `30d`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("invalid ttl `{text}`: expected a number and a unit, e.g. 12h"))?;
    let seconds = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid ttl unit `{unit}`: use s, m, h or d")),
    };
    Ok(Duration::from_secs(number * seconds))
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
    fn admin_implies_every_scope() {
        let keys = keys();
        let (token, _) = keys.mint("ada", "p", &[Scope::Admin], Duration::from_secs(60)).unwrap();
        let caller = Caller::from(keys.verify(&token).unwrap());
        assert!(Scope::ALL.iter().all(|s| caller.has(*s)));
    }

    #[test]
    fn a_short_hs256_secret_is_refused() {
        let settings = AuthSettings { hs256_secret: Some(SecretString::from("short")), ..AuthSettings::default() };
        assert!(matches!(Keys::from_settings(&settings), Err(KeyError::ShortSecret)));
    }

    #[test]
    fn ttls_parse_with_units() {
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_ttl("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("5w").is_err());
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
