//! Tables as the commands print them: aligned text for a terminal, markdown, CSV (and JSON,
//! which the caller serialises itself). One printer for `compare`, `sweep --dry-run` and the
//! other listings.

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Markdown,
}

/// Lays out a table as aligned text, markdown or CSV.
pub fn render(headers: &[String], lines: &[Vec<String>], format: Format) -> String {
    let mut out = String::new();
    match format {
        Format::Csv => {
            let esc = |s: &str| {
                if s.contains([',', '"', '\n']) {
                    format!("\"{}\"", s.replace('"', "\"\""))
                } else {
                    s.to_string()
                }
            };
            out.push_str(&headers.iter().map(|h| esc(h)).collect::<Vec<_>>().join(","));
            out.push('\n');
            for l in lines {
                out.push_str(&l.iter().map(|c| esc(c)).collect::<Vec<_>>().join(","));
                out.push('\n');
            }
        }
        Format::Markdown => {
            out.push_str(&format!("| {} |\n", headers.join(" | ")));
            out.push_str(&format!("|{}\n", "---|".repeat(headers.len())));
            for l in lines {
                out.push_str(&format!("| {} |\n", l.join(" | ")));
            }
        }
        Format::Table | Format::Json => {
            let widths: Vec<usize> = (0..headers.len())
                .map(|i| {
                    lines
                        .iter()
                        .map(|l| l[i].chars().count())
                        .chain([headers[i].chars().count()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let row = |cells: &[String]| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            out.push_str(&row(headers));
            out.push('\n');
            for l in lines {
                out.push_str(&row(l));
                out.push('\n');
            }
        }
    }
    out
}
