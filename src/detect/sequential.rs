//! Sequential Monte Carlo p-values for permutation tests (Besag & Clifford
//! 1991, "Sequential Monte Carlo p-values", Biometrika 78(2), 301–304).
//!
//! Draw permutation statistics T_1, T_2, … one at a time, at most B of them,
//! and stop as soon as h of them reach the observed T. Then
//!
//!   p = h / l             if the h-th exceedance came at draw l,
//!   p = (g + 1) / (B + 1) if all B were drawn with g < h exceedances
//!                         (the Phipson–Smyth p-value of the full test).
//!
//! Besag & Clifford show that P(p ≤ u) ≤ u under the null for every u: a
//! valid p-value, not an estimate of the full test's. Most windows have no
//! drift, and their p-value is far above alpha after a few draws: with
//! p ≈ 0.5, h = 10 stops after about 20 of B = 200 draws.
//!
//! **Same decisions.** The draws are the full test's in the same order (one
//! seeded stream), so a run that does not stop gives exactly the full test's
//! p-value. A run that stops at l ≤ B has g ≥ h in the full test, whose
//! p-value is then ≥ (h+1)/(B+1); ours is h/l ≥ h/B. With h > αB (the
//! pipeline's `early_stop` is held to it) both exceed α, so the decision at α is the same as
//! with all B permutations in every case, not only in most.
//!
//! The draws are made in rounds (2h, then doubling), because each round is
//! one pass over the kernel matrix; the rule is still applied draw by draw.

/// State of one sequential test.
#[derive(Debug, Clone)]
pub struct Sequential {
    permutations: usize,
    stop_after: Option<usize>,
    drawn: usize,
    exceeded: usize,
    stopped: bool,
}

impl Sequential {
    /// At most `permutations` draws; stop after `stop_after` exceedances
    /// (`None`: draw them all, in one round).
    pub fn new(permutations: usize, stop_after: Option<usize>) -> Self {
        Self {
            permutations,
            stop_after: stop_after.filter(|&h| h > 0),
            drawn: 0,
            exceeded: 0,
            stopped: false,
        }
    }

    /// How many statistics to draw next (0 when the test is over): all B
    /// without early stopping; else 2h first, then as many as drawn so far.
    pub fn next_round(&self) -> usize {
        let left = self.permutations - self.drawn;
        if self.stopped {
            return 0;
        }
        match self.stop_after {
            None => left,
            Some(h) if self.drawn == 0 => left.min(2 * h),
            Some(_) => left.min(self.drawn),
        }
    }

    /// Records a round, in draw order: for each statistic, whether it
    /// reaches the observed one. Draws after the stopping one are ignored.
    pub fn record(&mut self, exceeds: impl IntoIterator<Item = bool>) {
        for e in exceeds {
            if self.stopped || self.drawn == self.permutations {
                return;
            }
            self.drawn += 1;
            self.exceeded += usize::from(e);
            self.stopped = self.stop_after == Some(self.exceeded);
        }
    }

    /// The p-value (see the module doc); before any draw, 1.
    pub fn p_value(&self) -> f64 {
        if self.stopped {
            self.exceeded as f64 / self.drawn as f64
        } else {
            (self.exceeded + 1) as f64 / (self.drawn + 1) as f64
        }
    }

    /// Permutation statistics drawn (≤ B).
    pub fn drawn(&self) -> usize {
        self.drawn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(flags: &[bool], h: Option<usize>) -> Sequential {
        let mut s = Sequential::new(flags.len(), h);
        let mut at = 0;
        while s.next_round() > 0 {
            let k = s.next_round();
            s.record(flags[at..at + k].iter().copied());
            at += k;
        }
        s
    }

    #[test]
    fn stops_at_the_h_th_exceedance() {
        // Exceedances at draws 2, 4, 5: h = 3 stops at l = 5, p = 3/5.
        let flags = [false, true, false, true, true, false, true, false];
        let s = run(&flags, Some(3));
        assert_eq!((s.drawn(), s.p_value()), (5, 0.6));
        // Without stopping: (g + 1)/(B + 1) = 5/9.
        let full = run(&flags, None);
        assert_eq!((full.drawn(), full.p_value()), (8, 5.0 / 9.0));
        // h never reached: the full test's p-value.
        assert_eq!(run(&flags, Some(5)).p_value(), 5.0 / 9.0);
    }

    #[test]
    fn rounds_double_and_never_pass_b() {
        let mut s = Sequential::new(100, Some(10));
        let mut sizes = vec![];
        while s.next_round() > 0 {
            sizes.push(s.next_round());
            s.record(std::iter::repeat_n(false, s.next_round()));
        }
        assert_eq!(sizes, [20, 20, 40, 20]);
        assert_eq!(s.p_value(), 1.0 / 101.0);
    }

    proptest! {
        /// With h > αB, the decision at alpha is the full test's
        /// for every sequence of draws, and a run that does not stop gives
        /// the full test's p-value.
        #[test]
        fn decision_is_the_full_tests(
            flags in proptest::collection::vec(proptest::bool::weighted(0.08), 1..300),
            alpha in 0.001f64..0.3,
            extra in 0usize..5,
        ) {
            let b = flags.len();
            let h = (alpha * b as f64).floor() as usize + 1 + extra;
            let (seq, full) = (run(&flags, Some(h)), run(&flags, None));
            prop_assert_eq!(seq.p_value() <= alpha, full.p_value() <= alpha);
            if seq.drawn() == b && flags.iter().filter(|f| **f).count() < h {
                prop_assert_eq!(seq.p_value(), full.p_value());
            }
        }
    }
}
