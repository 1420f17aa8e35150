//! Reader round trips on small files the tests write, and the errors users see.

mod common;

use common::write;
use tessera_glue::read::locate_split;
use tessera_glue::{read_file, Example, GlueError, Label, ReadOptions, Source, Split, Task};

const MNLI_HEADER: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t\
sentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label";

fn mnli_row(index: usize, premise: &str, hypothesis: &str, gold: &str) -> String {
    format!("{index}\t1\t1n\tfiction\t\t\t\t\t{premise}\t{hypothesis}\t{gold}\t{gold}")
}

fn mnli_tsv() -> String {
    [
        MNLI_HEADER.to_string(),
        mnli_row(0, "He said \"hi and left.", "He spoke.", "entailment"),
        mnli_row(1, "A cat sleeps.", "A dog barks.", "neutral"),
        mnli_row(2, "It is \"red\".", "It is blue.", "-"),
        mnli_row(3, "Rain fell.", "It was dry.", "contradiction"),
    ]
    .join("\n")
        + "\n"
}

fn mnli_jsonl() -> String {
    let rows = [
        (r#"He said \"hi and left."#, "He spoke.", 0, 0),
        ("A cat sleeps.", "A dog barks.", 1, 1),
        (r#"It is \"red\"."#, "It is blue.", -1, 2),
        ("Rain fell.", "It was dry.", 2, 3),
    ];
    rows.iter()
        .map(|(p, h, l, i)| {
            format!(r#"{{"premise": "{p}", "hypothesis": "{h}", "label": {l}, "idx": {i}}}"#)
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn texts(examples: &[Example]) -> Vec<(Vec<String>, Label)> {
    examples
        .iter()
        .map(|e| (e.texts.clone(), e.label.clone()))
        .collect()
}

fn error_text(result: tessera_glue::Result<tessera_glue::Dataset>) -> String {
    result.expect_err("expected an error").to_string()
}

#[test]
fn glue_tsv_reads_by_header_keeps_quotes_and_counts_unlabeled() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "dev_mismatched.tsv", mnli_tsv());
    let data = read_file(&path, Task::mnli(), ReadOptions::default()).unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data.skipped_unlabeled, 1);
    let first = &data.examples[0];
    assert_eq!(first.texts, vec!["He spoke.", "He said \"hi and left."]);
    assert_eq!(
        (first.label.clone(), first.idx, first.line),
        (Label::Class(0), Some(0), 2)
    );
    assert_eq!(data.examples[2].label, Label::Class(2));
    assert_eq!(
        Task::mnli().source_text(first),
        "mnli hypothesis: He spoke. premise: He said \"hi and left."
    );
    let kept = read_file(
        &path,
        Task::mnli(),
        ReadOptions {
            keep_unlabeled: true,
        },
    )
    .unwrap();
    assert_eq!((kept.len(), kept.skipped_unlabeled), (4, 0));
    assert_eq!(kept.examples[2].label, Label::Missing);
}

#[test]
fn tsv_and_jsonl_exports_agree() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = write(dir.path(), "a.tsv", mnli_tsv());
    let jsonl = write(dir.path(), "a.jsonl", mnli_jsonl());
    let a = read_file(&tsv, Task::mnli(), ReadOptions::default()).unwrap();
    let b = read_file(&jsonl, Task::mnli(), ReadOptions::default()).unwrap();
    assert_eq!(texts(&a.examples), texts(&b.examples));
    assert_eq!(b.skipped_unlabeled, 1);
    assert_eq!(b.examples[1].idx, Some(1));
}

#[test]
fn tsv_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let mnli = Task::mnli();
    let opts = ReadOptions::default();

    let p = write(
        dir.path(),
        "cols.tsv",
        "index\tsentence1\tgold_label\n0\ta\tneutral\n",
    );
    let e = error_text(read_file(&p, mnli, opts));
    assert!(
        e.contains("cols.tsv") && e.contains("missing column 'sentence2'"),
        "{e}"
    );

    let ragged = format!(
        "{MNLI_HEADER}\n{}\n0\tonly two\n",
        mnli_row(0, "a", "b", "neutral")
    );
    let p = write(dir.path(), "ragged.tsv", ragged);
    let e = error_text(read_file(&p, mnli, opts));
    assert!(
        e.contains("ragged.tsv, line 3: has 2 columns, the header has 12"),
        "{e}"
    );

    let p = write(
        dir.path(),
        "label.tsv",
        format!("{MNLI_HEADER}\n{}\n", mnli_row(0, "a", "b", "maybe")),
    );
    let e = error_text(read_file(&p, mnli, opts));
    assert!(
        e.contains("label.tsv, line 2: unknown label 'maybe'"),
        "{e}"
    );

    let mut bytes = format!("{MNLI_HEADER}\n").into_bytes();
    bytes.extend_from_slice(b"0\t1\t1n\tfiction\t\t\t\t\t\xff\xfe\tb\tneutral\tneutral\n");
    let p = write(dir.path(), "utf8.tsv", bytes);
    let e = error_text(read_file(&p, mnli, opts));
    assert!(e.contains("utf8.tsv, line 2: invalid UTF-8"), "{e}");

    let p = write(dir.path(), "header.tsv", format!("{MNLI_HEADER}\n"));
    let e = error_text(read_file(&p, mnli, opts));
    assert!(
        e.contains("header.tsv: the file has a header but no rows"),
        "{e}"
    );

    let p = write(dir.path(), "empty.tsv", "");
    let e = error_text(read_file(&p, mnli, opts));
    assert!(e.contains("empty.tsv: the file is empty"), "{e}");

    let e = error_text(read_file(&dir.path().join("absent.tsv"), mnli, opts));
    assert!(
        e.starts_with("cannot read") && e.contains("absent.tsv"),
        "{e}"
    );

    let p = write(dir.path(), "data.csv", "a,b\n");
    let e = error_text(read_file(&p, mnli, opts));
    assert!(e.contains("data.csv: unknown data format"), "{e}");
}

#[test]
fn other_glue_tsv_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ReadOptions::default();
    // CoLA train/dev: no header; source, label, original label, sentence.
    let p = write(
        dir.path(),
        "cola.tsv",
        "gj04\t1\t\tOur friends won't buy it.\ngj04\t0\t*\tThe more we study.\n",
    );
    let cola = read_file(&p, "cola".parse().unwrap(), opts).unwrap();
    assert_eq!(cola.examples[0].texts, vec!["Our friends won't buy it."]);
    assert_eq!(cola.examples[1].label, Label::Class(0));
    assert_eq!(cola.examples[0].line, 1);
    // MRPC: label column "Quality", text in "#1 String"/"#2 String".
    let p = write(
        dir.path(),
        "mrpc.tsv",
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t7\t8\tA b.\tB a.\n",
    );
    let mrpc = read_file(&p, "mrpc".parse().unwrap(), opts).unwrap();
    let task = mrpc.task;
    assert_eq!(
        task.source_text(&mrpc.examples[0]),
        "mrpc sentence1: A b. sentence2: B a."
    );
    assert_eq!(
        task.target_text(&mrpc.examples[0].label).unwrap(),
        "equivalent"
    );
    // STS-B: float score, rounded target.
    let p = write(
        dir.path(),
        "stsb.tsv",
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n\
         0\tmain-captions\tx\t2012\t1\tnone\tnone\tA plane.\tAn aircraft.\t4.75\n",
    );
    let stsb = read_file(&p, "stsb".parse().unwrap(), opts).unwrap();
    assert_eq!(
        stsb.task.target_text(&stsb.examples[0].label).unwrap(),
        "4.8"
    );
    // QNLI: label words.
    let p = write(
        dir.path(),
        "qnli.tsv",
        "index\tquestion\tsentence\tlabel\n0\tWho?\tMe.\tnot_entailment\n",
    );
    let qnli = read_file(&p, "qnli".parse().unwrap(), opts).unwrap();
    assert_eq!(qnli.examples[0].label, Label::Class(1));
    // A test file without a label column: every row unlabeled.
    let p = write(
        dir.path(),
        "test.tsv",
        "index\tsentence\n0\tFine.\n1\tBad.\n",
    );
    let sst2 = read_file(&p, "sst2".parse().unwrap(), opts).unwrap();
    assert_eq!((sst2.len(), sst2.skipped_unlabeled), (0, 2));
}

