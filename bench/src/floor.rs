//! The floor under the gateway's proxy cost: the least an actix-web server with an awc client
//! can do to proxy a request (copy the method, path, headers and body to the upstream with
//! its credentials, stream the answer back). No identity, routing, limits, metrics or
//! logging. Run beside the gateway and nginx, it shows how much of the gateway's cost is the
//! stack itself and how much is the gateway's own work.

use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;

use actix_web::dev::ServerHandle;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context;

struct Target {
    base: String,
    authorization: String,
}

async fn forward(
    req: HttpRequest,
    body: web::Payload,
    client: web::Data<awc::Client>,
    target: web::Data<Target>,
) -> HttpResponse {
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut upstream = client.request(req.method().clone(), format!("{}{path}", target.base));
    for (name, value) in req.headers() {
        if name != header::HOST && name != header::CONNECTION {
            upstream = upstream.append_header((name.clone(), value.clone()));
        }
    }
    upstream = upstream.insert_header((header::AUTHORIZATION, target.authorization.as_str()));
    match upstream.send_stream(body).await {
        Ok(response) => {
            let mut out = HttpResponse::build(response.status());
            for (name, value) in response.headers() {
                if name != header::CONNECTION && name != header::TRANSFER_ENCODING {
                    out.append_header((name.clone(), value.clone()));
                }
            }
            out.streaming(response)
        }
        Err(e) => HttpResponse::BadGateway().body(e.to_string()),
    }
}

/// The floor proxy, on its own thread and actix system until dropped.
pub struct Floor {
    pub addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Floor {
    pub fn start(
        upstream: SocketAddr,
        authorization: &str,
        workers: usize,
    ) -> anyhow::Result<Floor> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let authorization = authorization.to_owned();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let system = actix_web::rt::System::new();
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(
                        awc::Client::builder()
                            .disable_redirects()
                            .no_default_headers()
                            .finish(),
                    ))
                    .app_data(web::Data::new(Target {
                        base: format!("http://{upstream}"),
                        authorization: authorization.clone(),
                    }))
                    .default_service(web::to(forward))
            })
            .workers(workers)
            .disable_signals()
            .listen(listener);
            match server {
                Ok(server) => {
                    let server = server.run();
                    let _ = tx.send(Ok(server.handle()));
                    let _ = system.block_on(server);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        let handle = rx
            .recv()
            .context("the floor proxy's thread ended")?
            .context("start the floor proxy")?;
        Ok(Floor {
            addr,
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        // Stopping needs the server's own system; from here, a blocking wait on a fresh one.
        let handle = self.handle.clone();
        let _ = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(handle.stop(false));
        })
        .join();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
