//! The report page on the metrics a run leaves: it parses as XML (so as
//! HTML), every chart is an SVG document, its numbers are the file's, and
//! the runs a user has (no evaluation, resumed, fp16 with skipped steps, a
//! killed run's cut last line) all render.

use tessera_report::{render, RunLog};

fn header(event: &str, at: u64) -> String {
    format!(
        r#"{{"run":"r1","event":"{event}","at_step":{at},"data":{{"rows_read":40,"skipped":0}},"config":{{"model":"tessera-tiny","task":"mnli","max_grad_norm":1.0,"lr":0.001}},"model":{{"parameters":1276800,"trainable":1276800,"precision":"f32","shape":"d_model 128, 3+3 layers, 4 heads, gated-gelu"}},"machine":{{"cpu":"AMD EPYC","threads":2,"kernels":["avx512-8x32","avx512bf16-8x32"]}},"tessera":"0.1.0"}}"#
    )
}

fn step(n: u64, loss: f64, extra: &str) -> String {
    format!(
        r#"{{"step":{n},"loss":{loss},"lr":0.001,"grad_norm":{},"examples":32,"passes":1,"target_tokens":64,"source_tokens":600,"flops":1e9,"examples_per_s":320.5,"seconds":0.1{extra}}}"#,
        loss * 2.0
    )
}

fn eval(n: u64, accuracy: f64) -> String {
    format!(
        r#"{{"step":{n},"eval":{{"task":"mnli","examples":10,"malformed":1,"accuracy":{accuracy},"classes":{{"per_class":[{{"label":"entailment","gold":4,"predicted":3,"correct":3}},{{"label":"neutral","gold":3,"predicted":3,"correct":2}},{{"label":"contradiction","gold":3,"predicted":3,"correct":2}}],"confusion":[[3,1,0,0],[0,2,1,0],[0,0,2,1]]}},"loss":0.5}}}}"#
    )
}

/// Parses the page, checks every chart is SVG, and returns the texts of
/// every table cell.
fn check_page(page: &str) -> Vec<String> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(page, options)
        .unwrap_or_else(|e| panic!("the page is not well-formed: {e}"));
    let svgs: Vec<_> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "svg")
        .collect();
    assert!(!svgs.is_empty(), "no chart");
    for svg in svgs {
        let text = &page[svg.range()];
        roxmltree::Document::parse(text).unwrap_or_else(|e| panic!("a chart is not SVG: {e}"));
    }
    doc.descendants()
        .filter(|n| n.tag_name().name() == "td")
        .map(|n| n.text().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_run_renders_with_the_files_numbers() {
    let mut text = header("start", 0) + "\n";
    for n in 1..=5 {
        text += &(step(n, 3.0 / n as f64, "") + "\n");
    }
    text += &(eval(5, 0.7) + "\n");
    let run = RunLog::parse(&text, "runs/a").unwrap();
    assert_eq!(run.steps.len(), 5);
    let page = render(&[run]).unwrap();
    let cells = check_page(&page);
    for n in 1..=5 {
        let loss = 3.0 / n as f64;
        assert!(
            cells.contains(&loss.to_string()),
            "loss {loss} is not in the page"
        );
    }
    assert!(
        cells.contains(&"0.7".to_string()),
        "the accuracy is not in the page"
    );
    for want in [
        "AMD EPYC",
        "clip threshold",
        "contradiction",
        "0.6667",
        "tessera-tiny",
        "d_model 128",
    ] {
        assert!(page.contains(want), "{want} is not in the page");
    }
}

#[test]
fn no_evaluation_a_resume_skipped_fp16_steps_and_a_cut_line_all_render() {
    // Steps 1-3, a resume at 2 (step 3 taken again: the later line wins),
    // a skipped fp16 step, and a last line cut short by a kill.
    let mut text = header("start", 0) + "\n";
    for n in 1..=3 {
        text += &(step(n, 2.0, r#","loss_scale":65536.0,"skipped":false"#) + "\n");
    }
    text += &(header("resume", 2) + "\n");
    text += &(step(3, 1.5, r#","loss_scale":32768.0,"skipped":true"#) + "\n");
    text += &(step(4, 1.25, r#","loss_scale":32768.0,"skipped":false"#) + "\n");
    let cut = step(5, 1.0, "");
    text += &cut[..cut.len() / 2];
    let run = RunLog::parse(&text, "runs/b").unwrap();
    assert!(run.truncated);
    assert_eq!(run.steps.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(run.steps[&3].loss, 1.5);
    assert_eq!(
        run.starts,
        [("start".to_string(), 0), ("resume".to_string(), 2)]
    );
    let page = render(&[run]).unwrap();
    check_page(&page);
    for want in [
        "fp16 loss scale",
        "steps skipped",
        "cut short",
        "No evaluation yet",
        "resume at step 2",
    ] {
        assert!(page.contains(want), "{want} is not in the page");
    }
    // Two runs overlaid.
    let other = RunLog::parse(
        &(header("start", 0) + "\n" + &step(1, 9.0, "") + "\n"),
        "runs/c",
    )
    .unwrap();
    let a = RunLog::parse(&text, "runs/b").unwrap();
    let page = render(&[a, other]).unwrap();
    assert!(page.contains("runs/b smoothed") && page.contains("runs/c smoothed"));
    check_page(&page);
}

#[test]
fn a_damaged_line_before_the_last_is_an_error_naming_it() {
    let text = header("start", 0) + "\n{\"step\": oops}\n" + &step(2, 1.0, "") + "\n";
    let (line, reason) = RunLog::parse(&text, "x").unwrap_err();
    assert_eq!(line, 2, "{reason}");
    let (line, _) = RunLog::parse("[1, 2]\n", "x").unwrap_err();
    assert_eq!(line, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    std::fs::write(&path, &text).unwrap();
    let err = RunLog::read(&path, "x").unwrap_err().to_string();
    assert!(
        err.contains("line 2") && err.contains("metrics.jsonl"),
        "{err}"
    );
    let err = RunLog::read(&dir.path().join("none.jsonl"), "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");
}
