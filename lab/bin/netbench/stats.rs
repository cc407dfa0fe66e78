//! Statistics: percentiles and their JSON.

use serde_json::{Value, json};

use crate::knock::Knock;
use crate::util::ms;

#[derive(Clone, Debug, Default)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) ok: usize,
    pub(crate) median: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn summarize(values: &[f64], n: usize) -> Summary {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    Summary {
        n,
        ok: v.len(),
        median: pct(&v, 0.5),
        p90: pct(&v, 0.9),
        p99: pct(&v, 0.99),
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
        mean: if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        },
    }
}

pub(crate) fn open_ms(knocks: &[Knock]) -> Vec<f64> {
    knocks.iter().filter_map(|k| k.open.map(ms)).collect()
}

pub(crate) fn f2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".to_owned()
    }
}

pub(crate) fn summary_json(s: &Summary) -> Value {
    let num = |x: f64| {
        if x.is_finite() {
            json!((x * 1000.0).round() / 1000.0)
        } else {
            Value::Null
        }
    };
    json!({
        "knocks": s.n, "opened": s.ok, "failures": s.n - s.ok,
        "median_ms": num(s.median), "p90_ms": num(s.p90), "p99_ms": num(s.p99),
        "min_ms": num(s.min), "max_ms": num(s.max), "mean_ms": num(s.mean),
    })
}
