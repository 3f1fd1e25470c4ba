//! The ramp curve: progress (0..=1) to a capacity fraction (start..=1).

/// Shape of the warm-up.
#[derive(Clone, Debug, PartialEq)]
pub enum Curve {
    /// Straight line from `start` to 1.
    Linear,
    /// `start * (1/start)^progress`: slow at first, while caches are coldest.
    Exponential,
    /// Piecewise-linear through `(progress, fraction)` points, sorted by progress.
    Points(Vec<(f64, f64)>),
}

impl Curve {
    /// Capacity fraction at `progress`, given the configured start fraction.
    pub fn fraction(&self, progress: f64, start: f64) -> f64 {
        let p = progress.clamp(0.0, 1.0);
        let start = start.clamp(0.0, 1.0);
        let f = match self {
            Curve::Linear => start + (1.0 - start) * p,
            Curve::Exponential if start > 0.0 => start * (1.0 / start).powf(p),
            Curve::Exponential => p * p,
            Curve::Points(points) => interpolate(points, p),
        };
        f.clamp(0.0, 1.0)
    }

    /// The config name.
    pub fn name(&self) -> &'static str {
        match self {
            Curve::Linear => "linear",
            Curve::Exponential => "exponential",
            Curve::Points(_) => "points",
        }
    }
}

fn interpolate(points: &[(f64, f64)], p: f64) -> f64 {
    let Some(first) = points.first() else {
        return 1.0;
    };
    if p <= first.0 {
        return first.1;
    }
    for w in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if p <= x1 {
            let t = if x1 > x0 { (p - x0) / (x1 - x0) } else { 1.0 };
            return y0 + t * (y1 - y0);
        }
    }
    points.last().map_or(1.0, |l| l.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_runs_from_start_to_one() {
        assert!((Curve::Linear.fraction(0.0, 0.1) - 0.1).abs() < 1e-9);
        assert!((Curve::Linear.fraction(0.5, 0.1) - 0.55).abs() < 1e-9);
        assert!((Curve::Linear.fraction(2.0, 0.1) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn exponential_is_below_linear_midway() {
        let e = Curve::Exponential.fraction(0.5, 0.05);
        assert!(e < Curve::Linear.fraction(0.5, 0.05));
        assert!((Curve::Exponential.fraction(1.0, 0.05) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn points_interpolate() {
        let c = Curve::Points(vec![(0.0, 0.1), (0.5, 0.3), (1.0, 1.0)]);
        assert!((c.fraction(0.25, 0.0) - 0.2).abs() < 1e-9);
        assert!((c.fraction(0.75, 0.0) - 0.65).abs() < 1e-9);
    }
}
