//! `report.html`: the run's `summary.md` as one self-contained page, its charts inlined.
//!
//! Made from the Markdown text itself, so every table and line of `summary.md` is in the page
//! as written there. Each image whose file is one of the charts is replaced by that SVG; the
//! page loads nothing (no script, stylesheet, font or image from anywhere, and a
//! Content-Security-Policy that forbids fetching), so it reads the same offline. Links to the
//! files beside it (`summary.json`, goose's report) stay ordinary relative links.

use pulldown_cmark::{CowStr, Event, LinkType, Options, Parser, Tag, TagEnd};

const STYLE: &str = "
body { font-family: sans-serif; color: #222; line-height: 1.45; max-width: 1100px; margin: 1.5em auto; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f0f0f0; }
tbody tr:nth-child(even) { background: #fafafa; }
td[style*=\"right\"] { font-variant-numeric: tabular-nums; white-space: nowrap; }
code { background: #f0f0f0; padding: 0 0.2em; border-radius: 3px; }
svg { display: block; max-width: 100%; height: auto; margin: 0.8em 0; }
footer { margin-top: 2em; color: #666; font-size: 0.9em; }
";

/// The page for `markdown`; `charts` are `(file name, SVG text)`, and an image of a file
/// among them is drawn inline. Any other image becomes a link to its file. Raw HTML in the
/// Markdown is shown as text, so nothing in it can make the page fetch.
pub fn page(markdown: &str, charts: &[(String, String)]) -> String {
    let mut events = Vec::new();
    let mut parser = Parser::new_ext(markdown, Options::ENABLE_TABLES);
    while let Some(event) = parser.next() {
        match event {
            Event::Start(Tag::Image { dest_url, .. }) => {
                let alt = image_alt(&mut parser);
                match charts.iter().find(|(name, _)| *name == *dest_url) {
                    Some((_, svg)) => events.push(Event::InlineHtml(inline_svg(svg).into())),
                    None => {
                        events.push(Event::Start(Tag::Link {
                            link_type: LinkType::Inline,
                            dest_url,
                            title: CowStr::Borrowed(""),
                            id: CowStr::Borrowed(""),
                        }));
                        events.push(Event::Text(alt.into()));
                        events.push(Event::End(TagEnd::Link));
                    }
                }
            }
            Event::Html(raw) | Event::InlineHtml(raw) => events.push(Event::Text(raw)),
            other => events.push(other),
        }
    }
    let mut body = String::new();
    pulldown_cmark::html::push_html(&mut body, events.into_iter());
    let title = markdown
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .unwrap_or("Harness report");
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{}</title>
<style>{STYLE}</style>
</head>
<body>
<main>
{body}</main>
<footer>The same as <a href="summary.md">summary.md</a>; machine-readable: <a href="summary.json">summary.json</a>.</footer>
</body>
</html>
"#,
        escape(title)
    )
}

/// The text of an image's alt, consuming the parser up to the image's end.
fn image_alt(parser: &mut Parser<'_>) -> String {
    let mut alt = String::new();
    let mut depth = 1;
    for event in parser.by_ref() {
        match event {
            Event::Start(Tag::Image { .. }) => depth += 1,
            Event::End(TagEnd::Image) => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Event::Text(t) | Event::Code(t) => alt.push_str(&t),
            _ => {}
        }
    }
    alt
}

/// An SVG document as an element of the page: HTML needs no namespace declaration, and
/// without it the page holds no URL at all.
fn inline_svg(svg: &str) -> String {
    svg.replacen(r#" xmlns="http://www.w3.org/2000/svg""#, "", 1)
        .trim_end()
        .to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MD: &str = "# Harness verdict: REGRESSION\n\n- p50 of `treatment` <b>slower</b>\n\n\
        ![verdict](verdict.svg)\n\n## Comparisons\n\n\
        | endpoint | variant | ratio | decision |\n|---|---|---:|---|\n\
        | target | treatment | 10.095 | **regression** |\n| target | cpu | 1.000 | pass |\n\n\
        ![target](latency-target.svg)\n![other](other.svg)\n\n\
        Goose's own report: [goose-report.md](goose-report.md).\n";

    fn charts() -> Vec<(String, String)> {
        vec![
            (
                "verdict.svg".into(),
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\"><circle r=\"5\"/></svg>\n"
                    .into(),
            ),
            (
                "latency-target.svg".into(),
                "<svg xmlns=\"http://www.w3.org/2000/svg\"><polyline/></svg>\n".into(),
            ),
        ]
    }

    #[test]
    fn tables_and_charts_are_in_the_page() {
        let html = page(MD, &charts());
        assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
        assert!(html.contains("<title>Harness verdict: REGRESSION</title>"));
        assert!(html.contains("<h1>Harness verdict: REGRESSION</h1>"));
        assert!(html.contains("<table>") && html.contains("<th>endpoint</th>"));
        // Every row, numbers right-aligned as the Markdown says.
        assert!(
            html.contains(r#"<td style="text-align: right">10.095</td>"#),
            "{html}"
        );
        assert!(html.contains("<td>cpu</td>") && html.contains("<strong>regression</strong>"));
        assert!(
            html.contains(r#"<svg width="10"><circle r="5"/></svg>"#),
            "{html}"
        );
        assert!(html.contains("<svg><polyline/></svg>"));
        assert!(!html.contains("<img"), "charts are inline, not loaded");
        // An image that is not a chart of this run is a link to its file, not a fetch.
        assert!(html.contains(r#"<a href="other.svg">other</a>"#), "{html}");
        assert!(html.contains(r#"<a href="goose-report.md">goose-report.md</a>"#));
        assert!(html.contains(r#"<a href="summary.json">"#));
    }

    #[test]
    fn the_page_fetches_nothing() {
        let html = page(MD, &charts());
        for needle in [
            "http://", "https://", "<script", "<link", "<img", "@import", "url(",
        ] {
            assert!(!html.contains(needle), "{needle} in {html}");
        }
        // Raw HTML in the Markdown is text.
        assert!(html.contains("&lt;b&gt;slower&lt;/b&gt;"), "{html}");
        let sneaky = page("<script src=\"https://cdn.example/x.js\"></script>\n", &[]);
        assert!(!sneaky.contains("<script"), "{sneaky}");
    }
}