#[test]
fn jsonl_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let mnli = Task::mnli();
    let opts = ReadOptions::default();
    let good = r#"{"premise": "a", "hypothesis": "b", "label": 0, "idx": 0}"#;
    let cases = [
        (
            "json.jsonl",
            format!("{good}\n{{not json\n"),
            "line 2: invalid JSON",
        ),
        (
            "field.jsonl",
            format!("{good}\n{{\"premise\": \"a\", \"label\": 1}}\n"),
            "line 2: missing field 'hypothesis'",
        ),
        (
            "range.jsonl",
            r#"{"premise": "a", "hypothesis": "b", "label": 3}"#.to_string(),
            "line 1: label id 3 is out of range",
        ),
        (
            "type.jsonl",
            r#"{"premise": 5, "hypothesis": "b", "label": 0}"#.to_string(),
            "line 1: field 'premise' is not a string",
        ),
        (
            "array.jsonl",
            "[1, 2]\n".to_string(),
            "line 1: is not a JSON object",
        ),
        ("blank.jsonl", "\n\n".to_string(), "the file is empty"),
    ];
    for (name, contents, want) in cases {
        let p = write(dir.path(), name, contents);
        let e = error_text(read_file(&p, mnli, opts));
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
}

#[test]
fn custom_jsonl_task() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "custom.jsonl",
        "{\"input\": \"translate English to German: Hello\", \"target\": \"Hallo\"}\n",
    );
    let task: Task = "custom".parse().unwrap();
    let data = read_file(&p, task, ReadOptions::default()).unwrap();
    assert_eq!(
        task.source_text(&data.examples[0]),
        "translate English to German: Hello"
    );
    assert_eq!(task.target_text(&data.examples[0].label).unwrap(), "Hallo");
}

