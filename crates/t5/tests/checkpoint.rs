//! Checkpoint folders: bit-exact round trips (single file and sharded),
//! 16-bit stored weights, tied copies, and clear errors for every way a
//! checkpoint can be wrong — never a panic.

use proptest::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};
use tessera_t5::precision::OperandRef;
use tessera_t5::safetensors::{write_f32, SafeTensors, TensorToWrite};
use tessera_t5::{CheckpointError, T5Config, T5Model};

fn fixture_dir(name: &str) -> PathBuf {
    tessera_fixtures::data_dir().join("models").join(name)
}

/// A fresh scratch folder under the target directory.
fn scratch(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ckpt-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// All tensors of a model as (name, shape, values).
fn tensors(model: &T5Model) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    model
        .params()
        .iter()
        .map(|(e, v)| (e.name.clone(), e.shape.clone(), v.to_vec()))
        .collect()
}

/// Writes a folder with the model's config and the given tensors.
fn write_folder(dir: &Path, config: &T5Config, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    fs::create_dir_all(dir).expect("dir");
    fs::write(dir.join("config.json"), config.to_json()).expect("config");
    let list: Vec<TensorToWrite<'_>> = tensors
        .iter()
        .map(|(n, s, d)| TensorToWrite {
            name: n,
            shape: s,
            data: OperandRef::F32(d),
        })
        .collect();
    let mut file = fs::File::create(dir.join("model.safetensors")).expect("file");
    write_f32(&mut file, &list).expect("write");
}

fn load_err(dir: &Path) -> String {
    T5Model::load(dir).expect_err("must fail").to_string()
}

#[test]
fn save_then_load_is_bit_exact_single_and_sharded() {
    for name in ["t5-gated-untied", "t5-relu-tied"] {
        let model = T5Model::load(&fixture_dir(name)).expect("fixture");
        let root = scratch(name);
        let single = root.join("single");
        model.save(&single).expect("save");
        assert!(single.join("model.safetensors").exists());
        let back = T5Model::load(&single).expect("reload");
        assert_eq!(back.params().flat(), model.params().flat());
        assert_eq!(back.config(), model.config());
        let sharded = root.join("sharded");
        model.save_sharded(&sharded, 20_000).expect("save sharded");
        let index: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(sharded.join("model.safetensors.index.json")).expect("index"),
        )
        .expect("json");
        let files: std::collections::BTreeSet<&str> = index["weight_map"]
            .as_object()
            .expect("map")
            .values()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(files.len() > 2, "{files:?}");
        assert!(!sharded.join("model.safetensors").exists());
        let back = T5Model::load(&sharded).expect("reload sharded");
        let bits = |m: &T5Model| {
            m.params()
                .flat()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&back), bits(&model));
        let config: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(sharded.join("config.json")).expect("config"))
                .expect("json");
        assert_eq!(
            config["tie_word_embeddings"],
            serde_json::json!(name == "t5-relu-tied")
        );
        assert_eq!(config["transformers_version"], serde_json::json!("5.24.0"));
        assert!(sharded.join("generation_config.json").exists());
        fs::remove_dir_all(&root).expect("cleanup");
    }
}

#[test]
fn saving_over_a_folder_replaces_weights_and_keeps_other_files() {
    let model = T5Model::load(&fixture_dir("t5-relu-tied")).expect("fixture");
    let dir = scratch("overwrite").join("hf");
    model.save_sharded(&dir, 20_000).expect("sharded save");
    fs::write(dir.join("tokenizer.json"), "{}").expect("tokenizer");
    model.save(&dir).expect("single save over it");
    assert!(dir.join("tokenizer.json").exists());
    assert!(
        !dir.join("model.safetensors.index.json").exists(),
        "stale index must go"
    );
    assert_eq!(
        T5Model::load(&dir).expect("reload").params().flat(),
        model.params().flat()
    );
    let leftovers: Vec<_> = fs::read_dir(dir.parent().expect("parent"))
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary folders left behind");
}

