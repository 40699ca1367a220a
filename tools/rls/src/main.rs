//! meshguard-rls: Envoy's rate-limit service (`envoy.service.ratelimit.v3.RateLimitService`)
//! served by Limitador's engine (the `limitador` crate) over Redis, for meshguard's fleet tests
//! and demos. It only translates the call, like limitador-server's RLS endpoint does:
//!
//! - the request's `domain` is Limitador's namespace;
//! - its descriptors are the CEL list `descriptors` (`descriptors[0].policy == 'free'`);
//! - `hits_addend` (0 counts as 1) is the delta, admitted atomically (reserve, then commit);
//! - the answer is `OVER_LIMIT` when a limit is exceeded, else `OK`, with one status per request
//!   descriptor carrying the most restrictive counter's numbers (limit, remaining, reset), and
//!   `UNKNOWN` when Redis cannot be reached.
//!
//! Usage: `meshguard-rls --listen 127.0.0.1:8081 --limits limits.yaml --redis redis://127.0.0.1:6379
//! [--delay-file PATH]`. Counters live in Redis (Limitador's `AsyncRedisStorage`: every call is
//! one Redis script run, so all replicas of the service agree). `--delay-file`: when that file exists, each answer waits the milliseconds it holds
//! (fault tests: a slow service). Prints `listening on <addr>` once it serves.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use limitador::counter::Counter;
use limitador::limit::{Context, Limit, Namespace};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::storage::AsyncCounterStorage;
use limitador::AsyncRateLimiter;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

mod rls;
use rls::{Code, DescriptorStatus, RateLimitRequest, RateLimitResponse};

struct Args {
    listen: SocketAddr,
    limits: PathBuf,
    redis: String,
    delay_file: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!("usage: meshguard-rls --listen ADDR --limits FILE --redis URL [--delay-file FILE]");
    std::process::exit(2)
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let (mut listen, mut limits, mut redis, mut delay_file) = (None, None, None, None);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = Some(value().parse().unwrap_or_else(|_| usage())),
            "--limits" => limits = Some(PathBuf::from(value())),
            "--redis" => redis = Some(value()),
            "--delay-file" => delay_file = Some(PathBuf::from(value())),
            _ => usage(),
        }
    }
    let (Some(listen), Some(limits), Some(redis)) = (listen, limits, redis) else {
        usage()
    };
    Args {
        listen,
        limits,
        redis,
        delay_file,
    }
}

/// How long a reservation holds capacity if its commit never comes (a crash in between).
const HOLD: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct RateLimitService {
    limiter: Arc<AsyncRateLimiter>,
    delay_file: Option<Arc<PathBuf>>,
}

