//! Saved failures replay: every shrunk counterexample in
//! `proptest-regressions/counterexamples/<policy>__<family>.fasta` replays through its
//! family's check, whatever the generators have become since; and a failure the test driver
//! saves replays at the start of every campaign.

use std::num::NonZeroU32;

use esmfuzz::harness::campaign::{CampaignSpec, run_campaign};
use esmfuzz::harness::driver::{RunOptions, run_family};
use esmfuzz::harness::family::Family;
use esmfuzz::harness::saved::{
    PolicyKey, counterexample_path, replay_counterexample, saved_files, seeds_path,
};
use esmfuzz::harness::strategies::Stratum;
use esmfuzz::harness::verdict::{Selection, Tolerances};
use esmfuzz::model::{AttentionKernel, ComputePlan, Esm2, FaultSet, Precision};

use super::common;

#[test]
fn saved_counterexamples_replay_and_hold() {
    let dir = common::regressions();
    let mut replayed = Vec::new();
    let mut unknown = Vec::new();
    for precision in Precision::ALL {
        let saved = saved_files(&dir, precision)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        unknown.extend(saved.unknown);
        let tol = Tolerances::for_precision(precision);
        let models = common::against_fp32(common::shared_model(precision));
        for (family, _, counterexample) in &saved.families {
            if let Some(path) = counterexample {
                let r = replay_counterexample(*family, path, models, &tol, &Selection::all());
                println!(
                    "{} ({} sequences): {}; tightest: {}",
                    path.display(),
                    r.sequences,
                    if r.passed { "holds" } else { "FAILS" },
                    r.tightest
                        .as_ref()
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                );
                replayed.push(r);
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "saved files that name no known family cannot replay: {unknown:?}"
    );
    assert!(
        !replayed.is_empty(),
        "no counterexample under {}: the committed ones are missing, so nothing was replayed",
        dir.display()
    );
    let failed: Vec<String> = replayed
        .iter()
        .filter(|r| !r.passed)
        .map(|r| {
            format!(
                "{}:\n{}",
                r.file.display(),
                r.failure.clone().unwrap_or_default()
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "saved counterexamples fail again:\n{}",
        failed.join("\n")
    );
}

#[test]
fn a_failure_saved_by_the_test_driver_replays_at_the_start_of_a_campaign() {
    let regressions = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let faulty = common::model_with(
        common::weights(),
        Precision::F32,
        FaultSet {
            scale_layer_output: Some((2, 1.01)),
            ..FaultSet::none()
        },
    );
    let models = common::against_fp32(&faulty);
    let tol = Tolerances::for_precision(Precision::F32);
    let tiny = Family::Stratum(Stratum::Tiny);

    // What `cargo test` does: the family driver persists the failure.
    let options = RunOptions {
        cases: NonZeroU32::new(4).expect("not zero"),
        seed: Some(1),
        regressions: Some(regressions.path().to_path_buf()),
        selection: Selection::all(),
        localise: false,
        shrink: Default::default(),
    };
    let saved = run_family(tiny, models, &tol, &options, &mut ());
    assert!(!saved.passed, "the fault was not caught");
    assert!(seeds_path(regressions.path(), Precision::F32, tiny).exists());
    assert!(counterexample_path(regressions.path(), Precision::F32, tiny).exists());

    // What `esmfuzz fuzz` does: a campaign that does not run that family replays it first.
    let spec = CampaignSpec {
        families: vec![Family::Stratum(Stratum::Short)],
        cases: NonZeroU32::new(1).expect("not zero"),
        seed: 2,
        regressions: regressions.path().to_path_buf(),
        out_dir: out.path().to_path_buf(),
        real_proteins: Vec::new(),
        completed: Vec::new(),
        shard: None,
        skipped: Vec::new(),
    };
    let report = run_campaign(models, &tol, &spec, &mut (), &mut |_| Ok(())).unwrap();
    let fasta = &report.replayed_counterexamples;
    assert_eq!(fasta.len(), 1, "{fasta:?}");
    assert_eq!(fasta[0].family, tiny.name());
    assert!(!fasta[0].passed, "the saved counterexample no longer fails");
    let seeds = &report.replayed_seed_families;
    assert_eq!(seeds.len(), 1, "{seeds:?}");
    assert_eq!(
        (seeds[0].family.as_str(), seeds[0].replayed_seeds),
        ("stratum-tiny", 1)
    );
    assert!(!seeds[0].passed, "the saved seed no longer fails");
    assert!(!report.passed());

    // The fault-free model passes the same replays: they judge the model, not the file.
    let clean = common::against_fp32(common::shared_model(Precision::F32));
    let replay = replay_counterexample(
        tiny,
        &counterexample_path(regressions.path(), Precision::F32, tiny),
        clean,
        &tol,
        &Selection::all(),
    );
    assert!(replay.passed, "{:?}", replay.failure);
}

#[test]
fn a_fused_attention_failure_is_saved_under_its_own_name_and_a_plain_run_does_not_replay_it() {
    let regressions = tempfile::tempdir().unwrap();
    let dir = regressions.path();
    let plan = ComputePlan::new(Precision::F16, common::test_backend())
        .with_attention(AttentionKernel::Fused);
    let faults = FaultSet {
        nan_weight: Some(0),
        ..FaultSet::none()
    };
    let fused = Esm2::new(common::weights(), plan, faults, &common::test_device());
    let tol = Tolerances::for_precision(Precision::F16);
    let tiny = Family::Stratum(Stratum::Tiny);
    let options = |cases| RunOptions {
        cases: NonZeroU32::new(cases).expect("not zero"),
        seed: Some(3),
        regressions: Some(dir.to_path_buf()),
        selection: Selection::all(),
        localise: false,
        shrink: Default::default(),
    };
    let failed = run_family(
        tiny,
        common::against_fp32(&fused),
        &tol,
        &options(2),
        &mut (),
    );
    assert!(!failed.passed, "the NaN weight was not caught");
    let key = PolicyKey::of(&fused);
    assert_eq!(key.stem(), "f16+fused");
    assert!(seeds_path(dir, key.clone(), tiny).exists());
    assert!(counterexample_path(dir, key.clone(), tiny).exists());
    assert!(!seeds_path(dir, Precision::F16, tiny).exists());
    assert!(!counterexample_path(dir, Precision::F16, tiny).exists());

    // The plain policy neither lists nor replays the variant's files.
    let plain = common::against_fp32(common::shared_model(Precision::F16));
    let listed = saved_files(dir, Precision::F16).unwrap();
    assert!(
        listed.families.is_empty() && listed.unknown.is_empty(),
        "{listed:?}"
    );
    let result = run_family(tiny, plain, &tol, &options(1), &mut ());
    assert_eq!(
        result.replayed_seeds, 0,
        "the plain run replayed the variant's seed"
    );
    assert!(result.passed, "{:?}", result.failure);
    // The variant replays its own.
    let again = run_family(
        tiny,
        common::against_fp32(&fused),
        &tol,
        &options(1),
        &mut (),
    );
    assert_eq!(again.replayed_seeds, 1);
    assert_eq!(saved_files(dir, key).unwrap().families.len(), 1);
}

/// `families` without timings, as JSON.
fn comparable(families: &[esmfuzz::harness::summary::FamilyResult]) -> serde_json::Value {
    let mut json = serde_json::to_value(families).unwrap();
    for f in json.as_array_mut().unwrap() {
        f.as_object_mut().unwrap().remove("seconds");
    }
    json
}

#[test]
fn a_resumed_campaign_reports_what_an_uninterrupted_one_does() {
    let tol = Tolerances::for_precision(Precision::F16);
    let models = common::against_fp32(common::shared_model(Precision::F16));
    let spec = |families: Vec<Family>, completed| {
        let dir = tempfile::tempdir().unwrap().keep();
        CampaignSpec {
            families,
            cases: NonZeroU32::new(2).expect("not zero"),
            seed: 21,
            regressions: dir.join("regressions"),
            out_dir: dir,
            real_proteins: Vec::new(),
            completed,
            shard: None,
            skipped: Vec::new(),
        }
    };
    let both = vec![Family::Stratum(Stratum::Tiny), Family::Mixed(Stratum::Tiny)];
    let run = |s: &CampaignSpec| run_campaign(models, &tol, s, &mut (), &mut |_| Ok(())).unwrap();
    let whole = run(&spec(both.clone(), Vec::new()));
    // A run stopped after its first family, its report read back from JSON as --resume does.
    let stopped = run(&spec(both[..1].to_vec(), Vec::new()));
    let json = serde_json::to_string(&stopped.families).unwrap();
    let read_back = serde_json::from_str(&json).unwrap();
    let resumed = run(&spec(both, read_back));
    assert_eq!(resumed.resumed, vec!["stratum-tiny".to_string()]);
    assert_eq!(comparable(&resumed.families), comparable(&whole.families));
}
