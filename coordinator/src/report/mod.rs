//! The run report (`report.md`, `report.json`, `plots/*.svg`): the paper's tables for this run,
//! Table 1's perplexity and zero-shot rows for the dense, pruned and recovered models, Table 3's
//! statistics before and after, the kept widths per layer, and the recovery curves.

mod plots;

use crate::commands::table::paper_table;
use anyhow::{Context, Result};
use llmprune_shared::ModelSpec;
use plots::Line;
use plotters::style::RGBColor;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);

/// Where a run's phases wrote their outputs.
pub struct RunOutputs {
    pub dir: PathBuf,
}

impl RunOutputs {
    pub fn at(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    fn json(&self, rel: &str) -> Result<Value> {
        let path = self.dir.join(rel);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
    }
}

/// Per-layer widths before and after pruning.
fn layers(before: Option<&ModelSpec>, after: &ModelSpec) -> Vec<Value> {
    after
        .layers
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let b = before.and_then(|s| s.layers.get(i));
            json!({"layer": i, "heads": [b.map(|l| l.n_heads), a.n_heads], "kv_heads": [b.map(|l| l.n_kv_heads), a.n_kv_heads],
                   "mlp": [b.map(|l| l.intermediate_size), a.intermediate_size]})
        })
        .collect()
}

/// A number in the table, or a dash.
fn cell(v: &Value, f: impl Fn(f64) -> String) -> String {
    v.as_f64().map_or("–".into(), f)
}

/// Table 3's latency: the median over the timed chunks and their quartiles, marked when other
/// processes were busy meanwhile.
fn latency_cell(stats: &Value) -> String {
    let l = &stats["latency"];
    let median = cell(&stats["latency_s_per_chunk"], |v| format!("{v:.3}"));
    match (l["q1"].as_f64(), l["q3"].as_f64()) {
        (Some(q1), Some(q3)) => format!("{median} ({q1:.3}–{q3:.3}){}", if l["machine_busy"] == json!(true) { " *" } else { "" }),
        _ => median,
    }
}

/// What Table 3's latency means, and which timings a busy machine disturbed.
fn latency_note(table3: &Value) -> String {
    let timed: Vec<&Value> = ["before", "after"].iter().map(|w| &table3[*w]["latency"]).filter(|l| l.is_object()).collect();
    let Some(first) = timed.first() else {
        return String::new();
    };
    let mut note = format!(
        "\nLatency: the median over {} chunks, each timed alone at batch 1 after a warm-up pass, with the quartiles in parentheses.",
        first["timed_chunks"]
    );
    let busy: Vec<String> =
        timed.iter().filter(|l| l["machine_busy"] == json!(true)).map(|l| format!("{:.0}%", 100.0 * l["others_busy"].as_f64().unwrap_or(0.0))).collect();
    if !busy.is_empty() {
        note += &format!(
            " \\* The machine was busy: other processes used {} of its CPU time meanwhile, so the timing is slower than an idle machine's.",
            busy.join(" and ")
        );
    }
    note + "\n"
}

