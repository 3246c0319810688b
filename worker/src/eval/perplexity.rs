//! Perplexity with LLM-Pruner's protocol: dataset rows joined with `"\n\n"`, tokenized
//! once, cut into non-overlapping chunks of `seq_len` (the remainder dropped), and
//! `exp` of the mean next-token NLL over every predicted token of every chunk.

use crate::collective::{Communicator, SingleRank};
use crate::cpu_load::CpuTimes;
use crate::error::{Error, Result};
use crate::loader::TextTokenizer;
use crate::model::{Exec, LlamaModel};
use crate::stage::stage_forward;
use candle_core::{DType, Tensor};
use llmprune_shared::jobs::JobError;
use llmprune_shared::results::Latency;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// How a corpus file splits into the rows of its Hugging Face dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CorpusKind {
    /// `wikitext-2-raw-v1`: a row is a line with its newline; whitespace-only lines are "".
    Wikitext2,
    /// `ptb_text_only`: a row is a line with surrounding whitespace stripped.
    Ptb,
}

impl FromStr for CorpusKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "wikitext2" => Ok(CorpusKind::Wikitext2),
            "ptb" => Ok(CorpusKind::Ptb),
            other => Err(format!("unknown perplexity dataset `{other}` (known: wikitext2, ptb)")),
        }
    }
}

/// A `NAME=FILE` text given as the setting `key` (`ppl`, `extra_val`), checked.
pub fn parse_corpus_spec(spec: &str, key: &'static str) -> Result<(CorpusKind, PathBuf)> {
    let (name, file) = spec.split_once('=').ok_or_else(|| JobError::at(key, spec, "expected NAME=FILE"))?;
    let kind: CorpusKind = name.parse().map_err(|e: String| JobError::at(key, spec, e))?;
    Ok((kind, PathBuf::from(file)))
}

impl CorpusKind {
    pub fn name(self) -> &'static str {
        match self {
            CorpusKind::Wikitext2 => "wikitext2",
            CorpusKind::Ptb => "ptb",
        }
    }

    /// The dataset's text: its rows joined with `"\n\n"`.
    pub fn joined_text(self, raw: &str) -> String {
        let rows: Vec<&str> = match self {
            CorpusKind::Wikitext2 => raw.split_inclusive('\n').map(|l| if l.trim().is_empty() { "" } else { l }).collect(),
            CorpusKind::Ptb => raw.lines().map(str::trim).collect(),
        };
        rows.join("\n\n")
    }
}

/// A tokenized corpus cut into chunks.
pub struct PplCorpus {
    pub kind: CorpusKind,
    pub path: PathBuf,
    pub n_tokens: usize,
    pub seq_len: usize,
    pub chunks: Vec<Vec<u32>>,
}

impl PplCorpus {
    /// Rank `rank` of `world`'s chunks among the first `max` (all without a limit): chunks
    /// r, r + world, …
    pub fn share(&self, max: Option<usize>, rank: usize, world: usize) -> Vec<&[u32]> {
        let n = max.map_or(self.chunks.len(), |m| m.min(self.chunks.len()));
        self.chunks[..n].iter().skip(rank).step_by(world.max(1)).map(Vec::as_slice).collect()
    }

