//! Timing spans: where the time of a container's `Create` goes, logged with
//! every start so a slow node can be read from containerd's log instead of
//! guessed (`make bench` measures the totals).

use std::fmt;
use std::time::Instant;

/// Consecutive named steps, each timed from the end of the previous one.
#[derive(Debug)]
pub struct Spans {
    last: Instant,
    steps: Vec<(String, f64)>,
}

impl Default for Spans {
    fn default() -> Self {
        Self::new()
    }
}

impl Spans {
    /// Starts timing now.
    pub fn new() -> Spans {
        Spans {
            last: Instant::now(),
            steps: Vec::new(),
        }
    }

    /// Ends the current step, naming it `what`.
    pub fn mark(&mut self, what: &str) {
        let now = Instant::now();
        self.steps
            .push((what.to_owned(), (now - self.last).as_secs_f64() * 1e3));
        self.last = now;
    }

    /// Adds steps timed elsewhere (a runner's), prefixing their names.
    pub fn extend(&mut self, prefix: &str, steps: &[(String, f64)]) {
        self.steps
            .extend(steps.iter().map(|(n, ms)| (format!("{prefix}{n}"), *ms)));
    }

    /// Adds steps timed elsewhere that took the time since the last step
    /// (a nested span's): the next step starts now.
    pub fn extend_nested(&mut self, prefix: &str, steps: &[(String, f64)]) {
        self.extend(prefix, steps);
        self.last = Instant::now();
    }

    /// The steps so far, in milliseconds.
    pub fn steps(&self) -> &[(String, f64)] {
        &self.steps
    }

    /// Consumes the spans, returning the steps.
    pub fn into_steps(self) -> Vec<(String, f64)> {
        self.steps
    }
}

/// `name 1.2 ms, other 0.3 ms`.
impl fmt::Display for Spans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, ms)) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name} {ms:.1}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_in_order_and_display() {
        let mut s = Spans::new();
        s.mark("a");
        s.extend("runner ", &[("load".into(), 2.0)]);
        s.mark("b");
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.extend_nested("", &[("nested".into(), 20.0)]);
        s.mark("c");
        assert!(
            s.steps().last().unwrap().1 < 15.0,
            "c does not count nested's time"
        );
        let names: Vec<_> = s.steps().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "runner load", "b", "nested", "c"]);
        assert!(s.steps().iter().all(|(_, ms)| *ms >= 0.0));
        assert!(s.to_string().contains("runner load 2.0"));
    }
}
