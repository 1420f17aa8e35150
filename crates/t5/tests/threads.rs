//! Results do not depend on the thread count: a training pass gives the same
//! loss and gradients, bit for bit, on 1 and 3 threads (what resumable,
//! reproducible training relies on). Its own test binary, since the thread
//! count is process-wide.

use tessera_t5::{Batch, T5Config, T5Model, TrainOptions};
use tessera_tensor::set_num_threads;

#[test]
fn training_pass_is_bit_identical_across_thread_counts() {
    let json = r#"{"vocab_size": 300, "d_model": 64, "d_kv": 16, "d_ff": 96, "num_layers": 2,
        "num_decoder_layers": 1, "num_heads": 4, "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": false, "dropout_rate": 0.1}"#;
    let model = T5Model::init(T5Config::from_json(json, "threads").expect("config"), 5);
    let (b, s, t) = (4, 80, 12);
    let input_ids: Vec<u32> = (0..b * s).map(|i| (i * 37 % 298) as u32 + 2).collect();
    let mask: Vec<u8> = (0..b * s)
        .map(|i| u8::from(i % s < s - i / s * 7))
        .collect();
    let labels: Vec<i64> = (0..b * t)
        .map(|i| {
            if i % t > 9 {
                -100
            } else {
                (i * 11 % 300) as i64
            }
        })
        .collect();
    let batch = Batch::from_padded(&input_ids, &mask, &labels, b).expect("batch");
    let mut opts = TrainOptions::from_config(model.config());
    opts.seed = 3;
    let run = |threads: usize| {
        set_num_threads(threads).expect("threads");
        let mut grads = model.new_gradients();
        let loss = model
            .forward_backward(&batch, &mut grads, &opts)
            .expect("pass");
        let tokens = model.generate(&batch.source_rows(), 4).expect("generate");
        (loss, grads, tokens)
    };
    let (loss1, grads1, tokens1) = run(1);
    let (loss3, grads3, tokens3) = run(3);
    assert_eq!(loss1, loss3);
    assert_eq!(tokens1, tokens3);
    let bits =
        |g: &tessera_t5::ParamStore| g.flat().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(&grads1) == bits(&grads3),
        "gradients differ between 1 and 3 threads"
    );
}
