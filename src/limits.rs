//! Limits on what a client controls before any handler sees it: request header sizes.
//! The figures follow what an AWS load balancer itself accepts (16 KiB per header, 64 KiB
//! in all), so nothing the ALB passes is refused, and a client talking to the gateway
//! directly cannot send more.

use std::future::Future;

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::ResponseError;
use futures_util::future::{ready, Either, MapOk, Ready, TryFutureExt};

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

type Answered<B> = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>;

/// What a `wrap_fn` middleware that may answer by itself returns: its own answer, or the
/// service's (`F`). Not boxed: these run for every request.
pub type Answer<F, B> =
    Either<Ready<Answered<B>>, MapOk<F, fn(ServiceResponse<B>) -> ServiceResponse<EitherBody<B>>>>;

/// The middleware's own answer instead of the service's.
pub fn answer<F, B>(req: ServiceRequest, resp: actix_web::HttpResponse) -> Answer<F, B> {
    Either::Left(ready(Ok(req.into_response(resp).map_into_right_body())))
}

/// On to the service.
pub fn pass_on<F, B>(call: F) -> Answer<F, B>
where
    F: Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
{
    let left: fn(ServiceResponse<B>) -> ServiceResponse<EitherBody<B>> =
        ServiceResponse::map_into_left_body::<BoxBody>;
    Either::Right(call.map_ok(left))
}

/// Middleware (for `wrap_fn`): 431 for oversized headers, otherwise on to the service.
pub fn limit_headers<S, B>(req: ServiceRequest, srv: &S) -> Answer<S::Future, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    if let Some(why) = oversized(req.headers()) {
        tracing::info!(path = req.path(), why, "request refused");
        let resp = GatewayError::HeadersTooLarge(why).error_response();
        return answer(req, resp);
    }
    pass_on(srv.call(req))
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
