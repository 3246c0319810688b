//! The seven zero-shot tasks of the LLM-Pruner tables, with lm-evaluation-harness 0.4's prompt
//! construction (`docs/zeroshot-tasks.md`): each document becomes one (context, continuation)
//! pair per choice, and a gold index.

use crate::error::{Error, Result};
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    BoolQ,
    Piqa,
    HellaSwag,
    WinoGrande,
    ArcEasy,
    ArcChallenge,
    OpenBookQa,
}

/// The metric the paper reports for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Acc,
    AccNorm,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Self::Acc => "acc",
            Self::AccNorm => "acc_norm",
        }
    }
}

impl Task {
    /// In the paper's Table 1 order.
    pub const ALL: [Task; 7] = [Self::BoolQ, Self::Piqa, Self::HellaSwag, Self::WinoGrande, Self::ArcEasy, Self::ArcChallenge, Self::OpenBookQa];

    /// lm-evaluation-harness's task name.
    pub fn name(self) -> &'static str {
        match self {
            Self::BoolQ => "boolq",
            Self::Piqa => "piqa",
            Self::HellaSwag => "hellaswag",
            Self::WinoGrande => "winogrande",
            Self::ArcEasy => "arc_easy",
            Self::ArcChallenge => "arc_challenge",
            Self::OpenBookQa => "openbookqa",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|t| t.name()).collect();
            Error::Invalid(format!("unknown task `{name}` (known: {})", known.join(", ")))
        })
    }

    /// The split lm-evaluation-harness evaluates, as the file of `../shared/data/zeroshot/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::BoolQ => "boolq.validation.jsonl",
            Self::Piqa => "piqa.validation.jsonl",
            Self::HellaSwag => "hellaswag.validation.jsonl",
            Self::WinoGrande => "winogrande_xl.validation.jsonl",
            Self::ArcEasy => "arc_easy.test.jsonl",
            Self::ArcChallenge => "arc_challenge.test.jsonl",
            Self::OpenBookQa => "openbookqa.test.jsonl",
        }
    }

    pub fn reported_metric(self) -> Metric {
        match self {
            Self::HellaSwag | Self::ArcChallenge | Self::OpenBookQa => Metric::AccNorm,
            _ => Metric::Acc,
        }
    }

    /// Whether lm-evaluation-harness computes `acc_norm` (not for WinoGrande, whose choices are
    /// contexts, nor BoolQ, whose task lists `acc` only).
    pub fn has_acc_norm(self) -> bool {
        !matches!(self, Self::BoolQ | Self::WinoGrande)
    }
}

/// One document as requests: `(context, continuation)` per choice, the gold index, and each
/// choice's length in characters (the `acc_norm` divisor).
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub index: usize,
    pub pairs: Vec<(String, String)>,
    pub gold: usize,
    pub choice_chars: Vec<usize>,
}

/// Python's `str.isspace` set (Rust's lacks the four ASCII separators).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// Python's `str.capitalize`: the first character upper-cased, the rest lower-cased.
fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars.as_str().to_lowercase().chars()).collect(),
        None => String::new(),
    }
}

/// `re.sub(r"\[.*?\]", "", text)`: every bracketed span without a newline removed.
fn remove_brackets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find([']', '\n']) {
            Some(k) if after.as_bytes()[k] == b']' => rest = &after[k + 1..],
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// HellaSwag's `preprocess` (lm-evaluation-harness `tasks/hellaswag/utils.py`).
pub fn hellaswag_preprocess(text: &str) -> String {
    let text = py_strip(text).replace(" [title]", ". ");
    remove_brackets(&text).replace("  ", " ")
}

/// A record's field, or an error naming the file, line and field.
struct Record<'a> {
    value: &'a Value,
    file: &'a Path,
    line: usize,
}

impl Record<'_> {
    fn err(&self, what: String) -> Error {
        Error::file(self.file, format!("line {}: {what}", self.line))
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.value.get(key).ok_or_else(|| self.err(format!("missing field `{key}`")))
    }

    fn str(&self, key: &str) -> Result<&str> {
        self.get(key)?.as_str().ok_or_else(|| self.err(format!("field `{key}` is not a string")))
    }

    fn strings(&self, v: &Value, key: &str) -> Result<Vec<String>> {
        let list = v.as_array().ok_or_else(|| self.err(format!("field `{key}` is not a list")))?;
        list.iter().map(|x| x.as_str().map(str::to_string).ok_or_else(|| self.err(format!("field `{key}` holds a non-string")))).collect()
    }

    fn index(&self, gold: usize, n: usize, key: &str) -> Result<usize> {
        if gold >= n {
            return Err(self.err(format!("field `{key}` names choice {gold} of {n}")));
        }
        Ok(gold)
    }

    /// Choices and gold of an ARC / OpenBookQA record in either layout: `{choices: [str],
    /// gold}` or Hugging Face's `{choices: {text, label}, answerKey}`.
    fn lettered_choices(&self) -> Result<(Vec<String>, usize)> {
        let choices = self.get("choices")?;
        if let Some(obj) = choices.as_object() {
            let text = self.strings(obj.get("text").ok_or_else(|| self.err("missing field `choices.text`".into()))?, "choices.text")?;
            let labels = self.strings(obj.get("label").ok_or_else(|| self.err("missing field `choices.label`".into()))?, "choices.label")?;
            let key = self.str("answerKey")?.trim_start();
            let gold = labels.iter().position(|l| l == key).ok_or_else(|| self.err(format!("answerKey `{key}` is not among the labels {labels:?}")))?;
            return Ok((text, gold));
        }
        let text = self.strings(choices, "choices")?;
        let gold = self.get("gold")?.as_u64().ok_or_else(|| self.err("field `gold` is not an index".into()))? as usize;
        let gold = self.index(gold, text.len(), "gold")?;
        Ok((text, gold))
    }
}

