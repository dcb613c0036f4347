//! `error_rate` and `label_shift`: tests on the model's predicted classes
//! against the true labels (late labels when the pipeline has a labels
//! topic: then they run on the windows of events joined to their labels).

use datafusion::arrow::datatypes::Schema;
use serde::Deserialize;

use super::{
    Correction, Decision, Detector, DriftType, Kind, LabelUse, Need, OptionError, Options, Reads, check_column,
    is_current, no_udafs,
};
use crate::config::{Alpha, PREDICTED_CLASS_COL};
use crate::detect::{KEY_COL, WINDOWS_TABLE, ident};

pub const ERROR_RATE: Kind = Kind {
    name: "error_rate",
    about: "concept drift: error rate of the labelled current window vs the labelled reference, Fisher's exact test; per-class accuracies in the alert",
    build: |name, o| build(name, o, Test::ErrorRate),
    options: super::field_names::<LabelledOptions>,
    udafs: no_udafs,
};

pub const LABEL_SHIFT: Kind = Kind {
    name: "label_shift",
    about: "label shift: chi-square on predicted classes, with the current class priors estimated by BBSE (in the alert)",
    build: |name, o| build(name, o, Test::LabelShift),
    options: super::field_names::<LabelledOptions>,
    udafs: no_udafs,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    ErrorRate,
    LabelShift,
}

/// Options of `kind: error_rate | label_shift`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelledOptions {
    /// Significance level per evaluation (default 0.01, or derived from
    /// `alerting.ert`).
    #[serde(default)]
    alpha: Option<Alpha>,
    /// The model's predicted class column (default `predicted_class`).
    #[serde(default)]
    prediction: Option<String>,
    /// The true label column (default `label`); events whose label is null
    /// count as unlabelled.
    #[serde(default)]
    label: Option<String>,
}

#[derive(Debug)]
struct Labelled {
    name: String,
    test: Test,
    prediction: String,
    label: String,
    alpha: Option<Alpha>,
}

fn build(name: String, o: Options, test: Test) -> Result<Box<dyn Detector>, OptionError> {
    let o: LabelledOptions = o.parse()?;
    Ok(Box::new(Labelled {
        name,
        test,
        prediction: o.prediction.unwrap_or_else(|| PREDICTED_CLASS_COL.into()),
        label: o.label.unwrap_or_else(|| "label".into()),
        alpha: o.alpha,
    }))
}

impl Detector for Labelled {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        match self.test {
            Test::ErrorRate => "error_rate",
            Test::LabelShift => "label_shift",
        }
    }
    fn columns(&self) -> Vec<String> {
        vec![self.prediction.clone(), self.label.clone()]
    }
    fn check(&self, scored: &Schema) -> Result<(), OptionError> {
        for (key, c) in [("prediction", &self.prediction), ("label", &self.label)] {
            check_column(scored, key.into(), c, self.kind(), Need::Class)?;
        }
        Ok(())
    }
    fn sql(&self) -> String {
        let (f, alias) = match self.test {
            Test::ErrorRate => ("error_rate_test", "error_rate"),
            Test::LabelShift => ("label_shift_test", self.prediction.as_str()),
        };
        let (weight, filter) = Reads::Values.tail(&[&self.prediction, &self.label]);
        format!(
            "SELECT {KEY_COL}, {f}({}, {}, {}{weight}){filter} AS {} FROM {WINDOWS_TABLE} GROUP BY {KEY_COL}",
            ident(&self.prediction),
            ident(&self.label),
            is_current(),
            ident(alias)
        )
    }
    fn counted(&self) -> Vec<crate::window::CountGroup> {
        Reads::Values
            .group(&[&self.prediction, &self.label])
            .into_iter()
            .collect()
    }
    fn decision(&self) -> Decision {
        Decision::test(self.alpha, Correction::None)
    }
    fn drift_type(&self) -> DriftType {
        match self.test {
            Test::ErrorRate => DriftType::Concept,
            Test::LabelShift => DriftType::Label,
        }
    }
    fn alpha_mut(&mut self) -> Option<&mut Option<Alpha>> {
        Some(&mut self.alpha)
    }
    /// error_rate compares labels with predictions on both sides; BBSE
    /// needs labels only for the reference's confusion matrix.
    fn labels(&self) -> LabelUse {
        match self.test {
            Test::ErrorRate => LabelUse::Joined,
            Test::LabelShift => LabelUse::Reference,
        }
    }
}