impl RateLimitService {
    async fn should_rate_limit(&self, req: RateLimitRequest) -> RateLimitResponse {
        if let Some(path) = &self.delay_file {
            if let Ok(text) = tokio::fs::read_to_string(path.as_ref()).await {
                let ms = text.trim().parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
        let namespace = Namespace::from(req.domain.as_str());
        let descriptors: Vec<HashMap<String, String>> = req
            .descriptors
            .iter()
            .map(|d| {
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect()
            })
            .collect();
        let mut ctx = Context::default();
        ctx.list_binding("descriptors".to_string(), descriptors);
        let delta = u64::from(req.hits_addend.max(1));
        // Limitador's Redis `check_and_update` reads the counters and then increments them in a
        // second round trip, so concurrent calls can both pass the last unit. `reserve` checks
        // and holds atomically (one Redis script): admission is exact; `commit_reservation` then
        // turns the hold into the count.
        let reserved = self
            .limiter
            .reserve(&namespace, &ctx, delta, Some(HOLD))
            .await
            .map_err(|e| e.to_string());
        let reserved = match reserved {
            Ok(r) if !r.limited => {
                let id = r.reservation_id.as_ref();
                let committed = self
                    .limiter
                    .commit_reservation(&namespace, &ctx, id, delta)
                    .await
                    .map_err(|e| e.to_string());
                committed.map(|_| r)
            }
            other => other,
        };
        match reserved {
            Ok(result) => {
                let code = if result.limited {
                    Code::OverLimit
                } else {
                    Code::Ok
                };
                let status = tightest(&result.counters).map(|c| DescriptorStatus::of(code, c));
                RateLimitResponse {
                    overall_code: code as i32,
                    statuses: req
                        .descriptors
                        .iter()
                        .filter_map(|_| status.clone())
                        .collect(),
                    ..RateLimitResponse::default()
                }
            }
            Err(e) => {
                eprintln!("meshguard-rls: storage error: {e}");
                RateLimitResponse {
                    overall_code: Code::Unknown as i32,
                    ..RateLimitResponse::default()
                }
            }
        }
    }
}

/// The counter with the least remaining (the one a caller runs into first).
fn tightest(counters: &[Counter]) -> Option<&Counter> {
    counters
        .iter()
        .min_by_key(|c| c.remaining().unwrap_or(c.max_value()))
}

impl DescriptorStatus {
    fn of(code: Code, c: &Counter) -> DescriptorStatus {
        let reset = c.expires_in().unwrap_or(c.window());
        DescriptorStatus {
            code: code as i32,
            current_limit: Some(rls::RateLimit {
                name: c.limit().name().unwrap_or_default().to_string(),
                requests_per_unit: u32::try_from(c.max_value()).unwrap_or(u32::MAX),
                unit: rls::unit_of(c.window()) as i32,
            }),
            limit_remaining: u32::try_from(c.remaining().unwrap_or(0)).unwrap_or(u32::MAX),
            duration_until_reset: Some(rls::Duration {
                seconds: i64::try_from(reset.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(reset.subsec_nanos()).unwrap_or(0),
            }),
        }
    }
}

impl UnaryService<RateLimitRequest> for RateLimitService {
    type Response = RateLimitResponse;
    type Future = BoxFuture<Response<RateLimitResponse>, Status>;

    fn call(&mut self, request: Request<RateLimitRequest>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            Ok(Response::new(
                svc.should_rate_limit(request.into_inner()).await,
            ))
        })
    }
}

/// The routing tonic-build would generate for this one-method service.
impl<B> Service<http::Request<B>> for RateLimitService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.clone();
        match req.uri().path() {
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" => {
                Box::pin(async move {
                    let codec = tonic_prost::ProstCodec::default();
                    Ok(Grpc::new(codec).unary(svc, req).await)
                })
            }
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

impl NamedService for RateLimitService {
    const NAME: &'static str = "envoy.service.ratelimit.v3.RateLimitService";
}

fn load_limits(path: &PathBuf) -> Result<Vec<Limit>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let limits = load_limits(&args.limits).unwrap_or_else(|e| {
        eprintln!("meshguard-rls: {e}");
        std::process::exit(1)
    });
    let storage: Box<dyn AsyncCounterStorage> = match AsyncRedisStorage::new(&args.redis).await {
        Ok(s) => Box::new(s),
        Err(e) => {
            eprintln!("meshguard-rls: redis {}: {e}", args.redis);
            std::process::exit(1)
        }
    };
    let limiter = AsyncRateLimiter::new_with_storage(storage);
    if let Err(e) = limiter.configure_with(limits).await {
        eprintln!("meshguard-rls: limits: {e}");
        std::process::exit(1)
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .unwrap_or_else(|e| {
            eprintln!("meshguard-rls: bind {}: {e}", args.listen);
            std::process::exit(1)
        });
    let addr = listener.local_addr().unwrap_or(args.listen);
    println!("listening on {addr}");
    let svc = RateLimitService {
        limiter: Arc::new(limiter),
        delay_file: args.delay_file.map(Arc::new),
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming(incoming)
        .await
    {
        eprintln!("meshguard-rls: {e}");
        std::process::exit(1)
    }
}
