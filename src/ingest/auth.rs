//! Per-tenant bearer tokens for every ingest endpoint and the selection
//! stream. With auth on, the token alone decides the tenant: the check runs
//! before the body is read, then rewrites the tenant header (HTTP) or metadata
//! key (gRPC) to the token's tenant, so handlers read the tenant as before.
//!
//! Protecting an endpoint (any new one too):
//! - axum routes: `auth.protect(router)` (a `route_layer`, so probes merged in
//!   after it stay open);
//! - a tonic service: `auth.grpc(server)` (an interceptor; a request is refused
//!   before its message is decoded).
//!
//! Decisions: no or an unknown token is 401 / UNAUTHENTICATED; a valid token
//! with a tenant header naming another tenant is 403 / PERMISSION_DENIED (never
//! silently re-routed). Tokens are compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use thiserror::Error;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::Status;

use crate::config::AuthSettings;

/// Why a request was refused. Messages never quote a token.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization: Bearer <token>` header or metadata.
    #[error("missing bearer token: send the header \"authorization: Bearer <token>\"")]
    Missing,
    /// A token that is not configured, or a header that is not a bearer token.
    #[error("invalid bearer token")]
    Invalid,
    /// A valid token, and a tenant header naming a different tenant.
    #[error("the token is for tenant {token_tenant:?}, but {header} names tenant {named:?}")]
    WrongTenant {
        /// The token's tenant.
        token_tenant: String,
        /// The tenant header or metadata key.
        header: String,
        /// What it named (cut to 64 bytes).
        named: String,
    },
    /// The tenant header name cannot be set on a request (a misconfiguration).
    #[error("cannot set {header} to tenant {tenant:?}")]
    Header {
        /// The tenant header.
        header: String,
        /// The tenant.
        tenant: String,
    },
}

impl AuthError {
    /// The HTTP status of the refusal.
    pub fn http_status(&self) -> StatusCode {
        match self {
            AuthError::Missing | AuthError::Invalid => StatusCode::UNAUTHORIZED,
            AuthError::WrongTenant { .. } => StatusCode::FORBIDDEN,
            AuthError::Header { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status of the refusal.
    pub fn grpc_status(&self) -> Status {
        match self {
            AuthError::Missing | AuthError::Invalid => Status::unauthenticated(self.to_string()),
            AuthError::WrongTenant { .. } => Status::permission_denied(self.to_string()),
            AuthError::Header { .. } => Status::internal(self.to_string()),
        }
    }
}

/// How a protected router answers a refused request.
pub type RenderRefusal = fn(&AuthError) -> Response;

struct Tokens {
    tokens: Vec<(Vec<u8>, Arc<str>)>,
    tenant_header: String,
}

/// The token check, shared by every endpoint; off (everything passes) when no token is configured.
#[derive(Clone, Default)]
pub struct Auth(Option<Arc<Tokens>>);

impl std::fmt::Debug for Auth {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print tokens.
        match &self.0 {
            None => formatter.write_str("Auth(off)"),
            Some(tokens) => write!(formatter, "Auth({} tokens)", tokens.tokens.len()),
        }
    }
}

/// Equal bytes, in time that depends only on the lengths.
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter().zip(right).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

impl Auth {
    /// Auth with `settings`' tokens (off when `None`); `tenant_header` is `ingest.tenant_header`.
    pub fn new(settings: Option<&AuthSettings>, tenant_header: &str) -> Self {
        Auth(settings.map(|settings| {
            Arc::new(Tokens {
                tokens: settings.tokens.clone(),
                tenant_header: tenant_header.to_ascii_lowercase(),
            })
        }))
    }

    /// Whether tokens are required.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The tenant a request may act as: `Ok(None)` when auth is off, else the
    /// token's tenant. `authorization` and `named` are the raw header values.
    pub fn tenant_of(&self, authorization: Option<&[u8]>, named: Option<&[u8]>) -> Result<Option<Arc<str>>, AuthError> {
        let Some(tokens) = &self.0 else {
            return Ok(None);
        };
        let value = authorization.ok_or(AuthError::Missing)?;
        let token = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| value[7..].trim_ascii())
            .ok_or(AuthError::Invalid)?;
        // Every token is compared, so the time taken does not say which one matched.
        let mut found = None;
        for (known, tenant) in &tokens.tokens {
            if constant_time_eq(known, token) {
                found = Some(tenant);
            }
        }
        let tenant = found.ok_or(AuthError::Invalid)?;
        if let Some(named) = named {
            if named != tenant.as_bytes() {
                return Err(AuthError::WrongTenant {
                    token_tenant: tenant.to_string(),
                    header: tokens.tenant_header.clone(),
                    named: crate::ingest::validate::cut(&String::from_utf8_lossy(named)),
                });
            }
        }
        Ok(Some(Arc::clone(tenant)))
    }

    fn tenant_header(&self) -> &str {
        self.0.as_ref().map_or("", |tokens| tokens.tenant_header.as_str())
    }

    /// Requires a token on every route of `router` (added so far): refused
    /// requests get 401 / 403 with a reason, accepted ones carry the token's
    /// tenant in the tenant header. Unchanged when auth is off.
    pub fn protect<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        self.protect_answering(router, plain_refusal)
    }

