//! A small client for the six EC2 Query API actions the backend uses, signed with SigV4.
//!
//! Each call is one form-encoded `POST` (`Action=…&Version=2016-11-15&…`), signed by
//! `aws-sigv4`, and answered with XML (see [`super::xml`]). Errors keep the API's own code and
//! message (`RouteLimitExceeded: The maximum number of routes has been reached.`) so the
//! operator reads what AWS said, and so the backend can tell configuration mistakes from
//! transient trouble.
//!
//! Endpoint: `AWS_ENDPOINT_URL_EC2`, else `AWS_ENDPOINT_URL` (the SDKs' service-specific and
//! global overrides; ignored when `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`), else
//! `https://ec2.<region>.amazonaws.com` (`.amazonaws.com.cn` in China regions).
//! Credentials: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, else the
//! instance role from the metadata service, refreshed five minutes before it expires.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::Full;
use ipnet::Ipv4Net;
use tokio::sync::Mutex;

use super::imds::{Credentials, Imds, ImdsError};
use super::transport::{self, Client, HttpError};
use super::xml::{self, Element, Instance, RouteTable};

/// The EC2 API version every SDK speaks today.
pub const API_VERSION: &str = "2016-11-15";
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Role credentials are refreshed this long before they expire.
const REFRESH_EARLY: Duration = Duration::from_secs(300);

/// Why an EC2 call failed.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// EC2 answered with an error document: its code and message, verbatim.
    #[error("{action}: {code}: {message}")]
    Api {
        action: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    /// An error status without an EC2 error document (a proxy, a load balancer).
    #[error("{action}: HTTP {status} from {endpoint}: {body:?}")]
    Status {
        action: &'static str,
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("{action}: no answer from {endpoint}")]
    Http {
        action: &'static str,
        endpoint: String,
        #[source]
        source: HttpError,
    },
    #[error("{action}: unexpected answer: {reason}")]
    Decode {
        action: &'static str,
        reason: String,
    },
    #[error("{action}: no AWS credentials (none in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and the instance role's could not be read)")]
    Credentials {
        action: &'static str,
        #[source]
        source: ImdsError,
    },
    #[error("{action}: signing the request: {reason}")]
    Sign {
        action: &'static str,
        reason: String,
    },
}

impl Ec2Error {
    /// The EC2 error code, when EC2 sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Ec2Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Where credentials come from.
#[derive(Debug)]
enum CredentialSource {
    Static(Credentials),
    Role {
        imds: Arc<Imds>,
        cached: Mutex<Option<Credentials>>,
    },
}

/// The EC2 client.
#[derive(Debug)]
pub struct Ec2 {
    http: Client,
    endpoint: String,
    region: String,
    creds: CredentialSource,
}

/// The endpoint the SDKs would use for `region`, honouring the override variables.
pub fn endpoint_from_env(region: &str) -> String {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let ignore =
        var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let configured = if ignore {
        None
    } else {
        var("AWS_ENDPOINT_URL_EC2").or_else(|| var("AWS_ENDPOINT_URL"))
    };
    match configured {
        Some(url) => url.trim().trim_end_matches('/').to_owned(),
        None if region.starts_with("cn-") => format!("https://ec2.{region}.amazonaws.com.cn"),
        None => format!("https://ec2.{region}.amazonaws.com"),
    }
}

impl Ec2 {
    /// A client for `region`, with endpoint and credentials from the environment (role
    /// credentials from `imds` when the environment has none).
    pub fn from_env(http: Client, region: &str, imds: Arc<Imds>) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let creds = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => {
                CredentialSource::Static(Credentials {
                    access_key_id,
                    secret_access_key,
                    session_token: var("AWS_SESSION_TOKEN"),
                    expires: None,
                })
            }
            _ => CredentialSource::Role {
                imds,
                cached: Mutex::new(None),
            },
        };
        Ec2 {
            http,
            endpoint: endpoint_from_env(region),
            region: region.to_owned(),
            creds,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Where the credentials come from, for the start-up log line.
    pub fn credential_source(&self) -> &'static str {
        match self.creds {
            CredentialSource::Static(_) => "environment (AWS_ACCESS_KEY_ID)",
            CredentialSource::Role { .. } => "instance role (metadata service)",
        }
    }