#[test]
fn sixteen_bit_weights_and_embedding_copies_load() {
    let model = T5Model::load(&fixture_dir("t5-gated-untied")).expect("fixture");
    type Narrow = fn(f32) -> (u16, f32);
    let bf16: Narrow = |v| {
        let h = half::bf16::from_f32(v);
        (h.to_bits(), h.to_f32())
    };
    let f16: Narrow = |v| {
        let h = half::f16::from_f32(v);
        (h.to_bits(), h.to_f32())
    };
    for (dtype, narrow) in [("BF16", bf16), ("F16", f16)] {
        let dir = scratch(dtype);
        fs::write(dir.join("config.json"), model.config().to_json()).expect("config");
        // Hand-written 16-bit safetensors with the optional embed_tokens copies.
        let mut list = tensors(&model);
        let shared = list[0].clone();
        list.push((
            "encoder.embed_tokens.weight".into(),
            shared.1.clone(),
            shared.2.clone(),
        ));
        list.push(("decoder.embed_tokens.weight".into(), shared.1, shared.2));
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, shape, values) in &list {
            let begin = data.len();
            for v in values {
                data.extend(narrow(*v).0.to_le_bytes());
            }
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        let json = serde_json::to_vec(&header).expect("json");
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend(json);
        bytes.extend(data);
        fs::write(dir.join("model.safetensors"), bytes).expect("write");
        let loaded = T5Model::load(&dir).expect("16-bit checkpoint loads");
        for (a, b) in loaded.params().flat().iter().zip(model.params().flat()) {
            assert_eq!(*a, narrow(*b).1, "{dtype}");
        }
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}

#[test]
fn wrong_checkpoints_are_named_errors() {
    let model = T5Model::load(&fixture_dir("t5-relu-tied")).expect("fixture");
    let config = model.config().clone();
    let base = tensors(&model);
    let root = scratch("errors");

    let dir = root.join("missing");
    write_folder(&dir, &config, &base[1..]);
    let err = load_err(&dir);
    assert!(
        err.contains("shared.weight") && err.contains("missing"),
        "{err}"
    );

    let dir = root.join("unexpected");
    let mut extra = base.clone();
    extra.push((
        "encoder.block.0.layer.9.weight".into(),
        vec![2],
        vec![0.0, 1.0],
    ));
    write_folder(&dir, &config, &extra);
    let err = load_err(&dir);
    assert!(
        err.contains("unexpected tensor encoder.block.0.layer.9.weight")
            && err.contains("model.safetensors"),
        "{err}"
    );

    let dir = root.join("shape");
    let mut bad = base.clone();
    bad[3].1 = vec![bad[3].1[1], bad[3].1[0]];
    write_folder(&dir, &config, &bad);
    let err = load_err(&dir);
    assert!(err.contains(&base[3].0) && err.contains("shape"), "{err}");

    let dir = root.join("nan");
    let mut bad = base.clone();
    bad[5].2[2] = f32::NAN;
    write_folder(&dir, &config, &bad);
    let err = load_err(&dir);
    assert!(
        err.contains(&base[5].0) && err.contains("non-finite") && err.contains("element 2"),
        "{err}"
    );

    let dir = root.join("truncated");
    write_folder(&dir, &config, &base);
    let file = dir.join("model.safetensors");
    let bytes = fs::read(&file).expect("read");
    fs::write(&file, &bytes[..bytes.len() - 10]).expect("truncate");
    let err = load_err(&dir);
    assert!(
        err.contains("truncated") && err.contains("model.safetensors"),
        "{err}"
    );

    let dir = root.join("no-weights");
    fs::create_dir_all(&dir).expect("dir");
    fs::write(dir.join("config.json"), config.to_json()).expect("config");
    assert!(matches!(
        T5Model::load(&dir),
        Err(CheckpointError::NoWeights(_))
    ));

    let dir = root.join("shard-gone");
    model.save_sharded(&dir, 20_000).expect("save");
    let second = fs::read_dir(&dir)
        .expect("list")
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("model-00002-of")
        })
        .expect("a second shard");
    fs::remove_file(second.path()).expect("remove shard");
    let err = load_err(&dir);
    assert!(err.contains("model-00002-of"), "{err}");
    fs::remove_dir_all(&root).expect("cleanup");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random byte corruption or truncation of a real checkpoint gives an
    /// error or a finite model, never a panic.
    #[test]
    fn corrupt_checkpoints_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>(), header in prop::bool::ANY) {
        let src = fs::read(fixture_dir("t5-relu-tied").join("model.safetensors")).expect("fixture");
        let dir = scratch("fuzz");
        fs::copy(fixture_dir("t5-relu-tied").join("config.json"), dir.join("config.json")).expect("config");
        let mut bytes = src.clone();
        // Header corruption is the interesting case: aim there half the time.
        let header_len = 8 + u64::from_le_bytes(src[..8].try_into().expect("8 bytes")) as usize;
        let at = if header { pos.index(header_len) } else { pos.index(bytes.len()) };
        bytes[at] = byte;
        fs::write(dir.join("model.safetensors"), &bytes).expect("write");
        if let Ok(m) = T5Model::load(&dir) {
            prop_assert!(m.params().flat().iter().all(|v| v.is_finite()));
        }
        fs::write(dir.join("model.safetensors"), &src[..cut.index(src.len())]).expect("write");
        prop_assert!(T5Model::load(&dir).is_err());
        let _ = SafeTensors::open(&dir.join("model.safetensors"));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}