    /// [`Auth::protect`] with refusals rendered by `render` (OTLP/HTTP answers
    /// every error with a `google.rpc.Status`, not plain text).
    pub fn protect_answering<S: Clone + Send + Sync + 'static>(
        &self,
        router: Router<S>,
        render: RenderRefusal,
    ) -> Router<S> {
        if !self.is_on() {
            return router;
        }
        router.route_layer(axum::middleware::from_fn_with_state(
            (self.clone(), render),
            require_token,
        ))
    }

    /// The tonic interceptor doing the same for gRPC.
    pub fn interceptor(&self) -> GrpcAuth {
        GrpcAuth(self.clone())
    }

    /// `service` behind [`Auth::interceptor`] (a no-op when auth is off).
    pub fn grpc<S>(&self, service: S) -> InterceptedService<S, GrpcAuth> {
        InterceptedService::new(service, self.interceptor())
    }

    /// Checks HTTP headers and sets the tenant header to the token's tenant.
    fn admit_http(&self, headers: &mut axum::http::HeaderMap) -> Result<(), AuthError> {
        let header_name = self.tenant_header();
        let authorization = headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
        let named = headers.get(header_name).map(HeaderValue::as_bytes);
        let Some(tenant) = self.tenant_of(authorization, named)? else {
            return Ok(());
        };
        let setup_error = || AuthError::Header {
            header: header_name.to_string(),
            tenant: tenant.to_string(),
        };
        let name = HeaderName::from_bytes(header_name.as_bytes()).map_err(|_| setup_error())?;
        let value = HeaderValue::from_str(&tenant).map_err(|_| setup_error())?;
        headers.insert(name, value);
        Ok(())
    }
}

async fn require_token(
    State((auth, render)): State<(Auth, RenderRefusal)>,
    mut request: Request,
    next: Next,
) -> Response {
    match auth.admit_http(request.headers_mut()) {
        Ok(()) => next.run(request).await,
        Err(error) => {
            let mut response = render(&error);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// A refusal as plain text.
fn plain_refusal(error: &AuthError) -> Response {
    (error.http_status(), format!("{error}\n")).into_response()
}

/// Tonic interceptor requiring a bearer token (see [`Auth::grpc`]).
#[derive(Clone, Debug)]
pub struct GrpcAuth(Auth);

impl tonic::service::Interceptor for GrpcAuth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let auth = &self.0;
        let header_name = auth.tenant_header();
        let metadata = request.metadata();
        let authorization = metadata.get("authorization").map(AsciiMetadataValue::as_bytes);
        let named = metadata.get(header_name).map(AsciiMetadataValue::as_bytes);
        let tenant = match auth.tenant_of(authorization, named) {
            Ok(Some(tenant)) => tenant,
            Ok(None) => return Ok(request),
            Err(error) => return Err(error.grpc_status()),
        };
        let setup_error = || {
            AuthError::Header {
                header: header_name.to_string(),
                tenant: tenant.to_string(),
            }
            .grpc_status()
        };
        let key = AsciiMetadataKey::from_bytes(header_name.as_bytes()).map_err(|_| setup_error())?;
        let value = AsciiMetadataValue::try_from(&*tenant).map_err(|_| setup_error())?;
        request.metadata_mut().insert(key, value);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let settings = AuthSettings {
            tokens: vec![
                (b"token-of-tenant-a-0001".to_vec(), Arc::from("a")),
                (b"token-of-tenant-b-0001".to_vec(), Arc::from("b")),
            ],
        };
        Auth::new(Some(&settings), "X-Scope-OrgID")
    }

    #[test]
    fn the_token_decides_the_tenant_and_everything_else_is_refused() {
        let auth = auth();
        let tenant = |authorization: Option<&str>, named: Option<&str>| {
            auth.tenant_of(authorization.map(str::as_bytes), named.map(str::as_bytes))
        };
        assert_eq!(
            tenant(Some("Bearer token-of-tenant-a-0001"), None),
            Ok(Some(Arc::from("a")))
        );
        assert_eq!(
            tenant(Some("bearer  token-of-tenant-b-0001 "), Some("b")),
            Ok(Some(Arc::from("b")))
        );
        assert_eq!(tenant(None, Some("a")), Err(AuthError::Missing));
        assert_eq!(
            tenant(Some("Bearer token-of-tenant-a-0002"), None),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            tenant(Some("Bearer token-of-tenant-a-000"), None),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            tenant(Some("Basic token-of-tenant-a-0001"), None),
            Err(AuthError::Invalid)
        );
        assert_eq!(tenant(Some("Bearer"), None), Err(AuthError::Invalid));
        assert_eq!(tenant(Some(""), None), Err(AuthError::Invalid));
        let wrong = tenant(Some("Bearer token-of-tenant-a-0001"), Some("b")).unwrap_err();
        assert_eq!(wrong.http_status(), StatusCode::FORBIDDEN);
        assert_eq!(wrong.grpc_status().code(), tonic::Code::PermissionDenied);
        assert!(!wrong.to_string().contains("token-of"), "{wrong}");
        assert_eq!(Auth::default().tenant_of(None, Some(b"x")), Ok(None));
    }

    #[test]
    fn the_interceptor_rewrites_the_tenant_metadata() {
        use tonic::service::Interceptor;
        let mut interceptor = auth().interceptor();
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert("authorization", "Bearer token-of-tenant-b-0001".parse().unwrap());
        let admitted = interceptor.call(request).unwrap();
        assert_eq!(admitted.metadata().get("x-scope-orgid").unwrap(), "b");
        let refused = interceptor.call(tonic::Request::new(())).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn debug_output_never_shows_a_token() {
        assert_eq!(format!("{:?}", auth()), "Auth(2 tokens)");
    }
}
