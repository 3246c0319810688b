//! The settings of each job, defined once: typed, with their defaults and `validate()`. The
//! CLI flattens them into its commands (with the `clap` feature), `llmprune run` reads them
//! from its `[prune]`, `[recover]` and `[eval]` sections, and the recovery RPC carries its
//! settings as they are. An error names the setting by its key (`lora_r`); each surface says
//! it in its own words (`--lora-r` on the command line, `recover.lora_r` in a configuration).

mod eval;
mod prune;
mod recover;

pub use eval::EvalSettings;
pub use prune::PruneSettings;
pub use recover::{Projection, RecordFormat, RecoverSettings};

use serde::{Deserialize, Deserializer};

/// A setting that is wrong, by its key (and the value at fault, when there is one).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.said_with(str::to_string))]
pub struct JobError {
    /// The setting's key (a field name: `lora_r`, `ratio`).
    pub key: &'static str,
    pub value: Option<String>,
    pub message: String,
}

impl JobError {
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self { key, value: None, message: message.into() }
    }

    /// An error about the value `value` of `key`.
    pub fn at(key: &'static str, value: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Self { key, value: Some(value.to_string()), message: message.into() }
    }

    /// The error with every setting named by `name` (the message names other settings as
    /// `{key}`).
    fn said_with(&self, name: impl Fn(&str) -> String) -> String {
        let mut message = self.message.clone();
        while let Some(start) = message.find('{') {
            let Some(len) = message[start..].find('}') else { break };
            let key = message[start + 1..start + len].to_string();
            message.replace_range(start..=start + len, &name(&key));
        }
        match &self.value {
            Some(v) => format!("{} {v}: {message}", name(self.key)),
            None => format!("{}: {message}", name(self.key)),
        }
    }

    /// As the command line says it: `--ratio 1.5: must be in (0, 1)`.
    pub fn as_flag(&self) -> String {
        self.said_with(|key| format!("--{}", key.replace('_', "-")))
    }

    /// As a configuration says it: `prune.ratio 1.5: must be in (0, 1)`.
    pub fn as_key(&self, section: &str) -> String {
        self.said_with(|key| format!("{section}.{key}"))
    }
}

/// A byte size such as `5GB`, `500MB`, `2MiB` or `1000` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1048576.0,
        "gib" => 1073741824.0,
        other => return Err(format!("unknown unit `{other}` (use B, KB, MB, GB, KiB, MiB or GiB)")),
    };
    let n: f64 = number.parse().map_err(|_| format!("`{text}` is not a size such as 5GB"))?;
    let bytes = (n * scale) as u64;
    if bytes == 0 {
        return Err(format!("`{text}`: a shard must hold at least one byte"));
    }
    Ok(bytes)
}

/// A size given as bytes or as text (`5GB`).
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(b) => Ok(b),
        Size::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

/// A list given as a sequence or as comma-separated text (as the environment and `--set` give it).
fn comma_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List<T> {
        Items(Vec<T>),
        Text(String),
    }
    match List::<T>::deserialize(d)? {
        List::Items(items) => Ok(items),
        List::Text(t) => t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().map_err(serde::de::Error::custom)).collect(),
    }
}

/// `START:END` (end exclusive) within `n` layers; `None` is all of them, `N:N` none.
pub fn layer_range(key: &'static str, value: Option<&str>, n: usize) -> Result<std::ops::Range<usize>, JobError> {
    let Some(v) = value else { return Ok(0..n) };
    let parsed = v.split_once(':').and_then(|(a, b)| Some((a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?)));
    let (start, end) = parsed.ok_or_else(|| JobError::at(key, v, "expected START:END, e.g. 3:27"))?;
    if start > end || end > n {
        return Err(JobError::at(key, v, format!("must satisfy START <= END <= {n} (the model's layers)")));
    }
    Ok(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_lists_read_from_text_or_values() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("2MiB"), Ok(2 * 1048576));
        assert!(parse_size("5XB").unwrap_err().contains("unknown unit `xb`"));
        let s: RecoverSettings =
            serde_json::from_value(serde_json::json!({"data": "a.json", "lora_targets": "q_proj, v_proj", "max_shard_size": "30KB"})).unwrap();
        assert_eq!(s.lora_targets, vec![Projection::Q, Projection::V]);
        assert_eq!(s.max_shard_size, 30_000);
        let s: RecoverSettings = serde_json::from_value(serde_json::json!({"data": "a.json", "lora_targets": ["o_proj"], "max_shard_size": 7})).unwrap();
        assert_eq!((s.lora_targets, s.max_shard_size), (vec![Projection::O], 7));
        let unknown = serde_json::from_value::<RecoverSettings>(serde_json::json!({"lora_rank": 8})).unwrap_err();
        assert!(unknown.to_string().contains("unknown field `lora_rank`"), "{unknown}");
    }

    #[test]
    fn errors_name_the_setting_in_each_surfaces_words() {
        let e = JobError::new("lora_r", "must be at least 1");
        assert_eq!(e.as_flag(), "--lora-r: must be at least 1");
        assert_eq!(e.as_key("recover"), "recover.lora_r: must be at least 1");
        let e = JobError::at("ratio", 1.5, "must be in (0, 1)");
        assert_eq!((e.as_flag(), e.to_string()), ("--ratio 1.5: must be in (0, 1)".into(), "ratio 1.5: must be in (0, 1)".into()));
        let e = JobError::new("latency_chunks", "times the first {ppl} text");
        assert_eq!(
            (e.as_flag(), e.as_key("eval")),
            ("--latency-chunks: times the first --ppl text".into(), "eval.latency_chunks: times the first eval.ppl text".into())
        );
        assert_eq!(layer_range("attn_layers", Some("2:9"), 3).unwrap_err().key, "attn_layers");
        assert_eq!(layer_range("attn_layers", Some("1:1"), 3), Ok(1..1));
    }
}
