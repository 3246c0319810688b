//! The generated protocol (`proto/pruner/v1`), its version, and the cluster token's metadata.

tonic::include_proto!("pruner.v1");

/// Sent in Register and Heartbeat; the other side refuses a different one.
pub const PROTOCOL_VERSION: u32 = 6;

/// Largest gRPC message either side accepts: scores, shapes and token ids are kilobytes to a
/// few MiB even for 70B models; tensors never travel through gRPC.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The metadata key that carries the cluster token (`Bearer <token>`).
pub const AUTHORIZATION: &str = "authorization";

/// The cluster token kept in a file (a mounted secret): its first line, trimmed.
pub fn read_token_file(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// The metadata value a caller attaches: `Bearer <token>`.
pub fn bearer(token: &str) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, tonic::Status> {
    format!("Bearer {token}").parse().map_err(|_| tonic::Status::invalid_argument("the cluster token must be printable ASCII"))
}

/// A server interceptor that refuses calls without the cluster token; refusals are logged
/// with the caller's address.
pub fn require_token(token: String) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    let expected = format!("Bearer {token}");
    move |req: tonic::Request<()>| {
        let refusal = match req.metadata().get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            Some(v) if constant_time_eq(v.as_bytes(), expected.as_bytes()) => return Ok(req),
            Some(_) => "wrong cluster token",
            None => "no cluster token (authorization: Bearer <token>)",
        };
        let peer = req.remote_addr().map_or("an unknown address".to_string(), |a| a.to_string());
        tracing::warn!(%peer, reason = refusal, "refused a call");
        Err(tonic::Status::unauthenticated(refusal))
    }
}

/// A client interceptor that attaches the cluster token to every call.
#[derive(Clone)]
pub struct TokenInterceptor(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(AUTHORIZATION, self.0.clone());
        Ok(req)
    }
}

pub fn attach_token(token: &str) -> Result<TokenInterceptor, tonic::Status> {
    Ok(TokenInterceptor(bearer(token)?))
}

/// `N` random bytes from the operating system, for tokens and secrets.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes)
}

/// The seconds left of `total` units after `done` of them took `elapsed_s`, at the same pace.
pub fn eta_s(elapsed_s: f64, done: usize, total: usize) -> f64 {
    elapsed_s / done.max(1) as f64 * total.saturating_sub(done) as f64
}

/// Comparison whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The refusal a side sends when the other speaks another protocol version.
pub fn check_version(theirs: u32, who: &str) -> Result<(), tonic::Status> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(tonic::Status::failed_precondition(format!(
            "{who} speaks protocol version {theirs}, this coordinator speaks {PROTOCOL_VERSION}: run the same llmprune release on every machine"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn the_token_is_required_and_checked() {
        let mut check = require_token("s3cret".into());
        assert!(check(tonic::Request::new(())).unwrap_err().message().contains("no cluster token"));
        let mut wrong = attach_token("guess").unwrap();
        let e = check(wrong.call(tonic::Request::new(())).unwrap()).unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::Unauthenticated, "wrong cluster token"));
        let mut right = attach_token("s3cret").unwrap();
        assert!(check(right.call(tonic::Request::new(())).unwrap()).is_ok());
        assert!(check_version(PROTOCOL_VERSION, "x").is_ok());
        // 2 of 6 units in 10 s: 4 more at 5 s each; nothing left past the total.
        assert_eq!((eta_s(10.0, 2, 6), eta_s(3.0, 5, 4)), (20.0, 0.0));
        assert_ne!(random_bytes::<16>().unwrap(), random_bytes::<16>().unwrap());
        assert_eq!(check_version(PROTOCOL_VERSION + 1, "x").unwrap_err().code(), tonic::Code::FailedPrecondition);
    }
}
