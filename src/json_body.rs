//! The one way the gateway's own endpoints read a JSON request body: after the caller is
//! identified (a stranger's body is never read), at most [`MAX_BODY`] bytes whatever
//! `Content-Length` says, within [`READ_TIME`], refusals in the gateway's error shape.

use std::time::Duration;

use actix_web::web;
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::errors::GatewayError;

/// Largest body any of the gateway's own endpoints reads: a name, a URL, a description.
pub const MAX_BODY: usize = 16 * 1024;

/// Longest a client may take to send such a body.
pub const READ_TIME: Duration = Duration::from_secs(10);

/// What a request body must look like, for the refusal of one that does not.
pub trait Shape {
    /// E.g. `{"name", "url", "description"?}`.
    const SHAPE: &'static str;
}

/// Reads a JSON body of shape `T`. An empty body reads as `{}`, so a request whose fields
/// are all optional may send none.
pub async fn read<T: DeserializeOwned + Shape>(payload: web::Payload) -> Result<T, GatewayError> {
    let body = tokio::time::timeout(READ_TIME, collect(payload))
        .await
        .map_err(|_| {
            GatewayError::BadRequest(format!(
                "the request body did not arrive within {}s",
                READ_TIME.as_secs()
            ))
        })??;
    parse(&body)
}

async fn collect(mut payload: web::Payload) -> Result<BytesMut, GatewayError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| GatewayError::BadRequest(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(GatewayError::PayloadTooLarge(format!(
                "the request body is larger than {MAX_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse<T: DeserializeOwned + Shape>(body: &[u8]) -> Result<T, GatewayError> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(text)
        .map_err(|e| GatewayError::BadRequest(format!("the body is not {}: {e}", T::SHAPE)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use actix_web::FromRequest;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Named {
        name: Option<String>,
    }

    impl Shape for Named {
        const SHAPE: &'static str = "{\"name\"?}";
    }

    async fn read(body: Vec<u8>) -> Result<Named, GatewayError> {
        let (req, mut payload) = TestRequest::post().set_payload(body).to_http_parts();
        let payload = web::Payload::from_request(&req, &mut payload)
            .await
            .expect("a payload");
        super::read::<Named>(payload).await
    }

    #[actix_web::test]
    async fn reads_bodies_within_the_limit_only() {
        assert_eq!(
            read(br#"{"name":"a"}"#.to_vec())
                .await
                .unwrap()
                .name
                .as_deref(),
            Some("a")
        );
        assert!(read(b" \n".to_vec()).await.unwrap().name.is_none());
        let unknown = read(br#"{"nom":"a"}"#.to_vec()).await.unwrap_err();
        assert_eq!(unknown.status(), actix_web::http::StatusCode::BAD_REQUEST);
        assert!(
            unknown
                .to_string()
                .starts_with("the body is not {\"name\"?}"),
            "{unknown}"
        );
        let mut big = br#"{"name":""#.to_vec();
        big.resize(MAX_BODY + 1, b'a');
        let refused = read(big).await.unwrap_err();
        assert_eq!(
            refused.status(),
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
