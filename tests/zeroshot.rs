//! Zero-shot scoring: prefix reuse with cached keys and values, batched with right padding,
//! gives each choice the log-likelihood a plain forward pass of that choice alone gives; the
//! prompts are lm-evaluation-harness's, string for string; on SmolLM2 the first documents of
//! every task get lm-evaluation-harness's log-likelihoods and predictions
//! (`tests/golden/lm_eval_zeroshot.py`).

use candle_core::{Device, Tensor};
use llmprune_tests::{data_dir, fixture, smollm2_gguf, tiny_model_dir};
use llmprune_worker::eval::job::{evaluate_share, load_tasks, EvalJob};
use llmprune_worker::eval::zeroshot::loglik::{plan_batches, score_batch, Unit};
use llmprune_worker::eval::zeroshot::requests::{encode_pair, TokenChoice};
use llmprune_worker::eval::zeroshot::results;
use llmprune_worker::eval::zeroshot::tasks::Task;
use llmprune_worker::model::{AttentionPath, Exec, Past};
use llmprune_worker::{load_model, LlamaModel, LoadOptions};

/// The log-likelihood of a choice's continuation from one forward pass over the choice alone.
fn plain_ll(model: &LlamaModel, c: &TokenChoice) -> f64 {
    let ids = Tensor::new(c.ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let nll = model.next_token_nll(&ids, Exec::Inference).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    -nll[nll.len() - c.scored..].iter().map(|&x| x as f64).sum::<f64>()
}

fn choice(ids: &[u32], scored: usize) -> TokenChoice {
    TokenChoice { ids: ids.to_vec(), scored }
}

#[test]
fn prefix_reuse_and_batching_equal_plain_forward_passes() {
    // LLaMA's layout, and the families whose cached path differs: Qwen3's q/k norms and GLM's
    // partial interleaved rotary embedding applied to packed tokens after cached ones.
    for name in ["tiny_gqa", "tiny_qwen3", "tiny_glm"] {
        check_prefix_reuse(name);
    }
}

fn check_prefix_reuse(name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let model = load_model(&tiny_model_dir(name, tmp.path()), LoadOptions::full, &Device::Cpu).unwrap().model;
    let top = model.spec.vocab_size as u32 - 1;
    let seq = |start: u32, n: usize| -> Vec<u32> { (0..n as u32).map(|i| 1 + (start + i * 7) % top).collect() };
    let with = |ctx: &[u32], cont: &[u32]| -> Vec<u32> { ctx.iter().chain(cont).copied().collect() };
    let (long, short) = (seq(3, 20), seq(40, 5));
    let units = vec![
        // A shared context, continuations of different lengths.
        Unit { choices: vec![choice(&with(&long, &seq(9, 3)), 3), choice(&with(&long, &seq(11, 6)), 6), choice(&with(&long, &[7]), 1)] },
        // WinoGrande-like: contexts differ in their last tokens, the continuation is shared.
        Unit { choices: vec![choice(&with(&with(&short, &[50]), &seq(60, 4)), 4), choice(&with(&with(&short, &[51, 52]), &seq(60, 4)), 4)] },
        // One choice; and a first token already scored (no shared prefix to cache).
        Unit { choices: vec![choice(&with(&seq(70, 9), &seq(2, 2)), 2)] },
        Unit { choices: vec![choice(&[5, 6, 7], 2), choice(&[5, 8], 1)] },
    ];
    // Up to the first scored position: the context's last token predicts the continuation.
    assert_eq!(units[0].shared_prefix(), 19);
    assert_eq!(units[1].shared_prefix(), 5);
    assert_eq!(units[3].shared_prefix(), 0);
    let want: Vec<Vec<f64>> = units.iter().map(|u| u.choices.iter().map(|c| plain_ll(&model, c)).collect()).collect();
    let all: Vec<&Unit> = units.iter().collect();
    let together = score_batch(&model, &all).unwrap();
    for (u, (got, want)) in together.iter().zip(&want).enumerate() {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-4 * w.abs().max(1.0), "{name} unit {u}: {g} vs plain {w}");
        }
    }
    // A unit scores the same alone as in any batch (up to float rounding).
    for (u, unit) in units.iter().enumerate() {
        let alone = score_batch(&model, &[unit]).unwrap().remove(0);
        for (a, b) in alone.iter().zip(&together[u]) {
            assert!((a - b).abs() < 1e-4, "{name} unit {u}: alone {a} vs batched {b}");
        }
    }
    // Batches: longest first, within the budget (a unit alone when it exceeds it).
    // Sizes (prefix + longest suffix) 25, 10, 10, 2. With 30 real tokens a pass (60 padded):
    // units 0 and 1 (contexts 19 + 5, choices 10 + 9 tokens, padded 2 × 19 and 5 rows × 6),
    // then unit 2 would bring the contexts to 33; units 2 and 3 together.
    assert_eq!(plan_batches(&units, 30), [vec![0, 1], vec![2, 3]]);
    assert_eq!(plan_batches(&units, 1), [vec![0], vec![1], vec![2], vec![3]], "a unit over the budget goes alone");
}