    pub fn load(kind: CorpusKind, path: &Path, tokenizer: &TextTokenizer, seq_len: usize) -> Result<Self> {
        if seq_len < 2 {
            return Err(llmprune_shared::jobs::JobError::at("seq_len", seq_len, "must be at least 2").into());
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let raw = String::from_utf8(bytes).map_err(|e| Error::file(path, format!("not UTF-8 text: {e}")))?;
        let tokens = tokenizer.encode(&kind.joined_text(&raw))?;
        if tokens.len() < seq_len {
            return Err(Error::file(path, format!("has {} tokens, fewer than one chunk of {seq_len}", tokens.len())));
        }
        let chunks = tokens.chunks_exact(seq_len).map(<[u32]>::to_vec).collect();
        Ok(Self { kind, path: path.to_path_buf(), n_tokens: tokens.len(), seq_len, chunks })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PplResult {
    pub ppl: f64,
    /// Tokens of the whole corpus.
    pub tokens: usize,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Next-token predictions scored (chunks × (seq_len − 1)).
    pub scored_tokens: usize,
    pub mean_nll: f64,
}

/// Progress after each batch: chunks done, chunks in all.
pub type ProgressFn<'a> = &'a mut dyn FnMut(usize, usize);

/// Evaluates the first `max_chunks` chunks (all by default) in batches.
pub fn evaluate(model: &LlamaModel, corpus: &PplCorpus, batch_size: usize, max_chunks: Option<usize>, progress: ProgressFn<'_>) -> Result<PplResult> {
    let chunks = corpus.share(max_chunks, 0, 1);
    let n = chunks.len();
    let (nll_sum, scored) = nll_sum(model, &mut SingleRank, &chunks, corpus.seq_len, batch_size, progress)?;
    let mean_nll = nll_sum / scored.max(1) as f64;
    Ok(PplResult { ppl: mean_nll.exp(), tokens: corpus.n_tokens, chunks: n, scored_tokens: scored, mean_nll })
}

/// The paper's Table 3 latency on the first `chunks` chunks of `seq_len` tokens of a text:
/// each chunk's forward pass at batch 1 timed on its own, after one untimed pass of the first
/// (allocations and caches warm), with the share of the CPU other processes took meanwhile.
/// `progress` sees (chunks timed, chunks to time).
pub fn latency(
    model: &LlamaModel,
    tokenizer: &TextTokenizer,
    kind: CorpusKind,
    path: &Path,
    seq_len: usize,
    chunks: usize,
    progress: ProgressFn<'_>,
) -> Result<Latency> {
    let corpus = PplCorpus::load(kind, path, tokenizer, seq_len)?;
    let timed = corpus.share(Some(chunks), 0, 1);
    if let Some(first) = timed.first() {
        nll_sum(model, &mut SingleRank, &[first], seq_len, 1, &mut |_, _| {})?;
    }
    let before = CpuTimes::now();
    let mut chunk_seconds = Vec::with_capacity(timed.len());
    for (i, chunk) in timed.iter().enumerate() {
        let t = std::time::Instant::now();
        nll_sum(model, &mut SingleRank, &[chunk], seq_len, 1, &mut |_, _| {})?;
        chunk_seconds.push(t.elapsed().as_secs_f64());
        progress(i + 1, timed.len());
    }
    let others_busy = before.zip(CpuTimes::now()).and_then(|(a, b)| a.others_share(&b));
    Ok(Latency { chunk_seconds, others_busy })
}

/// The summed next-token NLL of `chunks` (each `seq_len` tokens) in batches, and the number of
/// predictions it sums: on the last stage of `pipeline` (zeros on the others).
pub fn nll_sum(
    model: &LlamaModel,
    pipeline: &mut dyn Communicator,
    chunks: &[&[u32]],
    seq_len: usize,
    batch_size: usize,
    progress: ProgressFn<'_>,
) -> Result<(f64, usize)> {
    let (n, batch_size) = (chunks.len(), batch_size.max(1));
    let mut nll_sum = 0f64;
    let mut scored = 0usize;
    for (i, batch) in chunks.chunks(batch_size).enumerate() {
        let flat: Vec<u32> = batch.iter().flat_map(|c| c.iter().copied()).collect();
        let ids = Tensor::from_vec(flat, (batch.len(), seq_len), model.device())?;
        let head = |x: &Tensor| model.next_token_nll_from_hidden(x, &ids, Exec::Inference);
        if let Some(nll) = stage_forward(model, pipeline, &ids, Exec::Inference, head)? {
            nll_sum += nll.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
            scored += nll.elem_count();
        }
        progress((i * batch_size + batch.len()).min(n), n);
    }
    Ok((nll_sum, scored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wikitext_rows_keep_newlines_and_blank_whitespace_rows() {
        let raw = " \n = Title = \n \n Text here . \n";
        // Rows: "", " = Title = \n", "", " Text here . \n"
        assert_eq!(CorpusKind::Wikitext2.joined_text(raw), "\n\n = Title = \n\n\n\n\n Text here . \n");
    }

    #[test]
    fn ptb_rows_are_stripped_lines() {
        let raw = " a b <unk> \n c N d \n";
        assert_eq!(CorpusKind::Ptb.joined_text(raw), "a b <unk>\n\nc N d");
    }

    #[test]
    fn unknown_dataset_names_the_known_ones() {
        let e = "c4".parse::<CorpusKind>().unwrap_err();
        assert!(e.contains("wikitext2, ptb"), "{e}");
    }
}
