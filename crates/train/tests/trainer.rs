//! The training loop end to end on a tiny model: exact resume, gradient
//! accumulation, checkpoints and metrics.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions unwrap too

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use tessera_glue::{Dataset, ReadOptions, Source, Split, Task, TextTokenizer};
use tessera_t5::safetensors::{SafeTensors, StoredDType};
use tessera_t5::{T5Config, T5Model};
use tessera_train::checkpoint::{self, TokenizerFiles};
use tessera_train::config::RunConfig;
use tessera_train::trainer::{Event, Outcome, Trainer};

fn tokenizer_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/data/tokenizer/tokenizer.json")
}

fn micro_config() -> T5Config {
    // The quickstart preset's settings (tied head, no dropout), smaller.
    T5Config::tiny_with(|c| {
        (c.vocab_size, c.d_ff) = (740, 24);
        (c.tie_word_embeddings, c.dropout_rate) = (true, 0.0);
    })
    .unwrap()
}

fn rows(count: usize) -> Dataset {
    let mut data = Source::parse("nli-synthetic")
        .load(Task::mnli(), Split::Train, ReadOptions::default())
        .unwrap();
    data.examples.truncate(count);
    data
}

fn run_config(output: &Path, layer: &str) -> RunConfig {
    let base = format!(
        "steps = 6\nbatch_size = 4\ngrad_accum = 2\nlr = 3e-3\nwarmup_steps = 2\ndropout = 0.1\n\
         checkpoint_every = 3\neval_every = 0\nkeep = 5\noutput = {:?}\n",
        output.display().to_string()
    );
    RunConfig::resolve(&[base.parse().unwrap(), layer.parse().unwrap()]).unwrap()
}

fn trainer(config: RunConfig, train: &Dataset) -> Trainer {
    let path = tokenizer_path();
    let tokenizer = TextTokenizer::from_file(&path).unwrap();
    let files = TokenizerFiles::of(&tokenizer, Some(&path)).unwrap();
    let model = T5Model::init(micro_config(), config.seed);
    Trainer::new(config, model, tokenizer, files, train, None).unwrap()
}