#[test]
fn split_folders_are_found_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = write(dir.path(), "MNLI/dev_mismatched.tsv", mnli_tsv());
    let found = locate_split(dir.path(), Task::mnli(), Split::ValidationMismatched).unwrap();
    assert_eq!(found, vec![tsv]);
    let jsonl = write(dir.path(), "mnli/validation_mismatched.jsonl", mnli_jsonl());
    let found = locate_split(
        &dir.path().join("mnli"),
        Task::mnli(),
        Split::ValidationMismatched,
    );
    assert_eq!(found.unwrap(), vec![jsonl]);
    let e = locate_split(dir.path(), Task::mnli(), Split::TestMatched)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no test_matched split of mnli found"), "{e}");
    let source = Source::parse(dir.path().to_str().unwrap());
    let data = source.load(
        Task::mnli(),
        Split::ValidationMismatched,
        ReadOptions::default(),
    );
    assert_eq!(data.unwrap().len(), 3);
    assert_eq!(Source::parse("nli-synthetic"), Source::NliSynthetic);
    assert!(matches!(
        Source::parse("missing.jsonl").load(Task::mnli(), Split::Train, ReadOptions::default()),
        Err(GlueError::Io { .. })
    ));
}

#[cfg(feature = "parquet")]
mod parquet_files {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;
    use tessera_glue::parquet::basic::Compression;
    use tessera_glue::parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
    use tessera_glue::parquet::errors::{ParquetError, Result};
    use tessera_glue::parquet::file::properties::WriterProperties;
    use tessera_glue::parquet::file::writer::SerializedFileWriter;
    use tessera_glue::parquet::schema::parser::parse_message_type;

    /// Writes MNLI rows as the Hub stores them (premise, hypothesis, label int64, idx int32),
    /// snappy-compressed, one row group per slice of rows; the `idx` column only if the
    /// schema has one.
    fn write_mnli(path: &Path, schema: &str, groups: &[&[(&str, &str, i64)]]) -> Result<()> {
        let schema = Arc::new(parse_message_type(schema)?);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let file = std::fs::File::create(path)?;
        let mut writer = SerializedFileWriter::new(file, schema, Arc::new(props))?;
        let mut idx = 0;
        for rows in groups {
            let mut group = writer.next_row_group()?;
            let premises: Vec<ByteArray> = rows.iter().map(|r| ByteArray::from(r.0)).collect();
            let hypotheses: Vec<ByteArray> = rows.iter().map(|r| ByteArray::from(r.1)).collect();
            for values in [premises, hypotheses] {
                let mut col = group.next_column()?.ok_or(missing())?;
                col.typed::<ByteArrayType>()
                    .write_batch(&values, None, None)?;
                col.close()?;
            }
            let labels: Vec<i64> = rows.iter().map(|r| r.2).collect();
            let mut col = group.next_column()?.ok_or(missing())?;
            col.typed::<Int64Type>().write_batch(&labels, None, None)?;
            col.close()?;
            if let Some(mut col) = group.next_column()? {
                let ids: Vec<i32> = (idx..idx + rows.len() as i32).collect();
                col.typed::<Int32Type>().write_batch(&ids, None, None)?;
                col.close()?;
            }
            idx += rows.len() as i32;
            group.close()?;
        }
        writer.close()?;
        Ok(())
    }

    fn missing() -> ParquetError {
        ParquetError::General("the schema has too few columns".to_string())
    }

