//! Counters and bucketed histograms with fortio's bucket layout, percentile
//! interpolation and text format, so `Aggregated Function Time` and the
//! `# target 50% ...` lines read like fortio's.

use std::fmt::Write as _;

use super::gofmt::fmt_g;

/// Bucket upper bounds (in units of `divider` after removing `offset`).
/// Same progression as fortio: fine-grained at the low end, coarse later.
const BUCKETS: [u32; 56] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 18, 20, 25, 30, 35, 40, 45, 50, 60, 70, 80, 90, 100, 120, 140,
    160, 180, 200, 250, 300, 350, 400, 450, 500, 600, 700, 800, 900, 1000, 2000, 3000, 4000, 5000, 7500, 10000, 20000,
    30000, 40000, 50000, 75000, 100000,
];
/// Number of bucket bounds.
const NUM_VALUES: usize = BUCKETS.len();
/// One bucket for `<= 0` plus one per value, plus one for `> last`.
const NUM_BUCKETS: usize = NUM_VALUES + 1;

/// Count/min/max/sum/stddev of recorded values.
#[derive(Debug, Clone, Default)]
pub struct Counter {
    /// Number of recorded values.
    pub count: u64,
    /// Smallest value (0 when empty).
    pub min: f64,
    /// Largest value (0 when empty).
    pub max: f64,
    /// Sum of values.
    pub sum: f64,
    sum_sq: f64,
}

impl Counter {
    /// Records one value.
    pub fn record(&mut self, v: f64) {
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += 1;
        self.sum += v;
        self.sum_sq += v * v;
    }

    /// Average (NaN when empty, as Go prints it).
    pub fn avg(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// Population standard deviation (NaN when empty).
    pub fn stddev(&self) -> f64 {
        let n = self.count as f64;
        let var = (self.sum_sq - self.sum * self.sum / n) / n;
        // Floating point cancellation can go slightly negative for constant data.
        if var < 0.0 {
            0.0
        } else {
            var.sqrt()
        }
    }

    /// Merges another counter into this one.
    pub fn merge(&mut self, o: &Counter) {
        if o.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = o.clone();
            return;
        }
        self.count += o.count;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        self.sum_sq += o.sum_sq;
    }

    /// fortio's one-line summary: `<msg> : count N avg A +/- S min m max M sum s`.
    pub fn line(&self, msg: &str) -> String {
        format!(
            "{msg} : count {} avg {} +/- {} min {} max {} sum {}\n",
            self.count,
            fmt_g(self.avg(), Some(8)),
            fmt_g(self.stddev(), Some(4)),
            fmt_g(self.min, None),
            fmt_g(self.max, None),
            fmt_g(self.sum, Some(9))
        )
    }
}

/// A counter plus fortio-style buckets.
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Plain statistics of all recorded values.
    pub counter: Counter,
    offset: f64,
    divider: f64,
    data: Vec<u64>,
}

/// One exported bucket: `(start, end]` with its cumulative percent and count.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Lower bound (the minimum for the first bucket).
    pub start: f64,
    /// Upper bound (the maximum for the last bucket).
    pub end: f64,
    /// Cumulative percentage up to and including this bucket.
    pub percent: f64,
    /// Values in this bucket.
    pub count: u64,
}

/// Exported histogram: non-empty buckets and requested percentiles.
#[derive(Debug, Clone)]
pub struct HistogramData {
    /// The underlying statistics.
    pub counter: Counter,
    /// Non-empty buckets in increasing order.
    pub buckets: Vec<Bucket>,
    /// `(percentile, value)` pairs.
    pub percentiles: Vec<(f64, f64)>,
}

impl Histogram {
    /// New empty histogram; values are bucketed as `(v - offset) / divider`.
    pub fn new(offset: f64, divider: f64) -> Self {
        let divider = if divider > 0.0 { divider } else { 0.001 };
        Histogram { counter: Counter::default(), offset, divider, data: vec![0; NUM_BUCKETS] }
    }

