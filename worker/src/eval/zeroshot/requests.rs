//! Requests as tokens, encoded as lm-evaluation-harness's Hugging Face backend encodes them
//! (`_encode_pair`: no special tokens; trailing whitespace of the context moved to the
//! continuation; the continuation's ids cut from the joint encoding at the context's length).

use super::tasks::Doc;
use crate::error::{Error, Result};
use crate::loader::TextTokenizer;

/// One choice of a document as tokens: the model reads `ids[..len-1]` and the last `scored`
/// predictions are the continuation's log-likelihood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenChoice {
    pub ids: Vec<u32>,
    pub scored: usize,
}

/// `(context ids, continuation ids)` of a request; `prefix_token` stands in for an empty
/// context (the harness's `prefix_token_id`: BOS, else EOS).
pub fn encode_pair(tok: &TextTokenizer, context: &str, continuation: &str, prefix_token: Option<u32>) -> Result<(Vec<u32>, Vec<u32>)> {
    if context.is_empty() {
        let prefix = prefix_token.ok_or_else(|| Error::Invalid("an empty context needs a BOS or EOS token to stand for it; the model has neither".into()))?;
        return Ok((vec![prefix], tok.encode_plain(continuation)?));
    }
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (trimmed.to_string(), format!("{}{continuation}", &context[trimmed.len()..]))
    } else {
        (context.to_string(), continuation.to_string())
    };
    let whole = tok.encode_plain(&format!("{context}{continuation}"))?;
    let ctx = tok.encode_plain(&context)?;
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok((ctx, cont))
}

/// A document's choices as tokens, left-truncated to `max_len + 1` tokens like the harness.
pub fn token_choices(tok: &TextTokenizer, doc: &Doc, prefix_token: Option<u32>, max_len: usize) -> Result<Vec<TokenChoice>> {
    doc.pairs
        .iter()
        .map(|(context, continuation)| {
            let (ctx, cont) = encode_pair(tok, context, continuation, prefix_token)?;
            if cont.is_empty() {
                return Err(Error::Invalid(format!("document {}: continuation {continuation:?} encodes to no tokens", doc.index)));
            }
            if cont.len() > max_len {
                return Err(Error::Invalid(format!("document {}: a continuation of {} tokens exceeds the model's {max_len}", doc.index, cont.len())));
            }
            let mut ids = ctx;
            ids.extend_from_slice(&cont);
            let start = ids.len().saturating_sub(max_len + 1);
            Ok(TokenChoice { ids: ids[start..].to_vec(), scored: cont.len() })
        })
        .collect()
}
