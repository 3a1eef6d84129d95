//! The `healthcheck` subcommand: one HTTP GET of the admin server's `/livez` (or any `--url`),
//! success only on `200 OK`. It exists so a container image needs no shell, curl or wget for its
//! health check (Dockerfile `HEALTHCHECK`, compose, the Helm chart test). It never goes through a
//! proxy named by the environment, and it always ends within its timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Why a probe failed; each message names the URL.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("admin.listen: {0:?} is not an address such as 0.0.0.0:9464")]
    BadListen(String),
    #[error("--url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("GET {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("GET {url}: answered {status}, expected 200")]
    Status { url: String, status: u16 },
}

/// The `/livez` URL of an admin server listening on `listen`. A wildcard address (`0.0.0.0`,
/// `[::]`) is probed on the matching loopback address, where the server also answers.
pub fn livez_url(listen: &str) -> Result<String, HealthcheckError> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| HealthcheckError::BadListen(listen.to_string()))?;
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(format!("http://{}/livez", SocketAddr::new(ip, addr.port())))
}

/// GETs `url` once; `Ok` only when it answers 200 within `timeout` (connect included).
pub async fn probe(url: &str, timeout: Duration) -> Result<(), HealthcheckError> {
    let parsed = url::Url::parse(url).map_err(|e| HealthcheckError::BadUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(HealthcheckError::BadUrl {
            url: url.to_string(),
            reason: "only http:// and https:// URLs can be probed".into(),
        });
    }
    let request_error = |e: reqwest::Error| HealthcheckError::Request {
        url: url.to_string(),
        reason: root_cause(&e, timeout),
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(request_error)?;
    let response = client.get(parsed).send().await.map_err(request_error)?;
    match response.status().as_u16() {
        200 => Ok(()),
        status => Err(HealthcheckError::Status {
            url: url.to_string(),
            status,
        }),
    }
}

/// The innermost cause of a request error ("Connection refused (os error 111)"): reqwest's own
/// layers repeat the URL and say nothing more.
fn root_cause(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {} ms", timeout.as_millis());
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn livez_url_maps_wildcards_to_loopback() {
        let cases = [
            ("0.0.0.0:9464", "http://127.0.0.1:9464/livez"),
            ("127.0.0.1:9464", "http://127.0.0.1:9464/livez"),
            ("10.1.2.3:80", "http://10.1.2.3:80/livez"),
            ("[::]:9464", "http://[::1]:9464/livez"),
            ("[::1]:1234", "http://[::1]:1234/livez"),
        ];
        for (listen, want) in cases {
            assert_eq!(livez_url(listen).unwrap(), want, "{listen}");
        }
    }

    #[test]
    fn livez_url_names_a_bad_listen_address() {
        for bad in ["", "nowhere", "localhost:9464", "0.0.0.0"] {
            let err = livez_url(bad).unwrap_err().to_string();
            assert!(err.contains("admin.listen"), "{bad}: {err}");
        }
    }
}
