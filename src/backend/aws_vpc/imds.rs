//! The EC2 instance metadata service (IMDS): our instance id, region and role credentials.
//!
//! IMDSv2 first (a session token from `PUT /latest/api/token`, sent back on every read), IMDSv1
//! (plain GETs) when the token cannot be had — old instances, or containers one network hop
//! too far for the token's default hop limit. After a failed token request v1 is used for five
//! minutes before v2 is tried again, so a silent token endpoint costs one timeout, not one per
//! read. The endpoint follows the AWS SDKs' settings: `AWS_EC2_METADATA_SERVICE_ENDPOINT`,
//! else `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6` for `[fd00:ec2::254]`, else
//! `169.254.169.254`; `AWS_EC2_METADATA_DISABLED=true` turns it off.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::transport::{self, Client, HttpError};

const TOKEN_TTL_SECS: u64 = 21600;
const TOKEN_TIMEOUT: Duration = Duration::from_secs(1);
const GET_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to stay on IMDSv1 after the token request failed.
const V1_HOLD: Duration = Duration::from_secs(300);

/// Why a metadata read failed.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("the instance metadata service is disabled (AWS_EC2_METADATA_DISABLED=true)")]
    Disabled,
    #[error("metadata GET {url}: HTTP {status}: {body:?}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("metadata GET {url}")]
    Http {
        url: String,
        #[source]
        source: HttpError,
    },
    #[error("metadata {url}: unexpected answer: {reason}")]
    Decode { url: String, reason: String },
}

#[derive(Debug, Default)]
enum TokenState {
    #[default]
    None,
    Token(String, Instant),
    /// The token request failed; use v1 until then.
    V1Until(Instant),
}

/// A metadata client.
#[derive(Debug)]
pub struct Imds {
    http: Client,
    /// Base URL without trailing slash; `None` when disabled.
    base: Option<String>,
    token: Mutex<TokenState>,
}

/// Credentials as the signer needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub expires: Option<SystemTime>,
}

