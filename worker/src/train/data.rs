//! Instruction data for recovery, as the reference prepares it (`post_training.py`, alpaca-lora):
//! the Alpaca prompt template word for word, the full sequence truncated to `cutoff_len` with an
//! EOS appended when there is room, and the prompt's tokens masked out of the loss unless
//! training on inputs. Micro-batches are right-padded: with causal attention, padding after a
//! sequence cannot change its tokens' outputs, so no attention mask is needed and a row's loss
//! does not depend on its batch-mates.

use crate::error::{Error, Result};
use crate::loader::TextTokenizer;
use crate::ops::IGNORE_TARGET;
use serde::Deserialize;

/// One instruction-following example.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Record {
    pub instruction: String,
    #[serde(default)]
    pub input: String,
    /// Alpaca's `output`; LaMini's `response`.
    #[serde(alias = "response")]
    pub output: String,
}

/// The prompt before the response (reference §4.2, `LLMPruner/utils/prompter.py`).
pub fn user_prompt(r: &Record) -> String {
    if r.input.is_empty() {
        format!(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{}\n\n### Response:\n",
            r.instruction
        )
    } else {
        format!(
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:\n",
            r.instruction, r.input
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizeOptions {
    pub cutoff_len: usize,
    pub train_on_inputs: bool,
    /// Append EOS to the full sequence when it has room (the reference always does).
    pub add_eos: bool,
    pub eos: Option<u32>,
}

/// A tokenized example: ids and one label per id ([`IGNORE_TARGET`] where masked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub labels: Vec<u32>,
    /// Whether the full text was longer than the cutoff and lost its end.
    pub truncated: bool,
}

impl Example {
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE_TARGET).count()
    }
}

/// Tokenizes `r` as the reference's `generate_and_tokenize_prompt`.
pub fn tokenize(tok: &TextTokenizer, r: &Record, opts: &TokenizeOptions) -> Result<Example> {
    let prompt = user_prompt(r);
    let full = format!("{prompt}{}", r.output);
    let mut ids = tok.encode(&full)?;
    let truncated = ids.len() > opts.cutoff_len;
    ids.truncate(opts.cutoff_len);
    if let Some(eos) = opts.eos.filter(|_| opts.add_eos) {
        if ids.last() != Some(&eos) && ids.len() < opts.cutoff_len {
            ids.push(eos);
        }
    }
    let mut labels = ids.clone();
    if !opts.train_on_inputs {
        let prompt_len = tok.encode(&prompt)?.len().min(opts.cutoff_len);
        labels[..prompt_len.min(ids.len())].fill(IGNORE_TARGET);
    }
    Ok(Example { ids, labels, truncated })
}

/// A right-padded micro-batch: `[B, T]` ids (pad 0) and the next-token target of every
/// position (`[B·T]`, [`IGNORE_TARGET`] for masked labels, padding and each row's last token).
pub struct MicroBatch {
    pub rows: usize,
    pub len: usize,
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
    /// Positions that count in the loss.
    pub trained_tokens: usize,
}

/// Pads `examples` to their longest (rounded up to `multiple`, as the reference's collator's
/// `pad_to_multiple_of=8`) and shifts the labels into next-token targets.
pub fn micro_batch(examples: &[&Example], multiple: usize) -> Result<MicroBatch> {
    let longest = examples.iter().map(|e| e.ids.len()).max().ok_or_else(|| Error::Invalid("an empty micro-batch".into()))?;
    let len = longest.div_ceil(multiple.max(1)) * multiple.max(1);
    let (mut ids, mut targets) = (Vec::with_capacity(examples.len() * len), Vec::with_capacity(examples.len() * len));
    for e in examples {
        ids.extend_from_slice(&e.ids);
        ids.resize(ids.len() + len - e.ids.len(), 0);
        targets.extend(e.labels.iter().skip(1));
        targets.resize(targets.len() + len - (e.labels.len() - 1).min(len), IGNORE_TARGET);
    }
    let trained_tokens = targets.iter().filter(|&&t| t != IGNORE_TARGET).count();
    Ok(MicroBatch { rows: examples.len(), len, ids, targets, trained_tokens })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_the_reference_template_word_for_word() {
        let with = Record { instruction: "Add.".into(), input: "2 and 3".into(), output: "5".into() };
        assert_eq!(
            user_prompt(&with),
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n"
        );
        let without = Record { input: String::new(), ..with };
        assert_eq!(
            user_prompt(&without),
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Response:\n"
        );
    }

    #[test]
    fn micro_batches_pad_right_and_shift_labels() {
        let a = Example { ids: vec![5, 6, 7], labels: vec![IGNORE_TARGET, 6, 7], truncated: false };
        let b = Example { ids: vec![1, 2, 3, 4, 9], labels: vec![IGNORE_TARGET, IGNORE_TARGET, 3, 4, 9], truncated: false };
        let m = micro_batch(&[&a, &b], 4).unwrap();
        let x = IGNORE_TARGET;
        assert_eq!((m.rows, m.len), (2, 8));
        assert_eq!(m.ids, [5, 6, 7, 0, 0, 0, 0, 0, 1, 2, 3, 4, 9, 0, 0, 0]);
        assert_eq!(m.targets, [6, 7, x, x, x, x, x, x, x, 3, 4, 9, x, x, x, x]);
        assert_eq!(m.trained_tokens, 5);
        assert_eq!(a.trained_tokens() + b.trained_tokens(), 5);
    }
}
