//! Contrast-amplified survey-grounded targets: the share of a KL target that is the question's
//! typical answer (the cross-country mean) dwarfs the share that tells countries apart, so a
//! student learns the first. Scaling each country's deviation from the mean gives the second more
//! weight in the same objective.

/// `mean + contrast * (own - mean)`, clipped at 0 and renormalised; `own` when nothing is left.
pub fn target(own: &[f64], mean: &[f64], contrast: f64) -> Vec<f64> {
    let t: Vec<f64> = own.iter().zip(mean).map(|(p, m)| (m + contrast * (p - m)).max(0.0)).collect();
    let z: f64 = t.iter().sum();
    if z > 0.0 {
        t.iter().map(|x| x / z).collect()
    } else {
        own.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::target;

    #[test]
    fn contrast_scales_the_deviation_from_the_mean() {
        let (own, mean) = ([0.5, 0.3, 0.2], [0.4, 0.4, 0.2]);
        assert_eq!(target(&own, &mean, 1.0), own.to_vec());
        // Deviation (+0.1, -0.1, 0) doubled: (0.6, 0.2, 0.2), already a distribution.
        let t = target(&own, &mean, 2.0);
        for (a, b) in t.iter().zip([0.6, 0.2, 0.2]) {
            assert!((a - b).abs() < 1e-12, "{t:?}");
        }
        // Tripled then clipped: (0.7, 0.1, 0.2); x5: (0.9, -0.1 -> 0, 0.2) renormalised by 1.1.
        let t = target(&own, &mean, 5.0);
        for (a, b) in t.iter().zip([0.9 / 1.1, 0.0, 0.2 / 1.1]) {
            assert!((a - b).abs() < 1e-12, "{t:?}");
        }
        assert_eq!(target(&own, &mean, 0.0), mean.to_vec(), "contrast 0: the typical answer");
    }
}