    async fn credentials(&self, action: &'static str) -> Result<Credentials, Ec2Error> {
        match &self.creds {
            CredentialSource::Static(c) => Ok(c.clone()),
            CredentialSource::Role { imds, cached } => {
                let mut cached = cached.lock().await;
                if let Some(c) = &*cached {
                    let fresh = match c.expires {
                        None => true,
                        Some(e) => SystemTime::now() + REFRESH_EARLY < e,
                    };
                    if fresh {
                        return Ok(c.clone());
                    }
                }
                let c = imds
                    .role_credentials()
                    .await
                    .map_err(|source| Ec2Error::Credentials { action, source })?;
                *cached = Some(c.clone());
                Ok(c)
            }
        }
    }

    /// One signed call; returns the parsed answer document.
    async fn call(
        &self,
        action: &'static str,
        params: &[(String, String)],
    ) -> Result<Element, Ec2Error> {
        let mut body = format!("Action={action}&Version={API_VERSION}");
        for (k, v) in params {
            let _ = write!(body, "&{}={}", encode(k), encode(v));
        }
        let creds = self.credentials(action).await?;
        let uri = format!("{}/", self.endpoint);
        let host = uri
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().to_owned()))
            .ok_or_else(|| Ec2Error::Sign {
                action,
                reason: format!("endpoint {:?} is not a URL", self.endpoint),
            })?;
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let headers = [("host", host.as_str()), ("content-type", content_type)];

        let identity = aws_credential_types::Credentials::new(
            creds.access_key_id,
            creds.secret_access_key,
            creds.session_token,
            creds.expires,
            "flanneld",
        )
        .into();
        let sign_err = |e: &dyn std::fmt::Display| Ec2Error::Sign {
            action,
            reason: e.to_string(),
        };
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| sign_err(&e))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            &uri,
            headers.iter().copied(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| sign_err(&e))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| sign_err(&e))?
            .into_parts();
        let mut req = http::Request::post(&uri)
            .header("host", &host)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| sign_err(&e))?;
        instructions.apply_to_request_http1x(&mut req);

        let endpoint = || self.endpoint.clone();
        let resp = transport::send(&self.http, req, CALL_TIMEOUT)
            .await
            .map_err(|source| Ec2Error::Http {
                action,
                endpoint: endpoint(),
                source,
            })?;
        if !(200..300).contains(&resp.status) {
            return Err(match xml::api_error(&resp.body) {
                Some(e) => Ec2Error::Api {
                    action,
                    status: resp.status,
                    code: e.code,
                    message: e.message,
                },
                None => Ec2Error::Status {
                    action,
                    endpoint: endpoint(),
                    status: resp.status,
                    body: resp.body.chars().take(300).collect(),
                },
            });
        }
        xml::parse(&resp.body).map_err(|reason| Ec2Error::Decode { action, reason })
    }

    /// `DescribeInstances` for one instance id.
    pub async fn describe_instance(&self, id: &str) -> Result<Option<Instance>, Ec2Error> {
        let root = self
            .call("DescribeInstances", &[("InstanceId.1".into(), id.into())])
            .await?;
        Ok(xml::instances(&root).into_iter().find(|i| i.id == id))
    }

    /// `DescribeRouteTables` for the given ids (all of them must exist, or EC2 says which not).
    pub async fn route_tables_by_id(&self, ids: &[String]) -> Result<Vec<RouteTable>, Ec2Error> {
        let params: Vec<(String, String)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("RouteTableId.{}", i + 1), id.clone()))
            .collect();
        self.route_tables(params).await
    }

    /// `DescribeRouteTables` with filters (`[("vpc-id", "vpc-1")]`), all pages.
    pub async fn route_tables_filtered(
        &self,
        filters: &[(&str, &str)],
    ) -> Result<Vec<RouteTable>, Ec2Error> {
        let mut params = Vec::new();
        for (i, (name, value)) in filters.iter().enumerate() {
            params.push((format!("Filter.{}.Name", i + 1), (*name).to_owned()));
            params.push((format!("Filter.{}.Value.1", i + 1), (*value).to_owned()));
        }
        self.route_tables(params).await
    }

    async fn route_tables(
        &self,
        params: Vec<(String, String)>,
    ) -> Result<Vec<RouteTable>, Ec2Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        // A bound on pages, so a misbehaving endpoint repeating its token cannot loop us.
        for _ in 0..100 {
            let mut p = params.clone();
            if let Some(t) = &token {
                p.push(("NextToken".into(), t.clone()));
            }
            let root = self.call("DescribeRouteTables", &p).await?;
            let (tables, next) = xml::route_tables(&root);
            out.extend(tables);
            match next {
                Some(t) if token.as_ref() != Some(&t) => token = Some(t),
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// `ModifyNetworkInterfaceAttribute SourceDestCheck=false`: lets the ENI carry packets
    /// for pod addresses that are not its own.
    pub async fn disable_source_dest_check(&self, eni: &str) -> Result<(), Ec2Error> {
        self.call(
            "ModifyNetworkInterfaceAttribute",
            &[
                ("NetworkInterfaceId".into(), eni.into()),
                ("SourceDestCheck.Value".into(), "false".into()),
            ],
        )
        .await
        .map(drop)
    }

    pub async fn create_route(
        &self,
        table: &str,
        cidr: Ipv4Net,
        eni: &str,
    ) -> Result<(), Ec2Error> {
        self.call("CreateRoute", &route_params(table, cidr, Some(eni)))
            .await
            .map(drop)
    }

    pub async fn replace_route(
        &self,
        table: &str,
        cidr: Ipv4Net,
        eni: &str,
    ) -> Result<(), Ec2Error> {
        self.call("ReplaceRoute", &route_params(table, cidr, Some(eni)))
            .await
            .map(drop)
    }

    pub async fn delete_route(&self, table: &str, cidr: Ipv4Net) -> Result<(), Ec2Error> {
        self.call("DeleteRoute", &route_params(table, cidr, None))
            .await
            .map(drop)
    }
}

fn route_params(table: &str, cidr: Ipv4Net, eni: Option<&str>) -> Vec<(String, String)> {
    let mut p = vec![
        ("RouteTableId".into(), table.into()),
        ("DestinationCidrBlock".into(), cidr.to_string()),
    ];
    if let Some(eni) = eni {
        p.push(("NetworkInterfaceId".into(), eni.into()));
    }
    p
}

/// Percent-encodes everything but RFC 3986's unreserved characters (what SigV4 expects).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("10.5.3.0/24"), "10.5.3.0%2F24");
        assert_eq!(encode("a b+c=d&é"), "a%20b%2Bc%3Dd%26%C3%A9");
        assert_eq!(encode("rtb-0aB_~"), "rtb-0aB_~");
    }

    #[test]
    fn default_endpoints_follow_the_region() {
        // Only meaningful without override variables in the test environment.
        if std::env::var_os("AWS_ENDPOINT_URL_EC2").is_none()
            && std::env::var_os("AWS_ENDPOINT_URL").is_none()
        {
            assert_eq!(
                endpoint_from_env("eu-west-1"),
                "https://ec2.eu-west-1.amazonaws.com"
            );
            assert_eq!(
                endpoint_from_env("cn-north-1"),
                "https://ec2.cn-north-1.amazonaws.com.cn"
            );
        }
    }
}