fn finish(t: &mut Trainer, stop_after: Option<u64>) -> Outcome {
    let stop = AtomicBool::new(false);
    t.run(&stop, |event| {
        if let tessera_train::trainer::Event::Step(r) = event {
            if Some(r.step) == stop_after {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    })
    .unwrap()
}

/// The lines of `OUTPUT/metrics.jsonl`.
fn metrics(output: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn an_interrupted_and_resumed_run_ends_with_the_same_bits() {
    interrupt_and_resume("", |_| {});
}

#[test]
fn sixteen_bit_weights_resume_with_the_same_bits_and_are_saved_as_such() {
    let layer = "precision = \"bf16\"\nstochastic_rounding = true\n";
    interrupt_and_resume(layer, |end| {
        let file = SafeTensors::open(&end.join(tessera_t5::WEIGHTS_FILE)).unwrap();
        assert!(file
            .names()
            .all(|n| file.info(n).unwrap().dtype == StoredDType::BF16));
    });
}

/// Runs `layer` straight through, and interrupted after step 4 then
/// resumed; checks both end with the same bits, then runs `check` on the
/// final checkpoint.
fn interrupt_and_resume(layer: &str, check: impl FnOnce(&Path)) {
    let train = rows(40);
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let mut a = trainer(run_config(&straight, layer), &train);
    let Outcome::Finished(end_a) = finish(&mut a, None) else {
        panic!("the straight run finishes")
    };
    // Interrupted after step 4 (between checkpoints), resumed from step-4.
    let broken = dir.path().join("broken");
    let mut b = trainer(run_config(&broken, layer), &train);
    let Outcome::Interrupted(saved) = finish(&mut b, Some(4)) else {
        panic!("the run stops when asked")
    };
    assert_eq!(saved, checkpoint::step_dir(&broken.join("checkpoints"), 4));
    drop(b);
    let config = checkpoint::read_state(&saved).unwrap().config;
    let mut resumed = Trainer::resume(&saved, config, &train, None, false).unwrap();
    assert_eq!(resumed.step(), 4);
    let Outcome::Finished(end_b) = finish(&mut resumed, None) else {
        panic!("the resumed run finishes")
    };
    let (wa, wb) = (
        T5Model::load(&end_a).unwrap(),
        T5Model::load(&end_b).unwrap(),
    );
    assert!(wa.params() == wb.params());
    assert_eq!(
        std::fs::read(end_a.join(checkpoint::OPTIMIZER_FILE)).unwrap(),
        std::fs::read(end_b.join(checkpoint::OPTIMIZER_FILE)).unwrap()
    );
    // Checkpoints at 3, 4 (the interruption) and 6; metrics for every step taken.
    assert_eq!(
        checkpoint::list(&broken.join("checkpoints")).unwrap(),
        [3, 4, 6]
    );
    let lines = metrics(&broken);
    let steps: Vec<u64> = lines
        .iter()
        .filter(|l| l.get("loss").is_some())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    // One run: it started, then resumed at step 4, all under one identity.
    let events: Vec<(&str, u64)> = lines
        .iter()
        .filter_map(|l| Some((l.get("event")?.as_str()?, l["at_step"].as_u64()?)))
        .collect();
    assert_eq!(events, [("start", 0), ("resume", 4)]);
    assert_eq!(lines[0]["run"], lines[5]["run"]);
    assert_eq!(lines[0]["data"]["rows_read"], 40);
    check(&end_a);
}

/// However a global batch is cut into forward/backward passes — one pass,
/// four passes of rows, or passes filled to a token budget — the step is
/// the same: the loss is divided by the global batch's target tokens, and
/// every dropout mask follows its token (example and position), not its
/// pass, so this holds with dropout on.
#[test]
fn a_step_does_not_depend_on_how_its_batch_is_cut() {
    let train = rows(16);
    let dir = tempfile::tempdir().unwrap();
    for dropout in ["0.0", "0.1"] {
        let layer =
            format!("steps = 2\nshuffle = false\ndropout = {dropout}\ncheckpoint_every = 0\n");
        let config = |name: &str, cut: &str| {
            run_config(
                &dir.path().join(format!("{name}-{dropout}")),
                &format!("{layer}{cut}"),
            )
        };
        let mut whole = trainer(config("whole", "batch_size = 8\ngrad_accum = 1\n"), &train);
        let cuts = [
            "batch_size = 2\ngrad_accum = 4\n",
            "batch_size = 4\ngrad_accum = 2\nmax_tokens = 40\n",
        ];
        let mut others: Vec<Trainer> = cuts
            .iter()
            .enumerate()
            .map(|(i, cut)| trainer(config(&format!("cut{i}"), cut), &train))
            .collect();
        for _ in 0..2 {
            let ra = whole.train_step().unwrap();
            assert_eq!(ra.passes, 1);
            for (t, cut) in others.iter_mut().zip(cuts) {
                let rb = t.train_step().unwrap();
                assert!(rb.passes > 1, "{cut}: {} passes", rb.passes);
                assert_eq!(
                    (ra.examples, ra.target_tokens, ra.source_tokens),
                    (rb.examples, rb.target_tokens, rb.source_tokens)
                );
                assert!(
                    (ra.loss - rb.loss).abs() < 1e-5,
                    "dropout {dropout}, {cut}: {} vs {}",
                    ra.loss,
                    rb.loss
                );
                assert!((ra.grad_norm - rb.grad_norm).abs() < 1e-4 * ra.grad_norm);
            }
        }
        for (t, cut) in others.iter().zip(cuts) {
            let (pa, pb) = (whole.model().params().flat(), t.model().params().flat());
            let worst = pa
                .iter()
                .zip(pb)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-5,
                "dropout {dropout}, {cut}: weights differ by {worst}"
            );
        }
    }
}

#[test]
fn checkpoints_beyond_keep_are_deleted() {
    let train = rows(40);
    let dir = tempfile::tempdir().unwrap();
    let config = run_config(dir.path(), "keep = 1\ncheckpoint_every = 1\nsteps = 3\n");
    let mut t = trainer(config, &train);
    finish(&mut t, None);
    let root = dir.path().join("checkpoints");
    assert_eq!(checkpoint::list(&root).unwrap(), [3]);
    let leftovers: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary folders are left behind");
}

#[test]
fn evaluations_are_logged_as_scores() {
    let train = rows(16);
    let eval = rows(6);
    let dir = tempfile::tempdir().unwrap();
    let config = run_config(
        dir.path(),
        "steps = 2\neval_every = 1\ncheckpoint_every = 0\n",
    );
    let path = tokenizer_path();
    let tokenizer = TextTokenizer::from_file(&path).unwrap();
    let files = TokenizerFiles::of(&tokenizer, Some(&path)).unwrap();
    let model = T5Model::init(micro_config(), 0);
    let mut t = Trainer::new(config, model, tokenizer, files, &train, Some(eval)).unwrap();
    finish(&mut t, None);
    let evals: Vec<serde_json::Value> = metrics(dir.path())
        .into_iter()
        .filter(|v| v.get("eval").is_some())
        .collect();
    assert_eq!(evals.len(), 2, "one evaluation per step");
    let e = &evals[1]["eval"];
    assert_eq!(e["examples"], 6);
    assert!((0.0..=1.0).contains(&e["accuracy"].as_f64().unwrap()));
    assert!(e["loss"].as_f64().unwrap() > 0.0);
    assert!(
        e.get("predictions").is_none(),
        "per-row data stays out of the log"
    );
}

/// The losses of the first `steps` updates of a run with `layer` laid over
/// the test config (no dropout, so precision is the only difference).
fn losses(dir: &Path, name: &str, layer: &str, steps: u64) -> Vec<f32> {
    let config = run_config(&dir.join(name), &format!("dropout = 0.0\n{layer}"));
    let mut t = trainer(config, &rows(40));
    let mut out = Vec::new();
    while t.step() < steps {
        let r = t.train_step().unwrap();
        assert!(!r.skipped, "{name}: step {} overflowed", r.step);
        out.push(r.loss);
    }
    out
}

#[test]
fn bf16_and_fp16_training_track_f32() {
    const STEPS: u64 = 30;
    let dir = tempfile::tempdir().unwrap();
    let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    let base = format!("steps = {STEPS}\nlr = 1e-2\n");
    let reference = losses(dir.path(), "f32", &base, STEPS);
    let tail = |l: &[f32]| mean(&l[l.len() - 5..]);
    assert!(
        tail(&reference) < 0.8 * reference[0],
        "the run learns: {reference:?}"
    );
    for (precision, weights) in [
        ("bf16", "master"),
        ("fp16", "master"),
        ("bf16", "stochastic"),
        ("fp16", "stochastic"),
    ] {
        let sr = weights == "stochastic";
        let layer = format!("{base}precision = {precision:?}\nstochastic_rounding = {sr}");
        let name = format!("{precision}-{weights}");
        let got = losses(dir.path(), &name, &layer, STEPS);
        let first = (got[0] - reference[0]).abs() / reference[0];
        let last = (tail(&got) - tail(&reference)).abs() / tail(&reference);
        eprintln!("{name}: first loss off by {first:.2e}, last five by {last:.2e}");
        assert_ne!(got, reference, "{name} rounds the matmul operands");
        assert!(first < 0.01, "{name}: {got:?} vs {reference:?}");
        assert!(last < 0.02, "{name}: {got:?} vs {reference:?}");
    }
}

#[test]
fn fp16_overflow_skips_the_step_and_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let init = 2f32.powi(30);
    let layer = format!("precision = \"fp16\"\nloss_scale_init = {init:?}\ndropout = 0.0");
    let mut t = trainer(run_config(dir.path(), &layer), &rows(40));
    let mut skipped = 0;
    while t.step() < 3 {
        let before = t.model().params().flat().to_vec();
        let r = t.train_step().unwrap();
        assert_eq!(r.loss_scale, Some(init / 2f32.powi(skipped)));
        if r.skipped {
            skipped += 1;
            assert_eq!(
                t.model().params().flat(),
                &before[..],
                "a skipped step changes nothing"
            );
            assert_eq!(r.skipped_steps, Some(skipped as u64));
        } else {
            assert!(r.loss.is_finite() && r.grad_norm.is_finite());
        }
        assert!(skipped < 40, "the scale backs off until the gradients fit");
    }
    assert!(skipped > 0, "2^30 overflows fp16 gradients");
    assert!(t.model().params().flat().iter().all(|v| v.is_finite()));
    // The scaler is saved with the trainer state, so a resumed run goes on with it.
    let saved = t.save_checkpoint().unwrap();
    let scaler = checkpoint::read_state(&saved).unwrap().loss_scaler.unwrap();
    assert_eq!(
        (scaler.skipped, scaler.scale),
        (skipped as u64, init / 2f32.powi(skipped))
    );
}

/// The events of a run, as `"step 3"`, `"checkpoint step-3"`, `"eval 3"`.
fn events(t: &mut Trainer, stop_after: Option<u64>) -> (Outcome, Vec<String>) {
    let stop = AtomicBool::new(false);
    let mut seen = Vec::new();
    let outcome = t
        .run(&stop, |event| {
            seen.push(match event {
                Event::Step(r) => {
                    if Some(r.step) == stop_after {
                        stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    format!("step {}", r.step)
                }
                Event::Checkpoint(dir) => {
                    format!("checkpoint {}", dir.file_name().unwrap().to_string_lossy())
                }
                Event::Eval { step, .. } => format!("eval {step}"),
                Event::Report(page) => {
                    format!("report {}", page.file_name().unwrap().to_string_lossy())
                }
                Event::ReportFailed(why) => format!("report failed: {why}"),
            })
        })
        .unwrap();
    (outcome, seen)
}

#[test]
fn a_step_is_checkpointed_before_its_evaluation_and_saved_once_when_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let config = run_config(dir.path(), "eval_every = 3\n");
    let path = tokenizer_path();
    let tokenizer = TextTokenizer::from_file(&path).unwrap();
    let files = TokenizerFiles::of(&tokenizer, Some(&path)).unwrap();
    let model = T5Model::init(micro_config(), 0);
    let mut t = Trainer::new(config, model, tokenizer, files, &rows(40), Some(rows(4))).unwrap();
    // Interrupted on step 3, which is also a checkpoint and an evaluation step.
    let (outcome, seen) = events(&mut t, Some(3));
    assert_eq!(
        seen,
        [
            "step 1",
            "step 2",
            "step 3",
            "checkpoint step-3",
            "eval 3",
            "report report.html",
            "report report.html"
        ]
    );
    assert!(matches!(outcome, Outcome::Interrupted(d) if d.ends_with("step-3")));
    // The page is the run's: its evaluation, its configuration.
    let page = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(
        page.contains("evaluation accuracy") && page.contains("<svg"),
        "{}",
        &page[..200]
    );
}

#[test]
fn a_fresh_run_refuses_a_folder_holding_another_run() {
    let train = rows(40);
    let dir = tempfile::tempdir().unwrap();
    let mut first = trainer(run_config(dir.path(), ""), &train);
    finish(&mut first, None);
    drop(first);
    // The case: a short run into the same folder would have saved
    // step-3 and pruned it at once as older than the first run's step-6.
    let config = run_config(dir.path(), "steps = 3\nkeep = 1\n");
    let mut second = trainer(config.clone(), &train);
    let stop = AtomicBool::new(false);
    let e = second.run(&stop, |_| {}).unwrap_err().to_string();
    assert!(
        e.contains("another run") && e.contains("step-6") && e.contains("--resume latest"),
        "{e}"
    );
    assert_eq!(
        checkpoint::list(&dir.path().join("checkpoints")).unwrap(),
        [3, 6]
    );
    drop(second);
    let mut third = trainer(config, &train);
    let notes = third.claim_output(true).unwrap().to_vec();
    assert!(notes.iter().any(|n| n.contains("deleted")), "{notes:?}");
    finish(&mut third, None);
    assert_eq!(
        checkpoint::list(&dir.path().join("checkpoints")).unwrap(),
        [3]
    );
    assert_eq!(metrics(dir.path())[0]["event"], "start");
    assert_eq!(
        metrics(dir.path())
            .iter()
            .filter(|l| l.get("event").is_some())
            .count(),
        1
    );
}

#[test]
fn resuming_with_other_settings_or_data_is_refused_unless_allowed() {
    let train = rows(40);
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(run_config(dir.path(), "steps = 3\n"), &train);
    finish(&mut t, None);
    drop(t);
    let saved = checkpoint::step_dir(&dir.path().join("checkpoints"), 3);
    let state = checkpoint::read_state(&saved).unwrap();
    let resume = |config: RunConfig, data: &Dataset, allow: bool| {
        Trainer::resume(&saved, config, data, None, allow)
    };
    let bigger = |c: &RunConfig| RunConfig {
        batch_size: 8,
        ..c.clone()
    };
    let e = resume(bigger(&state.config), &train, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("batch_size = 4") && e.contains("8") && e.contains("--allow-config-change"),
        "{e}"
    );
    let e = resume(state.config.clone(), &rows(39), false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("training data = 40 rows"), "{e}");
    // Free keys change freely.
    let longer = RunConfig {
        steps: 9,
        keep: 1,
        ..state.config.clone()
    };
    resume(longer.clone(), &train, false).unwrap();
    let mut allowed = resume(bigger(&longer), &train, true).unwrap();
    assert_eq!(allowed.config_changes()[0].key, "batch_size");
    finish(&mut allowed, None);
    let resumed = metrics(dir.path())
        .into_iter()
        .find(|l| l["event"] == "resume")
        .unwrap();
    assert_eq!(resumed["config_changes"][0]["key"], "batch_size");
}

#[test]
fn a_damaged_checkpoint_is_named_and_latest_skips_it() {
    let train = rows(40);
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(run_config(dir.path(), ""), &train);
    finish(&mut t, None);
    drop(t);
    let root = dir.path().join("checkpoints");
    let newest = checkpoint::step_dir(&root, 6);
    let optimizer = newest.join(checkpoint::OPTIMIZER_FILE);
    let mut bytes = std::fs::read(&optimizer).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&optimizer, bytes).unwrap();
    let config = checkpoint::read_state(&newest).unwrap().config;
    let e = Trainer::resume(&newest, config, &train, None, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("optimizer.safetensors") && e.contains("hash"),
        "{e}"
    );
    let (latest, rejected) = checkpoint::latest(&root).unwrap();
    assert_eq!(latest, checkpoint::step_dir(&root, 3));
    assert_eq!(rejected.len(), 1);
    std::fs::remove_file(checkpoint::step_dir(&root, 3).join(checkpoint::MANIFEST_FILE)).unwrap();
    let e = checkpoint::latest(&root).unwrap_err().to_string();
    assert!(e.contains("no complete checkpoint"), "{e}");
}