#[test]
fn saving_in_sixteen_bits_rounds_once_and_refuses_fp16_overflow() {
    use tessera_t5::safetensors::StoredDType;
    let model = T5Model::load(&fixture_dir("t5-gated-untied")).expect("fixture");
    let root = scratch("save16");
    let f32_size = {
        model.save(&root.join("f32")).expect("save");
        fs::metadata(root.join("f32/model.safetensors"))
            .expect("file")
            .len()
    };
    type Round = fn(f32) -> f32;
    let bf16: Round = |v| half::bf16::from_f32(v).to_f32();
    let f16: Round = |v| half::f16::from_f32(v).to_f32();
    for (dtype, round) in [(StoredDType::BF16, bf16), (StoredDType::F16, f16)] {
        let dir = root.join(dtype.to_string());
        model.save_as(&dir, dtype).expect("16-bit save");
        let file = SafeTensors::open(&dir.join("model.safetensors")).expect("readable");
        let first = model.params().entries()[0].name.clone();
        assert_eq!(file.info(&first).expect("tensor").dtype, dtype);
        let size = fs::metadata(dir.join("model.safetensors"))
            .expect("file")
            .len();
        // Half the data; the JSON header (a few KB here) stays the same.
        assert!(size * 10 < f32_size * 6, "{size} bytes vs f32's {f32_size}");
        let back = T5Model::load(&dir).expect("loads");
        let want: Vec<f32> = model.params().flat().iter().map(|&v| round(v)).collect();
        assert_eq!(back.params().flat(), &want[..], "{dtype:?}");
    }
    let mut big = model.clone();
    let id = big.params().ids().nth(3).expect("a fourth tensor");
    big.params_mut().get_mut(id)[0] = 1e6;
    let dir = root.join("overflow");
    let err = big
        .save_as(&dir, StoredDType::F16)
        .expect_err("1e6 does not fit fp16")
        .to_string();
    let name = &big.params().entry(id).name;
    assert!(err.contains(name.as_str()) && err.contains("F16"), "{err}");
    assert!(!dir.exists(), "a failed save leaves nothing behind");
}

#[test]
fn sixteen_bit_weights_save_as_they_are_and_refuse_fp16_overflow() {
    use tessera_t5::safetensors::StoredDType;
    use tessera_t5::Precision;
    use tessera_tensor::DType;
    let model = T5Model::load(&fixture_dir("t5-gated-untied")).expect("fixture");
    let root = scratch("store16");
    let bytes = |dir: &Path| fs::read(dir.join("model.safetensors")).expect("weights");
    for (precision, dtype) in [
        (Precision::Bf16, StoredDType::BF16),
        (Precision::Fp16, StoredDType::F16),
    ] {
        let mut narrow = model.clone();
        narrow.set_precision(precision);
        narrow
            .store_weights_in_precision()
            .expect("the fixture fits");
        assert_eq!(narrow.params().dtype(), precision.dtype());
        let stored = root.join(dtype.to_string());
        narrow.save(&stored).expect("save");
        let rounded = root.join(format!("{dtype}-from-f32"));
        model.save_as(&rounded, dtype).expect("save");
        assert_eq!(
            bytes(&stored),
            bytes(&rounded),
            "rounded once, written as is"
        );
        let wide = root.join(format!("{dtype}-widened"));
        narrow.save_as(&wide, StoredDType::F32).expect("save");
        let back = T5Model::load(&wide).expect("loads");
        assert!(back.params() == &narrow.params().converted(DType::F32));
    }
    let mut big = model.clone();
    let id = big.params().ids().nth(3).expect("a fourth tensor");
    big.params_mut().get_mut(id)[1] = 1e6;
    big.set_precision(Precision::Fp16);
    let err = big
        .store_weights_in_precision()
        .expect_err("1e6 does not fit fp16")
        .to_string();
    let name = &big.params().entry(id).name;
    assert!(
        err.contains(name.as_str()) && err.contains("element 1") && err.contains("f16"),
        "{err}"
    );
    assert_eq!(
        big.params().dtype(),
        DType::F32,
        "the weights are left as they were"
    );
}

#[test]
fn loading_or_initialising_straight_into_sixteen_bits_rounds_as_converting_does() {
    use tessera_tensor::DType;
    let dir = fixture_dir("t5-gated-untied");
    let wide = T5Model::load(&dir).unwrap();
    let config = wide.config().clone();
    for dtype in [DType::BF16, DType::F16] {
        let narrow = T5Model::load_as(&dir, dtype).unwrap();
        assert_eq!(narrow.params().dtype(), dtype);
        assert!(
            narrow.params() == &wide.params().converted(dtype),
            "{dtype}"
        );
        let init = T5Model::init_as(config.clone(), 4, dtype);
        let converted = T5Model::init(config.clone(), 4).params().converted(dtype);
        assert!(init.params() == &converted, "{dtype}");
    }
    // A value beyond fp16's range is named, not stored as infinity.
    let scratch_dir = scratch("fp16-overflow");
    let mut big = tensors(&wide);
    big[3].2[0] = 1e6;
    write_folder(&scratch_dir, &config, &big);
    let err = T5Model::load_as(&scratch_dir, DType::F16)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&big[3].0) && err.contains("non-finite"),
        "{err}"
    );
    assert!(T5Model::load_as(&scratch_dir, DType::BF16).is_ok());
}
