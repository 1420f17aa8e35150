//! The dataset readers: the first byte picks the format (TSV, JSONL,
//! Parquet), the second the task; any bytes give rows or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_glue::{read_file, ReadOptions, Task};

const FORMATS: [&str; 3] = ["tsv", "jsonl", "parquet"];
const TASKS: [&str; 6] = ["mnli", "sst2", "stsb", "qqp", "rte", "cola"];

fuzz_target!(|data: &[u8]| {
    let [format, task, bytes @ ..] = data else {
        return;
    };
    let format = FORMATS[usize::from(*format) % FORMATS.len()];
    let task: Task = TASKS[usize::from(*task) % TASKS.len()]
        .parse()
        .expect("a known task");
    let path = tessera_fuzz::scratch(&format!("data.{format}"), bytes);
    for keep_unlabeled in [false, true] {
        let _ = read_file(&path, task, ReadOptions { keep_unlabeled });
    }
});