fn markdown(report: &Value, evals: &[(String, Value)]) -> String {
    let mut md = String::from("# llmprune run report\n\n");
    md += &format!("Model `{}`, output `{}`.\n\n", report["model"].as_str().unwrap_or("?"), report["out"].as_str().unwrap_or("?"));
    md += "## Table 1: perplexity and zero-shot accuracy\n\n";
    let rows: Vec<(&str, &Value)> = evals.iter().map(|(n, v)| (n.as_str(), v)).collect();
    md += &paper_table(&rows);
    md += "\n\nZero-shot: lm-evaluation-harness semantics (`docs/zeroshot-tasks.md`), the metric the paper reports per task; perplexity with LLM-Pruner's protocol.\n\n";
    md += "## Table 3: statistics\n\n| | #Params | #MACs (64 tokens) | Weight memory (f32) | Latency (s / 128-token chunk) |\n|---|---|---|---|---|\n";
    for which in ["before", "after"] {
        let s = &report["table3"][which];
        md += &format!(
            "| {} | {} | {} | {} | {} |\n",
            if which == "before" { "Dense" } else { "Pruned" },
            cell(&s["params"], |v| format!("{:.2}M", v / 1e6)),
            cell(&s["macs_64_tokens"], |v| format!("{:.2}G", v / 1e9)),
            cell(&s["weight_mib_f32"], |v| format!("{v:.1} MiB")),
            latency_cell(s),
        );
    }
    md += &latency_note(&report["table3"]);
    md += "\n## Kept widths per layer\n\n![kept widths](plots/widths.svg)\n\n| layer | heads | KV heads | MLP |\n|---|---|---|---|\n";
    for l in report["layers"].as_array().into_iter().flatten() {
        let pair = |k: &str| format!("{} → {}", l[k][0].as_u64().map_or("?".into(), |v| v.to_string()), l[k][1]);
        md += &format!("| {} | {} | {} | {} |\n", l["layer"], pair("heads"), pair("kv_heads"), pair("mlp"));
    }
    let r = &report["recovery"];
    md += "\n## Recovery\n\n";
    md += &format!(
        "{} steps; validation loss {} → {} (adapters of step {} kept); {} trained tokens at {} tokens/s.\n\n![loss](plots/loss.svg)\n",
        r["loss_curve"].as_array().map_or(0, Vec::len),
        cell(&r["val_losses"][0][1], |v| format!("{v:.4}")),
        cell(&r["best_val_loss"], |v| format!("{v:.4}")),
        r["kept_step"],
        r["trained_tokens"],
        cell(&r["tokens_per_s"], |v| format!("{v:.0}")),
    );
    if report["plots"].as_array().is_some_and(|p| p.iter().any(|x| x == "plots/ppl.svg")) {
        md += "\n![perplexity over steps](plots/ppl.svg)\n";
    }
    md += "\n## Time\n\n| phase | seconds |\n|---|---|\n";
    for (k, v) in report["seconds"].as_object().into_iter().flatten() {
        md += &format!("| {k} | {} |\n", cell(v, |s| format!("{s:.1}")));
    }
    md
}

