use mores::analysis::correlate::{fisher_mean, p_value, pearson};

#[test]
fn pearson_matches_hand_computation() {
    // x = 1..5, y = 2,4,5,4,5: mean x 3, mean y 4; sxy = 6, sxx = 10, syy = 6;
    // r = 6 / sqrt(60) = 0.7745966692414834.
    let r = pearson(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 4.0, 5.0, 4.0, 5.0]).unwrap();
    assert!((r - 0.774_596_669_241_483_4).abs() < 1e-12, "{r}");
    // Perfect negative.
    let r = pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap();
    assert!((r + 1.0).abs() < 1e-12);
}

#[test]
fn pearson_undefined_for_constant_or_short_input() {
    assert!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_none());
    assert!(pearson(&[1.0, 2.0], &[1.0, 2.0]).is_none());
}

#[test]
fn p_value_matches_t_distribution() {
    // r = 0.7745966692414834, n = 5: t = r * sqrt(3 / (1 - r^2)) = 2.1213203435596424;
    // with 3 df the t CDF has a closed form, F(t) = 1/2 + (x/(1+x^2) + atan x)/pi with x = t/sqrt(3),
    // so the two-sided p = 2 (1 - F(t)) = 0.12402706265755459.
    let p = p_value(0.774_596_669_241_483_4, 5);
    assert!((p - 0.124_027_062_657_554_59).abs() < 1e-9, "{p}");
    assert!((p_value(0.0, 30) - 1.0).abs() < 1e-12);
}

#[test]
fn fisher_mean_is_tanh_of_mean_atanh() {
    // atanh(0.5) = 0.5493061443340549, atanh(0.8) = 1.0986122886681098; mean 0.8239592165010823;
    // tanh of it = 0.6772190444071821.
    let m = fisher_mean(&[0.5, 0.8]).unwrap();
    assert!((m - 0.677_219_044_407_182_1).abs() < 1e-12, "{m}");
}

#[test]
fn spearman_uses_average_ranks() {
    // x = 1,2,3,4,5; y = 10,20,20,40,30 -> ranks y = 1, 2.5, 2.5, 5, 4. Pearson of ranks:
    // mean 3 both; sxy = (-2)(-2) + (-1)(-0.5) + 0(-0.5) + 1(2) + 2(1) = 8.5;
    // sxx = 10; syy = 4 + 0.25 + 0.25 + 4 + 1 = 9.5; rho = 8.5 / sqrt(95) = 0.8720815992723809.
    let rho =
        mores::analysis::correlate::spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[10.0, 20.0, 20.0, 40.0, 30.0]).unwrap();
    assert!((rho - 0.872_081_599_272_380_9).abs() < 1e-12, "{rho}");
}

#[test]
fn wasserstein_and_js_match_hand_values() {
    // All mass on the first vs the last of 3 options at 0, 0.5, 1: W1 = 1 (|1-0|*0.5 + |1-0|*0.5).
    let w = mores::analysis::correlate::wasserstein1(&[1.0, 0.0, 0.0], &[0.0, 0.0, 1.0], &[0.0, 0.5, 1.0]).unwrap();
    assert!((w - 1.0).abs() < 1e-12);
    // p = (0.5, 0.5, 0), q = (0, 0.5, 0.5): CDF gaps 0.5 then 0.5 -> W1 = 0.5*0.5 + 0.5*0.5 = 0.5.
    let w = mores::analysis::correlate::wasserstein1(&[0.5, 0.5, 0.0], &[0.0, 0.5, 0.5], &[0.0, 0.5, 1.0]).unwrap();
    assert!((w - 0.5).abs() < 1e-12);
    // Disjoint supports: JS divergence (base 2) = 1, so 1 - distance = 0; identical: 1.
    assert!(mores::analysis::correlate::js_similarity(&[1.0, 0.0], &[0.0, 1.0]).unwrap().abs() < 1e-12);
    assert!((mores::analysis::correlate::js_similarity(&[0.3, 0.7], &[0.3, 0.7]).unwrap() - 1.0).abs() < 1e-12);
    // p = (1, 0), q = (0.5, 0.5): m = (0.75, 0.25); KL(p||m) = log2(4/3) = 0.41503749927884376;
    // KL(q||m) = 0.5 log2(2/3) + 0.5 log2(2) = 0.20751874963942185; JS = 0.3112781244591328;
    // sqrt(JS) = 0.5579230452841438, so 1 - sqrt(JS) = 0.4420769547158562.
    let s = mores::analysis::correlate::js_similarity(&[1.0, 0.0], &[0.5, 0.5]).unwrap();
    assert!((s - 0.442_076_954_715_856_2).abs() < 1e-9, "{s}");
}

#[test]
fn bootstrap_is_deterministic_with_a_seed() {
    let x: Vec<f64> = (0..40).map(|i| (i as f64 * 0.37).sin()).collect();
    let y: Vec<f64> = x.iter().enumerate().map(|(i, v)| v + 0.3 * ((i * 7) as f64).cos()).collect();
    let stat = |idx: &[usize]| {
        let a: Vec<f64> = idx.iter().map(|&i| x[i]).collect();
        let b: Vec<f64> = idx.iter().map(|&i| y[i]).collect();
        pearson(&a, &b)
    };
    let (ci1, v1) = mores::analysis::correlate::bootstrap(x.len(), 500, 42, stat);
    let (ci2, v2) = mores::analysis::correlate::bootstrap(x.len(), 500, 42, stat);
    assert_eq!(v1, v2);
    let (lo, hi) = ci1.unwrap();
    assert_eq!(ci1, ci2);
    let r = pearson(&x, &y).unwrap();
    assert!(lo < r && r < hi, "{lo} < {r} < {hi}");
    let (_, v3) = mores::analysis::correlate::bootstrap(x.len(), 500, 43, stat);
    assert_ne!(v1, v3);
}