/// Requests for choices that each continue `context`.
fn same_context(index: usize, context: String, choices: Vec<String>, gold: usize) -> Doc {
    let choice_chars = choices.iter().map(|c| c.chars().count()).collect();
    let pairs = choices.into_iter().map(|c| (context.clone(), format!(" {c}"))).collect();
    Doc { index, pairs, gold, choice_chars }
}

impl Task {
    /// The requests of one record (0-based `index` in the file).
    fn doc(self, r: &Record, index: usize) -> Result<Doc> {
        match self {
            Self::BoolQ => {
                let context = format!("{}\nQuestion: {}?\nAnswer:", r.str("passage")?, r.str("question")?);
                let answer = r.get("answer")?;
                let gold = match (answer.as_bool(), answer.as_u64()) {
                    (Some(b), _) => usize::from(b),
                    (_, Some(n @ 0..=1)) => n as usize,
                    _ => return Err(r.err("field `answer` is not a boolean".into())),
                };
                Ok(same_context(index, context, vec!["no".into(), "yes".into()], gold))
            }
            Self::Piqa => {
                let context = format!("Question: {}\nAnswer:", r.str("goal")?);
                let gold = r.get("label")?.as_u64().ok_or_else(|| r.err("field `label` is not 0 or 1".into()))? as usize;
                let gold = r.index(gold, 2, "label")?;
                Ok(same_context(index, context, vec![r.str("sol1")?.into(), r.str("sol2")?.into()], gold))
            }
            Self::HellaSwag => {
                let ctx = format!("{} {}", r.str("ctx_a")?, py_capitalize(r.str("ctx_b")?));
                let context = hellaswag_preprocess(&format!("{}: {ctx}", r.str("activity_label")?));
                let endings = r.strings(r.get("endings")?, "endings")?;
                let label = r.get("label")?;
                let gold = label.as_str().and_then(|s| s.parse().ok()).or(label.as_u64().map(|n| n as usize));
                let gold = gold.ok_or_else(|| r.err("field `label` is not an index".into()))?;
                let gold = r.index(gold, endings.len(), "label")?;
                Ok(same_context(index, context, endings.iter().map(|e| hellaswag_preprocess(e)).collect(), gold))
            }
            Self::WinoGrande => {
                let sentence = r.str("sentence")?;
                let blank = sentence.find('_').ok_or_else(|| r.err("field `sentence` has no blank `_`".into()))?;
                let continuation = format!(" {}", py_strip(&sentence[blank + 1..]));
                let options = [r.str("option1")?, r.str("option2")?];
                let gold = match r.str("answer")? {
                    "1" => 0,
                    "2" => 1,
                    other => return Err(r.err(format!("field `answer` is `{other}`, expected \"1\" or \"2\""))),
                };
                let pairs: Vec<(String, String)> = options.iter().map(|o| (format!("{}{o}", &sentence[..blank]), continuation.clone())).collect();
                let choice_chars = pairs.iter().map(|(c, _)| c.chars().count()).collect();
                Ok(Doc { index, pairs, gold, choice_chars })
            }
            Self::ArcEasy | Self::ArcChallenge => {
                let (choices, gold) = r.lettered_choices()?;
                Ok(same_context(index, format!("Question: {}\nAnswer:", r.str("question")?), choices, gold))
            }
            Self::OpenBookQa => {
                let stem = match r.value.get("question_stem") {
                    Some(_) => r.str("question_stem")?,
                    None => r.str("question")?,
                };
                let (choices, gold) = r.lettered_choices()?;
                Ok(same_context(index, stem.to_string(), choices, gold))
            }
        }
    }

    /// The task's file in `data_dir`.
    pub fn path(self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.file_name())
    }

    /// The first `limit` documents (all without a limit) of `path`, in file order.
    pub fn load(self, path: &Path, limit: Option<usize>) -> Result<Vec<Doc>> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut docs = Vec::new();
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            if limit.is_some_and(|l| docs.len() >= l) {
                break;
            }
            let line = line.map_err(|e| Error::io(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&line).map_err(|e| Error::file(path, format!("line {}: {e}", i + 1)))?;
            let record = Record { value: &value, file: path, line: i + 1 };
            docs.push(self.doc(&record, docs.len())?);
        }
        if docs.is_empty() {
            return Err(Error::file(path, format!("no {} documents", self.name())));
        }
        Ok(docs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellaswag_preprocessing_is_the_harness_s() {
        // strip first, then " [title]" -> ". ", brackets removed, one pass of "  " -> " ".
        assert_eq!(hellaswag_preprocess("[substeps] Many schools. [title] Search for it."), " Many schools.. Search for it.");
        assert_eq!(hellaswag_preprocess("a [x\ny] b"), "a [x\ny] b");
        assert_eq!(hellaswag_preprocess("a [x [y] z] b"), "a z] b");
        assert_eq!(hellaswag_preprocess("a    b"), "a  b");
        assert_eq!(py_capitalize("hELLO World"), "Hello world");
        assert_eq!(py_capitalize(""), "");
    }

    #[test]
    fn unknown_task_names_the_known_ones() {
        let e = Task::from_name("mmlu").unwrap_err().to_string();
        assert!(e.contains("boolq") && e.contains("openbookqa"), "{e}");
    }
}