/// Writes the report of the run in `out` and returns the Markdown file's path.
pub fn write_report(out: &RunOutputs, seconds: &Map<String, Value>, total_s: f64) -> Result<PathBuf> {
    let prune = out.json("pruned/prune_report.json")?;
    let plan = out.json("pruned/plan.json")?;
    let recover = out.json("recovered/recover_report.json")?;
    let evals: Vec<(String, Value)> =
        ["dense", "pruned", "recovered"].iter().map(|n| Ok((n.to_string(), out.json(&format!("eval/{n}.json"))?))).collect::<Result<_>>()?;
    let after = ModelSpec::from_hf_config_file(&out.dir.join("pruned/config.json")).map_err(|e| anyhow::anyhow!("pruned/config.json: {e}"))?;
    let model = plan["model"]["path"].as_str().unwrap_or_default().to_string();
    // The dense shapes from the model the plan names (still where it was, normally).
    let before = llmprune_worker::loader::open_model(Path::new(&model)).ok().map(|m| m.spec);
    let layers = layers(before.as_ref(), &after);

    let plots_dir = out.dir.join("plots");
    std::fs::create_dir_all(&plots_dir).with_context(|| format!("creating {}", plots_dir.display()))?;
    let mut plots = vec!["plots/widths.svg".to_string(), "plots/loss.svg".to_string()];
    let series = |k: &str, i: usize| -> Vec<(f64, f64)> { layers.iter().filter_map(|l| Some((l["layer"].as_f64()?, l[k][i].as_f64()?))).collect() };
    plots::stacked(
        &plots_dir.join("widths.svg"),
        "layer",
        &[
            (
                "Attention heads per layer",
                "heads",
                vec![
                    Line { name: "dense", points: series("heads", 0), color: BLUE, dots: false },
                    Line { name: "pruned", points: series("heads", 1), color: ORANGE, dots: true },
                ],
            ),
            (
                "MLP width per layer",
                "neurons",
                vec![
                    Line { name: "dense", points: series("mlp", 0), color: BLUE, dots: false },
                    Line { name: "pruned", points: series("mlp", 1), color: ORANGE, dots: true },
                ],
            ),
        ],
    )?;
    let curve = |v: &Value, x: usize, y: usize| -> Vec<(f64, f64)> {
        v.as_array().into_iter().flatten().filter_map(|p| Some((p[x].as_f64()?, p[y].as_f64()?))).collect()
    };
    plots::chart(
        &plots_dir.join("loss.svg"),
        "Recovery loss",
        "step",
        "loss",
        &[
            Line { name: "training", points: curve(&recover["loss_curve"], 0, 1), color: BLUE, dots: false },
            Line { name: "validation", points: curve(&recover["val_losses"], 0, 1), color: RED, dots: true },
        ],
        false,
    )?;
    let mut ppl_lines = Vec::new();
    for (i, name) in ["wikitext2", "ptb"].iter().enumerate() {
        let points: Vec<(f64, f64)> = recover["extra_val"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["name"] == *name)
            .filter_map(|e| Some((e["step"].as_f64()?, e["ppl"].as_f64()?)))
            .collect();
        if !points.is_empty() {
            ppl_lines.push(Line { name, points, color: [GREEN, ORANGE][i], dots: true });
        }
    }
    if !ppl_lines.is_empty() {
        plots::chart(&plots_dir.join("ppl.svg"), "Perplexity during recovery (adapters active)", "step", "perplexity", &ppl_lines, false)?;
        plots.push("plots/ppl.svg".into());
    }

    let best_val = recover["val_losses"].as_array().into_iter().flatten().find(|v| v[0] == recover["kept_step"]).map(|v| v[1].clone()).unwrap_or(Value::Null);
    let table1: Vec<Value> = evals
        .iter()
        .map(|(n, e)| {
            let mut row = Map::new();
            row.insert("name".into(), json!(n));
            for (task, r) in e["results"].as_object().into_iter().flatten() {
                let metric = r["paper_metric"].as_str().unwrap_or("ppl");
                row.insert(task.clone(), r[metric].clone());
            }
            row.insert("average".into(), e["average"].clone());
            Value::Object(row)
        })
        .collect();
    let mut secs = seconds.clone();
    secs.insert("total".into(), json!(total_s));
    // A cluster's prune does not time the model (its workers hold shards); the evaluations
    // of the dense and the pruned model do, when `eval.latency_chunks` is set.
    let mut table3 = prune["statistics"].clone();
    for (which, name) in [("before", "dense"), ("after", "pruned")] {
        let timed = evals.iter().find(|(n, _)| n == name).map(|(_, e)| &e["latency"]).filter(|l| l.is_object());
        if let (true, Some(l)) = (table3[which]["latency_s_per_chunk"].is_null(), timed) {
            table3[which]["latency_s_per_chunk"] = l["s_per_chunk"].clone();
            table3[which]["latency"] = l.clone();
            table3[which]["latency_measured_on"] =
                json!({"dataset": l["dataset"], "chunks": l["chunks"], "seq_len": l["seq_len"], "batch": l["batch"], "by": "eval"});
        }
    }
    let report = json!({
        "model": model,
        "out": out.dir.display().to_string(),
        "table1": table1,
        "table3": table3,
        "layers": layers,
        "recovery": {"loss_curve": recover["loss_curve"].as_array().map(|c| c.iter().map(|s| json!([s[0], s[1]])).collect::<Vec<_>>()),
                     "val_losses": recover["val_losses"], "extra_val": recover["extra_val"], "kept_step": recover["kept_step"],
                     "best_val_loss": best_val, "trained_tokens": recover["trained_tokens"], "tokens_per_s": recover["tokens_per_s"]},
        "seconds": secs,
        "plots": plots,
    });
    let md = markdown(&report, &evals);
    crate::commands::write_json_atomic(&out.dir.join("report.json"), &report)?;
    let path = out.dir.join("report.md");
    let tmp = out.dir.join(".report.md.partial");
    std::fs::write(&tmp, md).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
