//! The one way the gateway's own endpoints read a JSON request body: at most [`MAX_BODY`]
//! bytes, whatever `Content-Length` says, and refusals in the gateway's error shape.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use bytes::BytesMut;
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::errors::GatewayError;

/// Largest body any of the gateway's own endpoints reads: a name, a URL, a description.
pub const MAX_BODY: usize = 16 * 1024;

/// What a request body must look like, for the refusal of one that does not.
pub trait Shape {
    /// E.g. `{"name", "url", "description"?}`.
    const SHAPE: &'static str;
}

/// A JSON body of shape `T`. An empty body reads as `{}`, so a request whose fields are all
/// optional may send none.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Shape + 'static> FromRequest for JsonBody<T> {
    type Error = GatewayError;
    type Future = LocalBoxFuture<'static, Result<Self, GatewayError>>;

    fn from_request(_req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let mut payload = payload.take();
        Box::pin(async move {
            let mut body = BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk
                    .map_err(|e| GatewayError::BadRequest(format!("reading the body: {e}")))?;
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(GatewayError::PayloadTooLarge(format!(
                        "the request body is larger than {MAX_BODY} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            parse(&body).map(JsonBody)
        })
    }
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
        JsonBody::<Named>::from_request(&req, &mut payload)
            .await
            .map(|b| b.0)
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