    const HUB_SCHEMA: &str = "message schema {
        REQUIRED BYTE_ARRAY premise (UTF8);
        REQUIRED BYTE_ARRAY hypothesis (UTF8);
        REQUIRED INT64 label;
        REQUIRED INT32 idx;
    }";

    #[test]
    fn parquet_round_trip_agrees_with_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("validation_mismatched-00000-of-00001.parquet");
        let first: &[(&str, &str, i64)] = &[
            ("He said \"hi and left.", "He spoke.", 0),
            ("A cat sleeps.", "A dog barks.", 1),
        ];
        let second: &[(&str, &str, i64)] = &[
            ("It is \"red\".", "It is blue.", -1),
            ("Rain fell.", "It was dry.", 2),
        ];
        write_mnli(&path, HUB_SCHEMA, &[first, second]).unwrap();
        let parquet = read_file(&path, Task::mnli(), ReadOptions::default()).unwrap();
        let jsonl = write(dir.path(), "v.jsonl", mnli_jsonl());
        let jsonl = read_file(&jsonl, Task::mnli(), ReadOptions::default()).unwrap();
        assert_eq!(texts(&parquet.examples), texts(&jsonl.examples));
        assert_eq!(parquet.skipped_unlabeled, 1);
        assert_eq!(parquet.examples[2].idx, Some(3));
        // The Hub layout is found by split name.
        let found = locate_split(dir.path(), Task::mnli(), Split::ValidationMismatched).unwrap();
        assert_eq!(found, vec![path]);
    }

    #[test]
    fn parquet_errors_name_row_group_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.parquet");
        let schema = "message schema {
            REQUIRED BYTE_ARRAY premise (UTF8);
            REQUIRED BYTE_ARRAY hypothesis (UTF8);
            REQUIRED INT64 label;
        }";
        write_mnli(
            &path,
            schema,
            &[&[("a", "b", 0)], &[("c", "d", 1), ("e", "f", 7)]],
        )
        .unwrap();
        let e = error_text(read_file(&path, Task::mnli(), ReadOptions::default()));
        assert!(
            e.contains("bad.parquet, row group 1, row 1: label id 7 is out of range"),
            "{e}"
        );

        let path = write(dir.path(), "fake.parquet", "not parquet at all");
        let e = error_text(read_file(&path, Task::mnli(), ReadOptions::default()));
        assert!(
            e.contains("fake.parquet: not a readable Parquet file"),
            "{e}"
        );
    }

    /// Regression (found by `cargo fuzz run glue_readers`; the fuzzer's
    /// input minimised, every letter of its text replaced by x): `parquet`
    /// 58 panics on a column chunk whose byte range is negative; tessera
    /// reports the file.
    #[test]
    fn a_negative_column_range_is_an_error_not_a_panic() {
        let e = damaged_file_error("negative-column-range.parquet");
        assert!(e.contains("damaged"), "{e}");
    }

    /// Regression (found by `cargo fuzz run glue_readers`, input prepared as
    /// above): a footer whose schema list claims billions of elements made
    /// `parquet` 58 reserve 24 GB before reading one, an allocation failure
    /// that aborts the process. `parquet` 60 bounds the count by the bytes
    /// left (apache/arrow-rs#10979), so tessera requires it.
    ///
    /// Whether a 24 GB reservation fails depends on the host's memory and
    /// overcommit, so the read runs in a child process (this test binary
    /// again) limited to 2 GB of address space, where it always fails.
    #[test]
    fn a_huge_schema_list_is_an_error_not_an_abort() {
        const CHILD: &str = "TESSERA_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let e = damaged_file_error("huge-schema-list.parquet");
            assert!(e.contains("not a readable Parquet file"), "{e}");
            return;
        }
        let name = "parquet_files::a_huge_schema_list_is_an_error_not_an_abort";
        let out = std::process::Command::new("prlimit")
            .arg("--as=2000000000")
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads", "1"])
            .env(CHILD, "1")
            .output()
            .expect("prlimit (util-linux) runs");
        assert!(
            out.status.success(),
            "reading the file under a 2 GB address-space limit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The error of reading a damaged file kept in `tests/data`; it names the file.
    fn damaged_file_error(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name);
        let e = error_text(read_file(&path, Task::mnli(), ReadOptions::default()));
        assert!(e.contains(name), "{e}");
        e
    }
}

#[cfg(not(feature = "parquet"))]
#[test]
fn parquet_without_the_feature_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "train-00000-of-00001.parquet", "PAR1");
    let e = error_text(read_file(&path, Task::mnli(), ReadOptions::default()));
    assert!(e.contains("no Parquet support"), "{e}");
}
