//! Limits on what a client controls before any handler sees it: request header sizes.
//! The figures follow what an AWS load balancer itself accepts (16 KiB per header, 64 KiB
//! in all), so nothing the ALB passes is refused, and a client talking to the gateway
//! directly cannot send more.

use std::future::{ready, Future};
use std::pin::Pin;

use actix_web::body::EitherBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::ResponseError;

use crate::errors::GatewayError;

pub const MAX_HEADER_VALUE: usize = 16 * 1024;
pub const MAX_HEADERS_TOTAL: usize = 64 * 1024;

/// Why the headers are too large, if they are.
pub fn oversized(headers: &HeaderMap) -> Option<String> {
    let mut total = 0usize;
    for (name, value) in headers.iter() {
        let size = name.as_str().len() + value.len();
        if value.len() > MAX_HEADER_VALUE {
            return Some(format!(
                "header {name} is {} bytes; at most {MAX_HEADER_VALUE} are accepted",
                value.len()
            ));
        }
        total += size;
    }
    (total > MAX_HEADERS_TOTAL).then(|| {
        format!("request headers are {total} bytes; at most {MAX_HEADERS_TOTAL} are accepted")
    })
}

/// What a `wrap_fn` middleware that may answer by itself returns.
pub type Answer<B> =
    Pin<Box<dyn Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>>>;

/// Middleware (for `wrap_fn`): 431 for oversized headers, otherwise on to the service.
pub fn limit_headers<S, B>(req: ServiceRequest, srv: &S) -> Answer<B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: 'static,
{
    if let Some(why) = oversized(req.headers()) {
        tracing::info!(path = req.path(), why, "request refused");
        let resp = GatewayError::HeadersTooLarge(why).error_response();
        return Box::pin(ready(Ok(req.into_response(resp).map_into_right_body())));
    }
    let call = srv.call(req);
    Box::pin(async move { Ok(call.await?.map_into_left_body()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    #[test]
    fn refuses_one_huge_header_or_many_large_ones() {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-a"),
            HeaderValue::from_str(&"a".repeat(MAX_HEADER_VALUE)).unwrap(),
        );
        assert_eq!(oversized(&headers), None);
        headers.insert(
            HeaderName::from_static("x-big"),
            HeaderValue::from_str(&"b".repeat(MAX_HEADER_VALUE + 1)).unwrap(),
        );
        assert!(oversized(&headers).unwrap().contains("x-big"));
        let mut many = HeaderMap::new();
        for i in 0..5 {
            many.insert(
                HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                HeaderValue::from_str(&"c".repeat(MAX_HEADER_VALUE)).unwrap(),
            );
        }
        assert!(oversized(&many).unwrap().contains("request headers"));
    }
}
