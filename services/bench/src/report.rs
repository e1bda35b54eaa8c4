//! The suite's table: one row per figure, ours beside the machine's ceiling.

use std::fmt::Write as _;

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Row {
    pub figure: String,
    pub ours: Figure,
    /// The same work done by the raw pieces alone, in the same run.
    pub ceiling: Option<Figure>,
    pub target: String,
    /// The 1-minute load average when the figure was taken.
    pub load: f64,
}

/// A number with its unit; `higher_is_better` decides how the ratio reads.
#[derive(Clone, Debug)]
pub struct Figure {
    pub value: f64,
    pub unit: &'static str,
}

impl Figure {
    pub fn per_sec(value: f64) -> Figure {
        Figure { value, unit: "/s" }
    }

    pub fn ms(value: f64) -> Figure {
        Figure { value, unit: "ms" }
    }

    pub fn bytes(value: f64) -> Figure {
        Figure { value, unit: "B" }
    }

    pub fn mib(bytes: u64) -> Figure {
        Figure {
            value: bytes as f64 / (1024.0 * 1024.0),
            unit: "MiB",
        }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.value;
        match self.unit {
            "/s" if v >= 1e6 => write!(f, "{:.2}M/s", v / 1e6),
            "/s" if v >= 1e3 => write!(f, "{:.1}k/s", v / 1e3),
            "/s" => write!(f, "{v:.0}/s"),
            "ms" if v < 10.0 => write!(f, "{v:.2} ms"),
            "ms" => write!(f, "{v:.0} ms"),
            "B" if v >= 1024.0 * 1024.0 => write!(f, "{:.2} MiB", v / (1024.0 * 1024.0)),
            "B" if v >= 1024.0 => write!(f, "{:.1} KiB", v / 1024.0),
            "B" => write!(f, "{v:.1} B"),
            unit => write!(f, "{v:.0} {unit}"),
        }
    }
}

impl Row {
    pub fn new(figure: impl Into<String>, ours: Figure, target: impl Into<String>) -> Row {
        Row {
            figure: figure.into(),
            ours,
            ceiling: None,
            target: target.into(),
            load: load_average(),
        }
    }

    pub fn against(mut self, ceiling: Figure) -> Row {
        self.ceiling = Some(ceiling);
        self
    }

    /// ours / ceiling for rates; ceiling / ours for times (so > 1 is never
    /// better than the ceiling in either). Bytes read as rates do: ours /
    /// the ceiling's.
    pub fn ratio(&self) -> Option<f64> {
        let ceiling = self.ceiling.as_ref()?;
        let ratio = match self.ours.unit {
            "ms" => ceiling.value / self.ours.value,
            _ => self.ours.value / ceiling.value,
        };
        ratio.is_finite().then_some(ratio)
    }

    fn cells(&self) -> [String; 6] {
        [
            self.figure.clone(),
            self.ours.to_string(),
            self.ceiling
                .as_ref()
                .map_or("—".into(), ToString::to_string),
            self.ratio().map_or("—".into(), |r| format!("{r:.2}")),
            if self.target.is_empty() {
                "—".into()
            } else {
                self.target.clone()
            },
            format!("{:.2}", self.load),
        ]
    }
}

const HEADERS: [&str; 6] = ["figure", "ours", "ceiling", "ratio", "target", "load"];

/// The rows as an aligned plain-text table.
pub fn text(rows: &[Row]) -> String {
    let cells: Vec<[String; 6]> = rows.iter().map(Row::cells).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[String]| {
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            let pad = w - c.chars().count();
            if i == 0 {
                let _ = write!(out, "{c}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(out, "{}{c}  ", " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(&mut out, &HEADERS.map(String::from));
    for row in &cells {
        line(&mut out, row);
    }
    out
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = format!("| {} |\n", HEADERS.join(" | "));
    out.push_str("| --- | ---: | ---: | ---: | --- | ---: |\n");
    for row in rows {
        let _ = writeln!(out, "| {} |", row.cells().join(" | "));
    }
    out
}

/// The 1-minute load average (0 where /proc is absent).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}
