//! The public listener's access log: one line per answered request, counted by status.

use std::time::Instant;

use actix_web::dev::Service;
use actix_web::HttpMessage;

use crate::gateway::LoggedUser;
use crate::metrics::HttpMetrics;

/// Logs each request once it is answered and counts it by status class.
pub fn access_log<S, B>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
    metrics: HttpMetrics,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>>
where
    S: Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
{
    let started = Instant::now();
    let response = srv.call(req);
    async move {
        let response = response.await?;
        let status = response.status().as_u16();
        metrics.request(status);
        // Successful requests are logged at debug: nothing is copied or looked up for a
        // line that is not written (this runs for every proxied request).
        let level_on = if status >= 400 {
            tracing::enabled!(tracing::Level::INFO)
        } else {
            tracing::enabled!(tracing::Level::DEBUG)
        };
        if !level_on {
            return Ok(response);
        }
        let req = response.request();
        let (method, path) = (req.method(), req.path());
        let extensions = req.extensions();
        let user = extensions
            .get::<LoggedUser>()
            .map_or("", |u| u.0.user_id.as_str());
        // To the microsecond: more digits are noise.
        let elapsed_ms = started.elapsed().as_micros() as f64 / 1000.0;
        if status >= 400 {
            tracing::info!(%method, path, status, user, elapsed_ms, "request");
        } else {
            tracing::debug!(%method, path, status, user, elapsed_ms, "request");
        }
        drop(extensions);
        Ok(response)
    }
}