impl Imds {
    /// A client configured from the environment, as the AWS SDKs read it.
    pub fn from_env(http: Client) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let base =
            if var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
                None
            } else if let Some(url) = var("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
                Some(url.trim_end_matches('/').to_owned())
            } else if var("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE")
                .is_some_and(|m| m.eq_ignore_ascii_case("ipv6"))
            {
                Some("http://[fd00:ec2::254]".to_owned())
            } else {
                Some("http://169.254.169.254".to_owned())
            };
        Imds {
            http,
            base,
            token: Mutex::new(TokenState::None),
        }
    }

    /// Where the service is read from, for messages.
    pub fn endpoint(&self) -> &str {
        self.base.as_deref().unwrap_or("(disabled)")
    }

    /// A session token, or `None` to read with IMDSv1.
    async fn token(&self, base: &str) -> Option<String> {
        let mut state = self.token.lock().await;
        match &*state {
            TokenState::Token(t, until) if Instant::now() < *until => return Some(t.clone()),
            TokenState::V1Until(until) if Instant::now() < *until => return None,
            _ => {}
        }
        let url = format!("{base}/latest/api/token");
        let req = ::http::Request::put(&url)
            .header(
                "x-aws-ec2-metadata-token-ttl-seconds",
                TOKEN_TTL_SECS.to_string(),
            )
            .body(Full::new(Bytes::new()));
        let answer = match req {
            Ok(req) => transport::send(&self.http, req, TOKEN_TIMEOUT)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok(r) if r.status == 200 && !r.body.trim().is_empty() => {
                let token = r.body.trim().to_owned();
                // Renew a minute early so a token never expires between check and use.
                *state = TokenState::Token(
                    token.clone(),
                    Instant::now() + Duration::from_secs(TOKEN_TTL_SECS - 60),
                );
                Some(token)
            }
            other => {
                let why = match other {
                    Ok(r) => format!("HTTP {}", r.status),
                    Err(e) => e,
                };
                tracing::info!(
                    "IMDSv2 token from {url} unavailable ({why}); reading metadata with IMDSv1"
                );
                *state = TokenState::V1Until(Instant::now() + V1_HOLD);
                None
            }
        }
    }

    /// Reads `path` under `/latest/` (e.g. `meta-data/instance-id`), trimmed.
    ///
    /// # Errors
    /// The service is disabled, unreachable, or answers with anything but 200.
    pub async fn get(&self, path: &str) -> Result<String, ImdsError> {
        let base = self.base.as_deref().ok_or(ImdsError::Disabled)?;
        let url = format!("{base}/latest/{path}");
        for attempt in 0..2 {
            let token = self.token(base).await;
            let mut req = ::http::Request::get(&url);
            if let Some(t) = &token {
                req = req.header("x-aws-ec2-metadata-token", t);
            }
            let req = req
                .body(Full::new(Bytes::new()))
                .map_err(|e| ImdsError::Decode {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            let r = transport::send(&self.http, req, GET_TIMEOUT)
                .await
                .map_err(|source| ImdsError::Http {
                    url: url.clone(),
                    source,
                })?;
            match r.status {
                200 => return Ok(r.body.trim().to_owned()),
                // Our token expired or was revoked, or we fell back to v1 on an instance that
                // requires v2 (the token request failed only transiently): get a token, once.
                401 if attempt == 0 => *self.token.lock().await = TokenState::None,
                status => {
                    return Err(ImdsError::Status {
                        url,
                        status,
                        body: r.body.chars().take(200).collect(),
                    })
                }
            }
        }
        Err(ImdsError::Status {
            url,
            status: 401,
            body: "token refused twice".into(),
        })
    }

    /// This instance's id.
    pub async fn instance_id(&self) -> Result<String, ImdsError> {
        self.get("meta-data/instance-id").await
    }

    /// This instance's region: `placement/region`, else its availability zone without the
    /// zone letter (older metadata versions have only that).
    pub async fn region(&self) -> Result<String, ImdsError> {
        match self.get("meta-data/placement/region").await {
            Ok(r) if !r.is_empty() => Ok(r),
            first => {
                let az = self
                    .get("meta-data/placement/availability-zone")
                    .await
                    .map_err(|e| first.err().unwrap_or(e))?;
                let region = az.trim_end_matches(|c: char| c.is_ascii_lowercase());
                if region.is_empty() || region.len() == az.len() {
                    return Err(ImdsError::Decode {
                        url: "meta-data/placement/availability-zone".into(),
                        reason: format!("{az:?} is not an availability zone"),
                    });
                }
                Ok(region.to_owned())
            }
        }
    }

    /// The credentials of the instance's IAM role.
    pub async fn role_credentials(&self) -> Result<Credentials, ImdsError> {
        let roles = self.get("meta-data/iam/security-credentials/").await?;
        let Some(role) = roles.lines().map(str::trim).find(|l| !l.is_empty()) else {
            return Err(ImdsError::Decode {
                url: "meta-data/iam/security-credentials/".into(),
                reason: "no IAM role is attached to this instance".into(),
            });
        };
        let path = format!("meta-data/iam/security-credentials/{role}");
        let text = self.get(&path).await?;
        parse_role_credentials(&text).map_err(|reason| ImdsError::Decode { url: path, reason })
    }
}

/// Parses the role credentials document (`{"Code":"Success","AccessKeyId":…}`).
pub fn parse_role_credentials(text: &str) -> Result<Credentials, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if let Some(code) = field("Code").filter(|c| c != "Success") {
        return Err(format!(
            "Code {code:?}: {}",
            field("Message").unwrap_or_default()
        ));
    }
    Ok(Credentials {
        access_key_id: field("AccessKeyId").ok_or("AccessKeyId missing")?,
        secret_access_key: field("SecretAccessKey").ok_or("SecretAccessKey missing")?,
        session_token: field("Token"),
        expires: field("Expiration").and_then(|e| parse_utc(&e)),
    })
}

/// Parses `2026-11-23T18:04:05Z` (the form IMDS uses). `None` for anything else.
fn parse_utc(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_credentials_parse_with_expiry() {
        let c = parse_role_credentials(
            r#"{"Code":"Success","LastUpdated":"2026-11-23T12:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIAX","SecretAccessKey":"s3cr3t","Token":"tok","Expiration":"2026-11-23T18:04:05Z"}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id, "ASIAX");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        let secs = c
            .expires
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(secs, 1_795_457_045);
        assert!(parse_role_credentials(r#"{"Code":"Failure","Message":"no"}"#).is_err());
        assert!(parse_role_credentials("<html>").is_err());
        assert_eq!(
            parse_utc("1970-01-01T00:00:00Z"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(parse_utc("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_utc("garbage"), None);
    }
}
