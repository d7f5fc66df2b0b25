use mores::correlate::{fisher_mean, p_value, pearson};

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