#[test]
fn stale_staging_folders_are_removed_when_a_run_claims_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("checkpoints");
    let stale = root.join(".step-9.staging-4242");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), b"half a checkpoint").unwrap();
    let mut t = trainer(run_config(dir.path(), "steps = 3\n"), &rows(40));
    let notes = t.claim_output(false).unwrap().to_vec();
    assert!(!stale.exists());
    assert!(notes[0].contains(".step-9.staging-4242"), "{notes:?}");
}

#[test]
fn non_finite_weights_are_never_saved() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = T5Model::init(micro_config(), 0);
    let id = model
        .params()
        .find("encoder.final_layer_norm.weight")
        .unwrap();
    model.params_mut().get_mut(id)[1] = f32::NAN;
    let e = model.save(&dir.path().join("m")).unwrap_err().to_string();
    assert!(
        e.contains("encoder.final_layer_norm.weight") && e.contains("NaN"),
        "{e}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing is written: {left:?}");
}

/// A LoRA run from a base folder: straight through, and interrupted after
/// step 4 then resumed, on the micro model with dropout on.
#[test]
fn a_lora_run_trains_only_its_adapters_resumes_exactly_and_exports_for_peft() {
    use tessera_train::model_source::{load_model, ModelSpec};
    let train = rows(40);
    let dir = tempfile::tempdir().unwrap();
    let base_dir = dir.path().join("base");
    let base = T5Model::init(micro_config(), 11);
    base.save(&base_dir).unwrap();
    let layer = format!(
        "model = {:?}\nlora_rank = 4\nlora_alpha = 16.0\nlora_targets = \"q,v,wo\"\n",
        base_dir.display().to_string()
    );
    let lora_trainer = |output: &Path| {
        let path = tokenizer_path();
        let tokenizer = TextTokenizer::from_file(&path).unwrap();
        let files = TokenizerFiles::of(&tokenizer, Some(&path)).unwrap();
        let model = T5Model::load(&base_dir).unwrap();
        Trainer::new(
            run_config(output, &layer),
            model,
            tokenizer,
            files,
            &train,
            None,
        )
        .unwrap()
    };
    let straight = dir.path().join("straight");
    let Outcome::Finished(end_a) = finish(&mut lora_trainer(&straight), None) else {
        panic!("the straight run finishes")
    };
    let broken = dir.path().join("broken");
    let Outcome::Interrupted(saved) = finish(&mut lora_trainer(&broken), Some(4)) else {
        panic!("the run stops when asked")
    };
    let manifest = checkpoint::verify(&saved).unwrap();
    assert_eq!(manifest.kind, checkpoint::CheckpointKind::Adapter);
    let names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert!(
        names.contains(&tessera_t5::ADAPTER_WEIGHTS_FILE),
        "{names:?}"
    );
    assert!(!names.contains(&tessera_t5::WEIGHTS_FILE), "{names:?}");
    let config = checkpoint::read_state(&saved).unwrap().config;
    let mut resumed = Trainer::resume(&saved, config.clone(), &train, None, false).unwrap();
    let Outcome::Finished(end_b) = finish(&mut resumed, None) else {
        panic!("the resumed run finishes")
    };
    let load = |d: &Path| {
        load_model(&ModelSpec::Folder(d.to_path_buf()), 0)
            .unwrap()
            .model
    };
    let (a, b) = (load(&end_a), load(&end_b));
    assert!(a.params() == base.params(), "the base moved");
    assert_eq!(a.lora(), b.lora());
    let trained = a.lora().unwrap().adapters();
    assert!(trained
        .iter()
        .any(|(e, v)| e.name.contains("lora_B") && v.iter().any(|&x| x != 0.0)));
    assert_eq!(
        std::fs::read(end_a.join(checkpoint::OPTIMIZER_FILE)).unwrap(),
        std::fs::read(end_b.join(checkpoint::OPTIMIZER_FILE)).unwrap()
    );

    // PEFT's folder, and a merged model that computes the same.
    let peft = dir.path().join("peft");
    tessera_train::export::export(&end_a, &peft).unwrap();
    assert!(peft.join(tessera_t5::ADAPTER_CONFIG_FILE).is_file());
    assert!(!peft.join(tessera_t5::WEIGHTS_FILE).exists());
    let mut from_peft = base.clone();
    from_peft.load_adapter(&peft).unwrap();
    assert_eq!(from_peft.lora(), a.lora());
    let merged_dir = dir.path().join("merged");
    tessera_train::export::export_as(&end_a, &merged_dir, StoredDType::F32, true).unwrap();
    let merged = T5Model::load(&merged_dir).unwrap();
    let prompt: Vec<u32> = vec![5, 9, 33, 7, 1];
    assert_eq!(
        merged.generate(&[&prompt], 4).unwrap(),
        a.generate(&[&prompt], 4).unwrap()
    );

    // Another base under the same name is refused on resume.
    T5Model::init(micro_config(), 12).save(&base_dir).unwrap();
    let err = Trainer::resume(&saved, config, &train, None, false)
        .err()
        .unwrap();
    assert!(err.to_string().contains("not on these weights"), "{err}");
}
