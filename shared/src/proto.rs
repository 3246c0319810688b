//! The generated protocol (`proto/pruner/v1`), its version, and the cluster token's metadata.

tonic::include_proto!("pruner.v1");

/// Sent in Register and Heartbeat; the other side refuses a different one.
pub const PROTOCOL_VERSION: u32 = 1;

/// The metadata key that carries the cluster token (`Bearer <token>`).
pub const AUTHORIZATION: &str = "authorization";

/// The metadata value a caller attaches: `Bearer <token>`.
pub fn bearer(token: &str) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, tonic::Status> {
    format!("Bearer {token}").parse().map_err(|_| tonic::Status::invalid_argument("the cluster token must be printable ASCII"))
}

/// A server interceptor that refuses calls without the cluster token.
pub fn require_token(token: String) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    let expected = format!("Bearer {token}");
    move |req: tonic::Request<()>| match req.metadata().get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(v) if constant_time_eq(v.as_bytes(), expected.as_bytes()) => Ok(req),
        Some(_) => Err(tonic::Status::unauthenticated("wrong cluster token")),
        None => Err(tonic::Status::unauthenticated("no cluster token (authorization: Bearer <token>)")),
    }
}

/// A client interceptor that attaches the cluster token to every call.
pub fn attach_token(token: &str) -> Result<impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone, tonic::Status> {
    let value = bearer(token)?;
    Ok(move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert(AUTHORIZATION, value.clone());
        Ok(req)
    })
}

/// Comparison whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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