/// The fixture `tests/golden/lm_eval_zeroshot.py` wrote.
#[test]
fn the_packed_attention_kernel_equals_padded_batched_attention() {
    let tmp = tempfile::tempdir().unwrap();
    let model = load_model(&tiny_model_dir("tiny_gqa", tmp.path()), LoadOptions::full, &Device::Cpu).unwrap().model;
    let dev = Device::Cpu;
    let max_diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    // Contexts of 37, 4 and 1 tokens (longer than a query block of the kernel), then rows
    // continuing them: two share the first context, one continues the last.
    let ctx: Vec<u32> = (0..3 * 37).map(|i| 1 + (i * 13) % 90).collect();
    let ctx = Tensor::from_vec(ctx, (3, 37), &dev).unwrap();
    let ctx_lens = [37, 4, 1];
    let run = |path| model.forward_cached_on(path, &ctx, &ctx_lens, None, true).unwrap();
    let ((h_packed, c_packed), (h_padded, c_padded)) = (run(AttentionPath::Packed), run(AttentionPath::Padded));
    let real = |h: &Tensor| Tensor::cat(&ctx_lens.iter().enumerate().map(|(b, &l)| h.get(b).unwrap().narrow(0, 0, l).unwrap()).collect::<Vec<_>>(), 0).unwrap();
    assert!(max_diff(&real(&h_packed), &real(&h_padded)) < 1e-5, "context pass");
    let (c_packed, c_padded) = (c_packed.unwrap(), c_padded.unwrap());
    assert_eq!(c_packed.lens, c_padded.lens);
    for ((kp, vp), (kq, vq)) in c_packed.layers.iter().zip(&c_padded.layers) {
        assert!(max_diff(kp, kq) < 1e-5 && max_diff(vp, vq) < 1e-5, "cached keys and values");
    }
    let ids = Tensor::from_vec((0..4 * 6).map(|i| 2 + (i * 7) % 80).collect::<Vec<u32>>(), (4, 6), &dev).unwrap();
    let (lens, rows) = ([6, 2, 5, 1], [0, 0, 2, 1]);
    let go = |path, cache| model.forward_cached_on(path, &ids, &lens, Some(Past { cache, rows: &rows }), false).unwrap().0;
    let (a, b) = (go(AttentionPath::Packed, &c_packed), go(AttentionPath::Padded, &c_padded));
    let real = |h: &Tensor| Tensor::cat(&lens.iter().enumerate().map(|(r, &l)| h.get(r).unwrap().narrow(0, 0, l).unwrap()).collect::<Vec<_>>(), 0).unwrap();
    assert!(max_diff(&real(&a), &real(&b)) < 1e-5, "continuation pass");
}

fn lm_eval_fixture() -> serde_json::Value {
    let path = fixture("zeroshot").join("lm_eval_smollm2_500.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn prompts_and_their_tokens_are_lm_evaluation_harness_s() {
    let golden = lm_eval_fixture();
    let tok = llmprune_worker::loader::open_model(&smollm2_gguf()).unwrap().tokenizer;
    for task in Task::ALL {
        let want = golden["tasks"][task.name()]["first_docs"].as_array().unwrap_or_else(|| panic!("{}: no first_docs", task.name()));
        let docs = task.load(&task.path(&data_dir().join("zeroshot")), Some(want.len())).unwrap();
        for (d, w) in docs.iter().zip(want) {
            assert_eq!(d.gold as u64, w["gold"].as_u64().unwrap(), "{} doc {}", task.name(), d.index);
            let reqs = w["requests"].as_array().unwrap();
            assert_eq!(d.pairs.len(), reqs.len());
            for ((ctx, cont), r) in d.pairs.iter().zip(reqs) {
                assert_eq!(
                    (ctx.as_str(), cont.as_str()),
                    (r["context"].as_str().unwrap(), r["continuation"].as_str().unwrap()),
                    "{} doc {}",
                    task.name(),
                    d.index
                );
                let ids = |k: &str| r[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
                let (c, k) = encode_pair(&tok, ctx, cont, Some(1)).unwrap();
                assert_eq!((c, k), (ids("context_ids"), ids("continuation_ids")), "{} doc {}: tokens", task.name(), d.index);
            }
        }
    }
}

/// The first documents of every task on SmolLM2: lm-evaluation-harness's log-likelihoods
/// (float32 both sides) and its predictions. The 500-document comparison is `bench/zeroshot.sh`.
#[test]
fn smollm2_scores_the_first_documents_as_lm_evaluation_harness_does() {
    let golden = lm_eval_fixture();
    let job = EvalJob {
        tasks: Task::ALL.to_vec(),
        data_dir: data_dir().join("zeroshot"),
        limit: Some(12),
        batch_tokens: 2048,
        ppl: vec![],
        ppl_max_chunks: None,
        seq_len: 128,
        ppl_batch_size: 4,
        latency_chunks: None,
    };
    let loaded = load_model(&smollm2_gguf(), LoadOptions::full, &Device::Cpu).unwrap();
    let tasks = load_tasks(&job).unwrap();
    let share = evaluate_share(&loaded.model, &loaded.tokenizer, &job, &tasks, 0, 1, &mut |_| {}).unwrap();
    let per_task = results(&tasks, share.lls.into_iter().map(|(_, l)| l).collect()).unwrap();
    let mut worst = 0f64;
    for (task, docs) in &per_task {
        let want = golden["tasks"][task.name()]["examples"].as_array().unwrap();
        for (d, w) in docs.iter().zip(want) {
            let lls: Vec<f64> = w["ll"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            for (g, l) in d.lls.iter().zip(&lls) {
                worst = worst.max((g - l).abs());
                assert!((g - l).abs() < 2e-3 + 2e-5 * l.abs(), "{} doc {}: {g} vs lm_eval {l}", task.name(), d.doc);
            }
            assert_eq!(d.pred as u64, w["pred"].as_u64().unwrap(), "{} doc {}: prediction", task.name(), d.doc);
            if let Some(p) = w.get("pred_norm") {
                assert_eq!(d.pred_norm as u64, p.as_u64().unwrap(), "{} doc {}: acc_norm prediction", task.name(), d.doc);
            }
        }
    }
    eprintln!("largest log-likelihood difference from lm_eval: {worst:.2e}");
}