    /// Records one value.
    pub fn record(&mut self, v: f64) {
        self.counter.record(v);
        // Buckets are `]prev, cur]`: nudge down so a value exactly on a bound
        // lands in the lower bucket, as fortio does.
        let scaled = (v - self.offset) / self.divider - 0.0001;
        let idx = if scaled <= f64::from(BUCKETS[0]) {
            0
        } else if scaled > f64::from(BUCKETS[NUM_VALUES - 1]) {
            NUM_BUCKETS - 1
        } else {
            let floor = scaled as u32;
            BUCKETS[..NUM_VALUES].partition_point(|&b| b <= floor)
        };
        self.data[idx] += 1;
    }

    /// Number of values in the first (`<= 0` after offset) bucket; used to
    /// detect sleeps that fell behind schedule.
    pub fn first_bucket(&self) -> u64 {
        self.data[0]
    }

    /// Merges another histogram with the same offset and divider.
    pub fn merge(&mut self, o: &Histogram) {
        self.counter.merge(&o.counter);
        for (a, b) in self.data.iter_mut().zip(&o.data) {
            *a += b;
        }
    }

    /// Exports buckets and computes the given percentiles.
    pub fn export(&self, percentiles: &[f64]) -> HistogramData {
        let mut buckets: Vec<Bucket> = Vec::new();
        let c = &self.counter;
        let Some(last_idx) = self.data.iter().rposition(|&n| n > 0) else {
            return HistogramData { counter: c.clone(), buckets, percentiles: Vec::new() };
        };
        let mut prev = BUCKETS[0];
        let mut total = 0u64;
        for (i, &n) in self.data.iter().enumerate().take(last_idx + 1) {
            if n == 0 {
                if i < NUM_VALUES {
                    prev = BUCKETS[i];
                }
                continue;
            }
            total += n;
            let mut start = if buckets.is_empty() { c.min } else { self.divider * f64::from(prev) + self.offset };
            let end = if i < NUM_VALUES {
                let cur = BUCKETS[i];
                let end = self.divider * f64::from(cur) + self.offset;
                prev = cur;
                end
            } else {
                start = self.divider * f64::from(prev) + self.offset;
                c.max
            };
            let percent = 100.0 * total as f64 / c.count as f64;
            buckets.push(Bucket { start, end, percent, count: n });
        }
        if let Some(last) = buckets.last_mut() {
            last.end = c.max;
        }
        let mut data = HistogramData { counter: c.clone(), buckets, percentiles: Vec::new() };
        data.percentiles = percentiles.iter().map(|&p| (p, data.percentile(p))).collect();
        data
    }
}

impl HistogramData {
    /// Linear interpolation inside the bucket holding the percentile; the
    /// minimum is assumed to cover the first `1/count` of the data.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.buckets.is_empty() {
            return 0.0;
        }
        if p >= 100.0 {
            return self.counter.max;
        }
        let mut pp = 100.0 / self.counter.count as f64;
        if p <= pp {
            return self.counter.min;
        }
        for b in &self.buckets {
            if p <= b.percent {
                return b.start + (p - pp) / (b.percent - pp) * (b.end - b.start);
            }
            pp = b.percent;
        }
        self.counter.max
    }

    /// fortio's histogram text: summary line, bucket lines, target lines.
    pub fn text(&self, msg: &str) -> String {
        if self.buckets.is_empty() {
            return format!("{msg} : no data\n");
        }
        let mut s = self.counter.line(msg);
        s.push_str("# range, mid point, percentile, count\n");
        for (i, b) in self.buckets.iter().enumerate() {
            // Only the first interval includes its start (the minimum).
            let sep = if i == 0 { ">=" } else { ">" };
            let _ = writeln!(
                s,
                "{sep} {} <= {} , {} , {:.2}, {}",
                fmt_g(b.start, Some(6)),
                fmt_g(b.end, Some(6)),
                fmt_g((b.start + b.end) / 2.0, Some(6)),
                b.percent,
                b.count
            );
        }
        s.push_str(&self.targets());
        s
    }

    /// Only the `# target P% V` lines.
    pub fn targets(&self) -> String {
        let mut s = String::new();
        for (p, v) in &self.percentiles {
            let _ = writeln!(s, "# target {}% {}", fmt_g(*p, None), fmt_g(*v, Some(6)));
        }
        s
    }
}
